"""A device that syncs is a device of the cloud core at once, and joins the device groups its profile names.

Real emulators against real stores (SQLite and PostgreSQL), read back through CloudService.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tap_emulator.cloud import NATIVE, CloudService, GroupDraft, NotFound, Tenant
from tap_emulator.config import ConfigError, load_profile
from tap_emulator.store import DeviceRecord, ManagementStore
from tap_emulator.store.cloud import CloudStore

from .conftest import running_emulator, wait_until, write_profile

pytestmark = pytest.mark.timeout(60)


def profile_with_groups(directory: Path, serial: str, cloud_table: str) -> Path:
    path = write_profile(directory, serial)
    path.write_text(path.read_text(encoding="utf-8") + "\n[cloud]\n" + cloud_table + "\n", encoding="utf-8")
    return path


def cloud(store: ManagementStore) -> CloudService:
    assert isinstance(store, CloudStore)
    return CloudService(store)


async def test_a_synced_device_is_in_the_core_with_public_access_groups(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    service = cloud(store)
    async with running_emulator(tmp_path / "device.sqlite3", store_url):

        async def listed() -> bool:
            try:
                detail = await service.get_device("EMU0000000001")
            except NotFound:
                return False
            return {view.group_id for view in detail.access_groups} == {0, 0xFFFE, 0xFFFF}

        await wait_until(listed, timeout=10)
    detail = await service.get_device("EMU0000000001")
    assert [d.serial for d in (await service.list_devices()).items] == ["EMU0000000001"]
    admin = next(view for view in detail.access_groups if view.group_id == 0xFFFF)
    assert (admin.name, admin.password_set, admin.is_profile) == ("admin", True, True)
    assert "admin" not in repr([view for view in detail.access_groups if view.group_id != 0xFFFF])
    status = await service.sync_status("EMU0000000001")
    assert status.access_groups == 3 and status.newest_version is not None


async def test_profile_device_groups_are_joined_on_first_sync_only(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    service = cloud(store)
    full = await service.create_group(
        Tenant("native", NATIVE), "lab", GroupDraft("full", max_devices=1), "me"
    )
    await store.upsert_device(DeviceRecord("EMU-OTHER", "TAP", "1.0", datetime(2025, 1, 1, tzinfo=UTC)))
    await service.add_member(full.id, "EMU-OTHER", actor="me")
    profile = profile_with_groups(tmp_path, "EMU-PG-1", f'device_groups = ["fleet-a", "{full.id}"]')
    state = tmp_path / "device.sqlite3"
    async with running_emulator(state, store_url, profile=str(profile)):

        async def joined() -> bool:
            try:
                return (await service.get_group("fleet-a")).device_count == 1
            except NotFound:
                return False

        await wait_until(joined, timeout=10)
    assert [d.serial for d in (await service.list_members("fleet-a")).items] == ["EMU-PG-1"]
    assert [d.serial for d in (await service.list_members(full.id)).items] == ["EMU-OTHER"]  # full: left out
    assert (await service.get_device("EMU-PG-1")).device.group_ids == ("fleet-a",)

    await service.remove_member("fleet-a", "EMU-PG-1", actor="me")
    async with running_emulator(state, store_url, profile=str(profile)) as emulator:
        sync = emulator.sync
        assert sync is not None

        async def handed_over() -> bool:
            return sync.device_groups_joined

        await wait_until(handed_over, timeout=10)
    assert (await service.list_members("fleet-a")).items == ()  # a user's removal is not undone


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("device_groups = [1]", "list of group ids"),
        ('device_groups = [""]', "list of group ids"),
        (f'device_groups = ["{"x" * 65}"]', "list of group ids"),
        ('device_groups = "fleet"', "type list"),
        ("device_groups = [" + ", ".join(f'"g{i}"' for i in range(33)) + "]", "at most 32"),
    ],
)
def test_bad_profile_device_groups_are_a_clear_config_error(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profile(str(profile_with_groups(tmp_path, "EMU-BAD", table)))


def test_profile_device_groups_load_in_order_without_repeats(tmp_path: Path) -> None:
    profile = load_profile(str(profile_with_groups(tmp_path, "EMU-OK", 'device_groups = ["b", "a", "b"]')))
    assert profile.device_groups == ("b", "a")
    assert load_profile("default").device_groups == ()
