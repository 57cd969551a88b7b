"""The batch calls a fleet's one sync task makes (many devices per round trip), against both engines.

Each batch call must mean exactly what the per-device calls it replaces mean, so every test compares the
batch with those per-device reads or writes on the same store.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tap_emulator.store import DeviceRecord, ManagementStore, StoreRejected
from tap_emulator.store.schema import SERIALS_PER_STATEMENT

from .samples import T0, device, group, profile

pytestmark = pytest.mark.timeout(60)


async def test_group_versions_many_equals_group_versions_of_each_device(store: ManagementStore) -> None:
    await store.upsert_groups(
        [
            group(1, 4),
            group(2, 2, deleted=True),
            profile(0xFFFF, 1),
            group(1, 3, serial="EMU0000000002"),
            group(9, 7, serial="EMU0000000003"),
        ]
    )
    serials = ["EMU0000000003", "EMU0000000001", "EMU-unknown", "EMU0000000002", "EMU0000000001"]
    many = await store.group_versions_many(serials)
    assert list(many) == ["EMU0000000003", "EMU0000000001", "EMU-unknown", "EMU0000000002"]
    for serial in many:
        assert many[serial] == await store.group_versions(serial)
    assert many["EMU0000000001"] == {1: 4, 2: 2, 0xFFFF: 1}  # tombstones included
    assert many["EMU-unknown"] == {}
    assert await store.group_versions_many([]) == {}


async def test_group_versions_many_reads_more_serials_than_one_statement_binds(
    store: ManagementStore,
) -> None:
    count = SERIALS_PER_STATEMENT * 2 + 7
    serials = [f"EMU{index:010d}" for index in range(count)]
    await store.upsert_groups([group(index % 50, index + 1, serial=serials[index]) for index in range(count)])
    many = await store.group_versions_many(serials)
    assert len(many) == count
    assert all(many[serials[index]] == {index % 50: index + 1} for index in range(count))


async def test_upsert_devices_inserts_and_refreshes_as_upsert_device_does(store: ManagementStore) -> None:
    await store.upsert_devices([device("EMU0000000001"), device("EMU0000000002")])
    later = device("EMU0000000001", last_seen=T0 + timedelta(hours=1), firmware="1.16")
    older = device("EMU0000000002", last_seen=T0 - timedelta(hours=1), firmware="0.9")
    await store.upsert_devices([later, older, device("EMU0000000000")])
    # A refresh older than the stored one is ignored record by record, as by upsert_device.
    assert await store.list_devices() == [device("EMU0000000000"), later, device("EMU0000000002")]
    await store.upsert_devices([])
    assert len(await store.list_devices()) == 3


async def test_upsert_devices_fills_in_a_placeholder_left_by_groups(store: ManagementStore) -> None:
    await store.upsert_groups([group(serial="EMU0000000009")])
    await store.upsert_devices([device("EMU0000000009")])
    assert await store.list_devices() == [device("EMU0000000009")]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (device("X" * 65), "serial"),  # the schema's CHECK: refused by the database
        (device(last_seen=T0.replace(tzinfo=None)), "last_seen"),  # refused before binding
    ],
)
async def test_upsert_devices_names_the_refused_record_and_writes_none(
    store: ManagementStore, bad: DeviceRecord, reason: str
) -> None:
    batch = [device("EMU0000000001"), device("EMU0000000002"), bad, device("EMU0000000004")]
    with pytest.raises(StoreRejected, match=reason) as refused:
        await store.upsert_devices(batch)
    assert refused.value.record_index == 2
    assert await store.list_devices() == []  # all or none
    await store.upsert_devices([batch[0], batch[1], batch[3]])
    assert [d.serial for d in await store.list_devices()] == [
        "EMU0000000001",
        "EMU0000000002",
        "EMU0000000004",
    ]


async def test_a_large_device_batch_is_written_in_one_call(store: ManagementStore) -> None:
    devices = [device(f"EMU{index:010d}") for index in range(2500)]
    await store.upsert_devices(list(reversed(devices)))
    assert await store.list_devices() == devices
