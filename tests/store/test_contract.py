"""The ManagementStore contract, run unchanged against the SQLite and the PostgreSQL engine."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tap_emulator.cloud import (
    NATIVE,
    OCEANCONNECT,
    ROMA,
    CapacityExceeded,
    CloudService,
    CycleRefused,
    GroupChanges,
    GroupDraft,
    NameTaken,
    Tenant,
)
from tap_emulator.store import (
    DeviceRecord,
    GroupRecord,
    ManagementStore,
    StoreError,
    StoreRejected,
    open_store,
    store_snapshot_json,
)
from tap_emulator.store.cloud import CloudStore

from .conftest import raw_rows
from .samples import T0, device, group, profile

pytestmark = pytest.mark.timeout(60)

# --- version-guarded upserts -------------------------------------------------------------------


async def test_new_group_is_applied_and_read_back_unchanged(store: ManagementStore) -> None:
    record = group(7, scram_salt=None, scram_iteration=None, password_set=False)
    assert await store.upsert_groups([record]) == [True]
    assert await store.get_group("EMU0000000001", 7) == record


async def test_timestamps_come_back_as_the_same_instant_in_utc(store: ManagementStore) -> None:
    paris = timezone(timedelta(hours=2))
    await store.upsert_groups([group(updated_at=datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=paris))])
    stored = await store.get_group("EMU0000000001", 5)
    assert stored is not None
    assert stored.updated_at == datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)
    assert stored.updated_at.utcoffset() == timedelta(0)


async def test_duplicate_is_a_no_op(store: ManagementStore) -> None:
    record = group(version=3)
    assert await store.upsert_groups([record]) == [True]
    assert await store.upsert_groups([record]) == [False]
    assert await store.get_group("EMU0000000001", 5) == record


async def test_same_version_with_other_content_does_not_overwrite(store: ManagementStore) -> None:
    first = group(version=2, name="first")
    await store.upsert_groups([first])
    assert await store.upsert_groups([replace(first, name="second")]) == [False]
    assert await store.get_group("EMU0000000001", 5) == first


async def test_stale_version_is_ignored(store: ManagementStore) -> None:
    newest = group(version=5, name="newest")
    await store.upsert_groups([newest])
    assert await store.upsert_groups([group(version=3, name="older")]) == [False]
    assert await store.get_group("EMU0000000001", 5) == newest


async def test_out_of_order_delivery_converges_on_the_newest(store: ManagementStore) -> None:
    applied = [(await store.upsert_groups([group(version=v)]))[0] for v in (3, 1, 5, 2, 4, 6)]
    assert applied == [True, False, True, False, False, True]
    assert await store.get_group("EMU0000000001", 5) == group(version=6)


async def test_batch_reports_each_record_in_callers_order(store: ManagementStore) -> None:
    batch = [group(9, 2), group(1, 1), group(9, 4), group(9, 3), group(1, 1), profile(0xFFFF, 7)]
    assert await store.upsert_groups(batch) == [True, True, True, False, False, True]
    assert await store.group_versions("EMU0000000001") == {1: 1, 9: 4, 0xFFFF: 7}


async def test_empty_batch_applies_nothing(store: ManagementStore) -> None:
    assert await store.upsert_groups([]) == []
    assert await store.list_devices() == []


async def test_version_beyond_32_bits_is_kept(store: ManagementStore) -> None:
    epoch_and_counter = (7 << 32) | 3
    await store.upsert_groups([group(version=epoch_and_counter)])
    assert await store.upsert_groups([group(version=epoch_and_counter - 1)]) == [False]
    assert await store.group_versions("EMU0000000001") == {5: epoch_and_counter}


# --- tombstones ----------------------------------------------------------------------------------


async def test_tombstone_replaces_the_group_and_blocks_older_versions(store: ManagementStore) -> None:
    await store.upsert_groups([group(version=1)])
    tombstone = group(version=2, deleted=True)
    assert await store.upsert_groups([tombstone]) == [True]
    assert await store.get_group("EMU0000000001", 5) == tombstone
    assert await store.upsert_groups([group(version=1)]) == [False]
    assert await store.group_versions("EMU0000000001") == {5: 2}
    revived = group(version=3, name="again")
    assert await store.upsert_groups([revived]) == [True]
    assert await store.get_group("EMU0000000001", 5) == revived


async def test_tombstone_of_a_never_seen_group_is_recorded(store: ManagementStore) -> None:
    # A tombstone carries whatever the device last had; its alias need not match is_profile.
    tombstone = group(4, 9, deleted=True, alias=4, is_profile=False)
    assert await store.upsert_groups([tombstone]) == [True]
    assert await store.group_versions("EMU0000000001") == {4: 9}
    assert await store.upsert_groups([group(4, 8)]) == [False]


# --- reads and pagination ----------------------------------------------------------------------------


async def test_unknown_group_and_device_read_as_empty(store: ManagementStore) -> None:
    assert await store.get_group("EMU0000000001", 5) is None
    assert await store.list_groups("nobody") == []
    assert await store.group_versions("nobody") == {}


async def test_keyset_pagination_walks_all_groups_of_one_device_in_id_order(store: ManagementStore) -> None:
    ids = [0xFFFF, 0, 300, 7, 0xFFFE, 1, 2]
    await store.upsert_groups([profile(i, version=i % 5 + 1) for i in ids])
    await store.upsert_groups([group(3, serial="EMU0000000002"), group(8, deleted=True)])
    pages: list[list[int]] = []
    after: int | None = None
    while page := await store.list_groups("EMU0000000001", limit=3, after_group_id=after):
        pages.append([record.group_id for record in page])
        after = page[-1].group_id
    assert pages == [[0, 1, 2], [7, 8, 300], [0xFFFE, 0xFFFF]]
    assert await store.list_groups("EMU0000000001", after_group_id=0xFFFF) == []
    first = await store.list_groups("EMU0000000001", limit=1)
    assert first == [profile(0, version=1)]


async def test_list_groups_refuses_a_non_positive_limit(store: ManagementStore) -> None:
    with pytest.raises(ValueError):
        await store.list_groups("EMU0000000001", limit=0)


async def test_group_versions_cover_one_device_including_tombstones(store: ManagementStore) -> None:
    await store.upsert_groups(
        [group(1, 4), group(2, 2, deleted=True), group(1, 3, serial="EMU0000000002"), profile(0xFFFF, 1)]
    )
    assert await store.group_versions("EMU0000000001") == {1: 4, 2: 2, 0xFFFF: 1}
    assert await store.group_versions("EMU0000000002") == {1: 3}


# --- devices --------------------------------------------------------------------------------------


async def test_device_is_inserted_then_refreshed(store: ManagementStore) -> None:
    await store.upsert_device(device())
    later = device(last_seen=T0 + timedelta(hours=1), firmware="1.16")
    await store.upsert_device(later)
    await store.upsert_device(device("EMU0000000000"))
    assert await store.list_devices() == [device("EMU0000000000"), later]


async def test_device_report_older_than_the_stored_one_is_ignored(store: ManagementStore) -> None:
    current = device(last_seen=T0 + timedelta(hours=1), firmware="1.16")
    await store.upsert_device(current)
    await store.upsert_device(device(firmware="1.15"))
    assert await store.list_devices() == [current]


async def test_groups_arriving_before_their_device_create_a_placeholder(store: ManagementStore) -> None:
    await store.upsert_groups([group(serial="EMU0000000009")])
    assert await store.list_devices() == [
        DeviceRecord("EMU0000000009", "", "", datetime(1970, 1, 1, tzinfo=UTC))
    ]
    await store.upsert_device(device("EMU0000000009"))
    assert await store.list_devices() == [device("EMU0000000009")]
    await store.upsert_groups([group(6, serial="EMU0000000009")])
    assert await store.list_devices() == [device("EMU0000000009")]


# --- store-side validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "constraint"),
    [
        (group(65536), "access_groups_group_id_range"),
        (group(-1), "access_groups_group_id_range"),
        (group(version=0), "access_groups_version_positive"),
        (group(name="x" * 17), "access_groups_name_length"),
        (group(alias=65536), "access_groups_alias_range"),
        (group(session_lifetime=65536), "access_groups_session_lifetime_range"),
        (group(session_lifetime=-1), "access_groups_session_lifetime_range"),
        (group(scram_salt=2**32), "access_groups_scram_salt_uint32"),
        (group(scram_iteration=-1), "access_groups_scram_iteration_uint32"),
        (group(alias=5, is_profile=False), "access_groups_profile_is_own_alias"),
        (group(alias=0, is_profile=True), "access_groups_profile_is_own_alias"),
        (group(serial=""), "devices_serial_length"),
        (group(serial="S" * 65), "devices_serial_length"),
    ],
)
async def test_out_of_range_record_is_rejected_and_its_batch_rolled_back(
    store: ManagementStore, bad: GroupRecord, constraint: str
) -> None:
    good = group(2, serial="EMU0000000003")
    with pytest.raises(StoreRejected) as caught:
        await store.upsert_groups([good, bad])
    assert caught.value.record_index == 1
    assert constraint in str(caught.value)
    assert await store.list_devices() == []
    assert await store.get_group("EMU0000000003", 2) is None


async def test_value_too_wide_for_its_column_is_rejected(store: ManagementStore) -> None:
    with pytest.raises(StoreRejected):
        await store.upsert_groups([group(2**40)])


@pytest.mark.parametrize(
    "bad",
    [
        group(updated_at=datetime(2024, 1, 1)),  # naive: no way to know which instant
        group(True),  # a bool is not a group id
        group(version=2**63),  # wider than any BIGINT
        group(session_lifetime="30"),
        group(deleted=1),
        group(name=None),
    ],
)
async def test_record_of_the_wrong_type_is_rejected_before_the_database(
    store: ManagementStore, bad: GroupRecord
) -> None:
    with pytest.raises(StoreRejected) as caught:
        await store.upsert_groups([group(1), bad])
    assert caught.value.record_index == 1
    assert await store.get_group("EMU0000000001", 1) is None


@pytest.mark.parametrize(
    ("bad", "constraint"),
    [
        (device(""), "devices_serial_length"),
        (device(model="m" * 129), "devices_model_length"),
        (device(firmware="f" * 129), "devices_firmware_length"),
    ],
)
async def test_invalid_device_is_rejected(store: ManagementStore, bad: DeviceRecord, constraint: str) -> None:
    with pytest.raises(StoreRejected, match=constraint) as caught:
        await store.upsert_device(bad)
    assert caught.value.record_index is None
    assert await store.list_devices() == []


async def test_device_with_naive_last_seen_is_rejected(store: ManagementStore) -> None:
    with pytest.raises(StoreRejected, match="last_seen"):
        await store.upsert_device(device(last_seen=datetime(2024, 1, 1)))


# --- schema: no room for secrets, migrations ------------------------------------------------------


def _columns(url: str, table: str) -> list[str]:
    if url.startswith("sqlite"):
        return [row[1] for row in raw_rows(url, f"PRAGMA table_info({table})")]
    return [
        row[0]
        for row in raw_rows(
            url,
            "SELECT column_name FROM information_schema.columns "
            f"WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position",
        )
    ]


async def test_schema_has_no_column_able_to_hold_key_material(store: ManagementStore, store_url: str) -> None:
    assert _columns(store_url, "devices") == [
        "serial",
        "model",
        "firmware",
        "last_seen",
        "profile_groups_joined",
    ]
    assert _columns(store_url, "access_groups") == [
        "device_serial",
        "group_id",
        "version",
        "name",
        "alias",
        "session_lifetime",
        "is_profile",
        "password_set",
        "scram_salt",
        "scram_iteration",
        "deleted",
        "updated_at",
    ]
    assert _columns(store_url, "schema_migrations") == ["version", "name", "applied_at"]
    # An external API key's token is kept only as its SHA-256; no other cloud column is meant for secrets.
    assert _columns(store_url, "group_api_keys") == [
        "group_id",
        "type",
        "name",
        "token_sha256",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
    ]
    assert _columns(store_url, "cloud_accounts") == [
        "tenant",
        "id",
        "email",
        "name",
        "first_name",
        "last_name",
        "created_at",
    ]


async def test_migrations_are_recorded_once_across_reopenings(store_url: str) -> None:
    for _ in range(2):
        opened = await open_store(store_url)
        await opened.upsert_groups([group(version=len(await opened.list_devices()) + 1)])
        await opened.close()
    assert raw_rows(store_url, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (1, "devices and access groups"),
        (2, "device groups, members, accounts, roles, invitations, api keys, shares"),
    ]
    reopened = await open_store(store_url)
    try:
        assert await reopened.group_versions("EMU0000000001") == {5: 2}
    finally:
        await reopened.close()


async def test_concurrent_openers_apply_each_migration_once(store_url: str) -> None:
    stores = await asyncio.gather(*(open_store(store_url) for _ in range(6)))
    try:
        assert raw_rows(store_url, "SELECT version FROM schema_migrations ORDER BY version") == [(1,), (2,)]
        assert await stores[0].upsert_groups([group(version=1)]) == [True]
        assert [await s.group_versions("EMU0000000001") for s in stores] == [{5: 1}] * len(stores)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_store_migrated_by_a_newer_release_is_refused(store: ManagementStore, store_url: str) -> None:
    raw_rows(
        store_url,
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', '2030-01-01')",
    )
    with pytest.raises(StoreError, match="newer"):
        await open_store(store_url)


# --- concurrency --------------------------------------------------------------------------------------


async def test_concurrent_writers_on_several_connections_keep_only_the_newest(store_url: str) -> None:
    writers = await asyncio.gather(*(open_store(store_url) for _ in range(4)))
    group_ids = [0, 1, 2, 3, 0xFFFF]
    top = 12

    async def push(writer: ManagementStore, seed: int) -> list[tuple[GroupRecord, bool]]:
        shuffle = random.Random(seed)
        results: list[tuple[GroupRecord, bool]] = []
        for version in range(1, top + 1):
            batch = [profile(gid, version) for gid in group_ids]
            shuffle.shuffle(batch)  # different key orders in concurrent transactions
            results.extend(zip(batch, await writer.upsert_groups(batch), strict=True))
            await asyncio.sleep(0)
        return results

    try:
        outcomes = await asyncio.gather(*(push(writer, seed) for seed, writer in enumerate(writers)))
    finally:
        await asyncio.gather(*(writer.close() for writer in writers))

    applied: dict[tuple[int, int], int] = {}
    for record, was_applied in (pair for outcome in outcomes for pair in outcome):
        applied.setdefault((record.group_id, record.version), 0)
        applied[(record.group_id, record.version)] += was_applied
    assert max(applied.values()) == 1  # no version applied twice
    assert all(applied[(gid, top)] == 1 for gid in group_ids)  # the newest always lands
    reader = await open_store(store_url)
    try:
        assert await reader.group_versions("EMU0000000001") == dict.fromkeys(group_ids, top)
        assert await reader.list_groups("EMU0000000001") == [profile(gid, top) for gid in sorted(group_ids)]
    finally:
        await reader.close()


# --- lifecycle and inspection --------------------------------------------------------------------------


async def test_closed_store_refuses_calls_and_closing_twice_is_harmless(store_url: str) -> None:
    opened = await open_store(store_url)
    await opened.close()
    await opened.close()
    with pytest.raises(StoreError, match="closed"):
        await opened.list_devices()


async def test_snapshot_json_is_the_stable_documented_shape(store: ManagementStore) -> None:
    await store.upsert_device(device("EMU0000000002"))
    await store.upsert_device(device("EMU0000000001", last_seen=T0 + timedelta(minutes=1)))
    await store.upsert_groups(
        [
            profile(0xFFFF, 3),
            group(5, 2, deleted=True, password_set=False, scram_salt=None, scram_iteration=None),
        ]
    )
    text = await store_snapshot_json(store)
    assert text.endswith("\n")
    assert json.loads(text) == [
        {
            "serial": "EMU0000000001",
            "model": "TAP 1.10 L4 NFC BLE",
            "firmware": "1.15",
            "last_seen": "2024-05-01T12:01:00.250000Z",
            "groups": [
                {
                    "group_id": 5,
                    "version": 2,
                    "name": "user5v2",
                    "alias": 0,
                    "session_lifetime": 300,
                    "is_profile": False,
                    "password_set": False,
                    "scram_salt": None,
                    "scram_iteration": None,
                    "deleted": True,
                    "updated_at": "2024-05-01T12:00:02.250000Z",
                },
                {
                    "group_id": 65535,
                    "version": 3,
                    "name": "user65535v3",
                    "alias": 65535,
                    "session_lifetime": 300,
                    "is_profile": True,
                    "password_set": True,
                    "scram_salt": 16909060,
                    "scram_iteration": 5000,
                    "deleted": False,
                    "updated_at": "2024-05-01T12:00:03.250000Z",
                },
            ],
        },
        {
            "serial": "EMU0000000002",
            "model": "TAP 1.10 L4 NFC BLE",
            "firmware": "1.15",
            "last_seen": "2024-05-01T12:00:00.250000Z",
            "groups": [],
        },
    ]
    only_two = json.loads(await store_snapshot_json(store, "EMU0000000002"))
    assert [entry["serial"] for entry in only_two] == ["EMU0000000002"]
    assert await store_snapshot_json(store, "unknown") == "[]\n"


async def test_snapshot_pages_through_more_groups_than_one_page(store: ManagementStore) -> None:
    await store.upsert_groups([profile(gid) for gid in range(1200)])
    document = json.loads(await store_snapshot_json(store))
    assert [g["group_id"] for g in document[0]["groups"]] == list(range(1200))


# --- the management service's tables (tap_emulator.cloud over this store) ---------------------------

OC_TENANT = Tenant("oceanconnect", OCEANCONNECT)
ROMA_TENANT = Tenant("roma/proj-1/inst-1", ROMA)
NATIVE_TENANT = Tenant("native", NATIVE)


def cloud(store: ManagementStore) -> CloudService:
    assert isinstance(store, CloudStore)
    return CloudService(store)


def _refused_by_the_database(store_url: str, sql: str) -> None:
    """The statement, run on a plain driver connection, breaks a constraint of the schema."""
    import psycopg

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        raw_rows(store_url, sql)


async def test_the_database_itself_holds_capacity_unique_names_and_one_key_per_type(
    store: ManagementStore, store_url: str
) -> None:
    service = cloud(store)
    group = await service.create_group(OC_TENANT, "oc-app-1", GroupDraft("lab", max_devices=2), "u")
    other = await service.create_group(NATIVE_TENANT, "lab", GroupDraft("twin"), "u")
    _refused_by_the_database(store_url, f"UPDATE device_groups SET device_count = 3 WHERE id = '{group.id}'")
    _refused_by_the_database(store_url, f"UPDATE device_groups SET max_devices = -1 WHERE id = '{group.id}'")
    _refused_by_the_database(store_url, f"UPDATE device_groups SET parent_id = id WHERE id = '{group.id}'")
    # A name unique in its scope (OceanConnect), repeatable where the scope is NULL (native).
    copy = (
        "INSERT INTO device_groups (id, seq, tenant, scope, unique_scope, name, description, status,"
        " sequence, max_devices, device_count, tags, created_at, created_by, updated_at, updated_by,"
        " version, profile)"
        " SELECT '{id}', seq + 100, tenant, scope, unique_scope, name, description, status, sequence,"
        " max_devices, 0, tags, created_at, created_by, updated_at, updated_by, 1, profile"
        " FROM device_groups WHERE id = '{source}'"
    )
    _refused_by_the_database(store_url, copy.format(id="copy-oc", source=group.id))
    raw_rows(store_url, copy.format(id="copy-native", source=other.id))
    await service.create_api_key(group.id, "sigfox", "k", "token-1", "u", OC_TENANT)
    _refused_by_the_database(
        store_url,
        "INSERT INTO group_api_keys SELECT group_id, type, name, token_sha256, created_at, created_by,"
        f" updated_at, updated_by FROM group_api_keys WHERE group_id = '{group.id}'",
    )


async def test_deleting_a_group_deletes_what_hangs_off_it(store: ManagementStore, store_url: str) -> None:
    service = cloud(store)
    await store.upsert_device(device())
    group = await service.create_group(OC_TENANT, "oc-app-1", GroupDraft("lab"), "u")
    await service.add_member(group.id, "EMU0000000001", "u")
    await service.create_api_key(group.id, "sigfox", "k", "token-1", "u", OC_TENANT)
    await service.delete_group(group.id, "u")
    for table in ("device_group_members", "group_api_keys", "device_groups"):
        assert raw_rows(store_url, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    assert [d.serial for d in await store.list_devices()] == ["EMU0000000001"]  # the device stays


async def test_a_store_of_the_first_schema_is_upgraded_with_its_data(store_url: str) -> None:
    """A store written before the cloud tables existed opens with its devices and groups intact."""
    from tap_emulator.store import postgres, schema
    from tap_emulator.store import sqlite as sqlite_engine

    dialect = sqlite_engine.DIALECT if store_url.startswith("sqlite") else postgres.DIALECT
    first = schema.MIGRATIONS[0]
    for statement in (schema.CREATE_MIGRATIONS_TABLE, *first.statements):
        raw_rows(store_url, dialect.sql(statement))
    raw_rows(
        store_url,
        "INSERT INTO schema_migrations (version, name, applied_at)"
        f" VALUES (1, '{first.name}', '2024-05-01T12:00:00.000000Z')",
    )
    raw_rows(
        store_url,
        "INSERT INTO devices (serial, model, firmware, last_seen)"
        " VALUES ('EMU-OLD', 'TAP', '1.0', '2024-05-01T12:00:00.000000Z')",
    )
    upgraded = await open_store(store_url)
    try:
        assert [d.serial for d in await upgraded.list_devices()] == ["EMU-OLD"]
        group = await cloud(upgraded).create_group(NATIVE_TENANT, "lab", GroupDraft("g"), "u")
        assert (await cloud(upgraded).add_member(group.id, "EMU-OLD", "u")).serial == "EMU-OLD"
        assert raw_rows(store_url, "SELECT MAX(version) FROM schema_migrations") == [(2,)]
    finally:
        await upgraded.close()


async def test_two_connections_racing_for_the_last_places_never_pass_capacity(store_url: str) -> None:
    first, second = await asyncio.gather(open_store(store_url), open_store(store_url))
    try:
        serials = [f"EMU{index:03}" for index in range(12)]
        for serial in serials:
            await first.upsert_device(device(serial))
        group = await cloud(first).create_group(OC_TENANT, "oc-app-1", GroupDraft("race", max_devices=5), "u")

        async def add_all(store: ManagementStore, mine: list[str]) -> list[bool]:
            outcomes = []
            for serial in mine:
                try:
                    await cloud(store).add_member(group.id, serial, "u")
                    outcomes.append(True)
                except CapacityExceeded:
                    outcomes.append(False)
            return outcomes

        won = await asyncio.gather(add_all(first, serials[0::2]), add_all(second, serials[1::2]))
        assert sum(sum(outcome) for outcome in won) == 5
        stored = await cloud(second).get_group(group.id)
        assert stored.device_count == 5
        assert len((await cloud(second).list_members(group.id)).items) == 5
        assert raw_rows(store_url, "SELECT COUNT(*) FROM device_group_members") == [(5,)]
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_two_connections_creating_the_same_names_keep_each_name_once(store_url: str) -> None:
    first, second = await asyncio.gather(open_store(store_url), open_store(store_url))
    names = [f"lab{index}" for index in range(8)]

    async def create_all(store: ManagementStore) -> list[str]:
        results = []
        for name in names:
            try:
                results.append(
                    (await cloud(store).create_group(OC_TENANT, "oc-app-1", GroupDraft(name), "u")).id
                )
            except NameTaken:
                results.append("taken")
        return results

    try:
        one, two = await asyncio.gather(create_all(first), create_all(second))
        assert [(a == "taken") != (b == "taken") for a, b in zip(one, two, strict=True)] == [True] * len(
            names
        )
        listed = (await cloud(first).list_groups(OC_TENANT)).items
        assert sorted(g.name for g in listed) == sorted(names)
        # Integer ids handed out by both connections never collide and count from 1.
        roma = await asyncio.gather(
            *(
                cloud(store).create_group(ROMA_TENANT, "app", GroupDraft(f"r{i}"), "u")
                for i in range(3)
                for store in (first, second)
            )
        )
        assert sorted(int(g.id) for g in roma) == [1, 2, 3, 4, 5, 6]
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_two_connections_moving_groups_under_each_other_never_make_a_cycle(store_url: str) -> None:
    first, second = await asyncio.gather(open_store(store_url), open_store(store_url))
    try:
        for _round in range(4):
            a = await cloud(first).create_group(NATIVE_TENANT, "lab", GroupDraft("a"), "u")
            b = await cloud(first).create_group(NATIVE_TENANT, "lab", GroupDraft("b"), "u")
            outcomes = await asyncio.gather(
                cloud(first).update_group(a.id, GroupChanges(parent_id=b.id), "u"),
                cloud(second).update_group(b.id, GroupChanges(parent_id=a.id), "u"),
                return_exceptions=True,
            )
            assert sum(isinstance(outcome, CycleRefused) for outcome in outcomes) == 1, outcomes
            parents = {(await cloud(first).get_group(g.id)).parent_id for g in (a, b)}
            assert None in parents
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_two_connections_updating_other_fields_of_one_group_lose_neither_change(store_url: str) -> None:
    first, second = await asyncio.gather(open_store(store_url), open_store(store_url))
    try:
        for round_ in range(6):
            group = await cloud(first).create_group(NATIVE_TENANT, "lab", GroupDraft(f"g{round_}"), "u")
            await asyncio.gather(
                cloud(first).update_group(group.id, GroupChanges(description=f"d{round_}"), "one"),
                cloud(second).update_group(group.id, GroupChanges(sequence=round_ + 10), "two"),
            )
            stored = await cloud(first).get_group(group.id)
            assert (stored.description, stored.sequence, stored.version) == (f"d{round_}", round_ + 10, 3)
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_cancelled_cloud_transaction_writes_nothing_and_frees_the_store(
    store: ManagementStore, store_url: str
) -> None:
    assert isinstance(store, CloudStore)
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck(tx: Any) -> None:
        await tx.rows("INSERT INTO cloud_counters (name, value) VALUES ('cancelled', 1)", {})
        started.set()
        await never.wait()

    task = asyncio.create_task(store.atomic(stuck))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    group = await asyncio.wait_for(
        cloud(store).create_group(NATIVE_TENANT, "lab", GroupDraft("after"), "u"), 10
    )
    assert group.name == "after"
    assert raw_rows(store_url, "SELECT name FROM cloud_counters WHERE name = 'cancelled'") == []
