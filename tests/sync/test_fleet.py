"""FleetSync: one task syncs many real devices (trees over their own `:memory:` states) to real stores.

The store is wrapped in a counter of the calls it forwards (each call is one round trip: one
transaction), so the tests see what one round of the fleet costs; the devices are wrapped in a subject
that counts how often their tree is asked for (only a reconcile with work may ask).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tap_emulator.cli import main
from tap_emulator.config import load_profile
from tap_emulator.model import Operation, default_model
from tap_emulator.security import scram
from tap_emulator.state import DeviceState, OutboxRow, StateFile
from tap_emulator.state.outbox import backlog_status
from tap_emulator.store import (
    DeviceRecord,
    GroupRecord,
    ManagementStore,
    MembershipOutcome,
    StoreError,
    open_store,
)
from tap_emulator.store.cloud import CloudStore, Transaction
from tap_emulator.sync import FleetSync, SyncSettings, SyncSubject
from tap_emulator.tree import MAINTENANCE, ChangeEvent, DeviceTree, Request, Status
from tap_emulator.tree.handlers import group as group_handler

from .conftest import GROUP_OBJECT, TcpProxy, device_versions, wait_until, with_parameters

pytestmark = pytest.mark.timeout(90)

SUPERVISOR = 65534
FAST = SyncSettings(backoff_base=0.05, backoff_cap=0.3, heartbeat=3600.0, stop_drain_timeout=5.0)


def serial_of(index: int) -> str:
    return f"EMU{index:010d}"


class CountingStore:
    """A ManagementStore forwarding every call to a real one, counting the calls (round trips)."""

    def __init__(self, inner: ManagementStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.group_batches: list[list[str]] = []  # the serials of each upsert_groups call's records
        self.device_batches: list[list[DeviceRecord]] = []

    def reset(self) -> None:
        self.calls.clear()
        self.group_batches.clear()
        self.device_batches.clear()

    async def upsert_device(self, device: DeviceRecord) -> None:
        self.calls["upsert_device"] += 1
        await self.inner.upsert_device(device)

    async def upsert_devices(self, devices: Sequence[DeviceRecord]) -> None:
        self.calls["upsert_devices"] += 1
        self.device_batches.append(list(devices))
        await self.inner.upsert_devices(devices)

    async def upsert_groups(self, groups: Sequence[GroupRecord]) -> list[bool]:
        self.calls["upsert_groups"] += 1
        self.group_batches.append([group.device_serial for group in groups])
        return await self.inner.upsert_groups(groups)

    async def get_group(self, device_serial: str, group_id: int) -> GroupRecord | None:
        self.calls["get_group"] += 1
        return await self.inner.get_group(device_serial, group_id)

    async def list_groups(
        self, device_serial: str, limit: int = 100, after_group_id: int | None = None
    ) -> list[GroupRecord]:
        self.calls["list_groups"] += 1
        return await self.inner.list_groups(device_serial, limit, after_group_id)

    async def group_versions(self, device_serial: str) -> dict[int, int]:
        self.calls["group_versions"] += 1
        return await self.inner.group_versions(device_serial)

    async def group_versions_many(self, serials: Sequence[str]) -> dict[str, dict[int, int]]:
        self.calls["group_versions_many"] += 1
        return await self.inner.group_versions_many(serials)

    async def list_devices(self) -> list[DeviceRecord]:
        self.calls["list_devices"] += 1
        return await self.inner.list_devices()

    async def join_profile_groups(
        self, serial: str, group_ids: Sequence[str], at: datetime
    ) -> dict[str, MembershipOutcome]:
        self.calls["join_profile_groups"] += 1
        return await self.inner.join_profile_groups(serial, group_ids, at)

    async def join_profile_groups_many(
        self, serials: Sequence[str], group_ids: Sequence[str], at: datetime
    ) -> dict[str, dict[str, MembershipOutcome]]:
        self.calls["join_profile_groups_many"] += 1
        return await self.inner.join_profile_groups_many(serials, group_ids, at)

    async def close(self) -> None:
        await self.inner.close()


class CountingSubject:
    """A device as the fleet's lazy devices present it: the tree is handed out only when asked for."""

    def __init__(self, tree: DeviceTree) -> None:
        self._tree = tree
        self.tree_requests = 0

    @property
    def serial_number(self) -> str:
        return self._tree.serial_number

    @property
    def state(self) -> DeviceState:
        return self._tree.state

    def device_identity(self) -> dict[str, str]:
        return self._tree.device_identity()

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        return self._tree.subscribe(listener)

    async def sync_tree(self) -> DeviceTree:
        self.tree_requests += 1
        return self._tree


BuildFleet = Callable[..., list[DeviceTree]]


@pytest.fixture
def build_fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[BuildFleet]:
    """Open `count` real devices (default profile, serials EMU0000000001...) as views of one fleet
    state file (a StateFile keyed by serial, as `tap-emulator fleet` keeps them).

    Seeding derives each profile group's SCRAM keys (two PBKDF2 runs per group): with a fixed salt
    draw the derivations of every device are the same, so they are computed once (the credentials
    are real, merely shared; a fleet's start-up shares them too, issue 15). Devices are seeded from a
    few threads at once, so their writes share the file's group commits.
    """
    monkeypatch.setattr(
        group_handler, "credential_from_password", functools.cache(scram.credential_from_password)
    )
    profile = load_profile("default")
    files: list[StateFile] = []

    def open_one(file: StateFile, index: int) -> DeviceTree:
        serial = serial_of(index)
        device = dataclasses.replace(profile.device, serial_number=serial)
        tree = DeviceTree(
            default_model(),
            file.device(serial),
            access=profile.access,
            random_bytes=lambda n: b"\x5a" * n,
            clock_ms=lambda: time.time_ns() // 1_000_000,
            memory=profile.memory,
        )
        tree.seed(dataclasses.replace(profile, device=device))
        return tree

    def build(count: int, first: int = 1) -> list[DeviceTree]:
        file = StateFile(tmp_path / f"fleet-{first}-{count}.sqlite3", clock=time.time, owner=True)
        files.append(file)
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(functools.partial(open_one, file), range(first, first + count)))

    yield build
    for file in files:
        file.close()


@pytest.fixture
async def counting(store_url: str) -> CountingStore:
    return CountingStore(await open_store(store_url))


async def drained(trees: Sequence[DeviceTree]) -> bool:
    for tree in trees:
        if await tree.state.pending_outbox(1):
            return False
    return True


async def store_holds(store: ManagementStore, trees: Sequence[DeviceTree]) -> None:
    """Every device record and every group version of every device is in the store."""
    devices = {device.serial: device for device in await store.list_devices()}
    versions = await store.group_versions_many([tree.serial_number for tree in trees])
    for tree in trees:
        record = devices[tree.serial_number]
        identity = tree.device_identity()
        assert (record.model, record.firmware) == (identity["model"], identity["firmware_version"])
        assert record.last_seen > datetime(2000, 1, 1, tzinfo=UTC)  # a real record, not a placeholder
        assert versions[tree.serial_number] == device_versions(tree)


async def rename(tree: DeviceTree, group_id: int, name: str) -> None:
    response = await tree.handle(
        Request(Operation.WRITE, GROUP_OBJECT, group_id, 0, name, caller=MAINTENANCE)
    )
    assert response.status is Status.CHANGED, response


def fleet_of(store: ManagementStore, **options: Any) -> FleetSync:
    async def open_counted() -> ManagementStore:
        return store

    options.setdefault("settings", FAST)
    return FleetSync(open_counted, **options)


async def test_200_devices_sync_every_record_and_group_in_a_few_batched_round_trips(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(200)
    subjects = [CountingSubject(tree) for tree in trees]
    assert all(isinstance(subject, SyncSubject) for subject in [*subjects, trees[0]])  # a tree is one too
    fleet = fleet_of(counting)
    for subject in subjects:
        fleet.add(subject)
    tasks_before = len(asyncio.all_tasks())
    fleet.start()
    try:
        assert len(asyncio.all_tasks()) == tasks_before + 1  # one task for the whole fleet
        await wait_until(lambda: drained(trees), 30, interval=0.1)
        await store_holds(store, trees)
    finally:
        await fleet.stop()
    # 200 devices, 600 group records: each kind of work in batches, none per device.
    assert counting.calls["group_versions_many"] == 1
    assert counting.calls["upsert_devices"] == 1
    assert 2 <= counting.calls["upsert_groups"] <= 3
    assert not {"upsert_device", "group_versions", "join_profile_groups"} & set(counting.calls)
    assert sum(len(batch) for batch in counting.group_batches) == 600
    assert all(len(batch) <= FAST.batch_rows for batch in counting.group_batches)
    assert max(len(set(batch)) for batch in counting.group_batches) > 100  # many devices per trip
    assert all(subject.tree_requests == 0 for subject in subjects)  # nothing to reconcile: no tree
    assert fleet.stats.applied == 600 and fleet.stats.already_stored == 0 and fleet.stats.reconciles == 200
    for tree in trees:
        status = await backlog_status(tree.state)
        assert (status.pending, status.rejected, status.delivered) == (0, 0, 3)
        assert fleet.last_error(tree.serial_number) is None


async def test_a_change_on_one_device_is_pushed_without_touching_the_others(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    trees = build_fleet(50)
    fleet = fleet_of(counting)
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
        counting.reset()
        read: list[DeviceState] = []
        pending_outbox = DeviceState.pending_outbox

        async def spied(self: DeviceState, limit: int = 500) -> list[OutboxRow]:
            read.append(self)
            return await pending_outbox(self, limit)

        monkeypatch.setattr(DeviceState, "pending_outbox", spied)
        changed = trees[17]
        await rename(changed, SUPERVISOR, "only-me")

        async def pushed() -> bool:
            stored = await store.get_group(changed.serial_number, SUPERVISOR)
            return stored is not None and stored.name == "only-me"

        await wait_until(pushed, 10)
        await wait_until(lambda: drained([changed]), 10)
        monkeypatch.undo()
    finally:
        await fleet.stop()
    assert counting.calls == Counter({"upsert_groups": 1})
    assert counting.group_batches == [[changed.serial_number]]
    assert read and all(state is changed.state for state in read)  # no other device's outbox was read
    await store_holds(store, trees)


async def test_a_reconcile_with_work_asks_for_that_device_tree_only(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(20)
    ahead = trees[3]
    # The store holds a newer version of one group than the device (its state was lost, say).
    version = device_versions(ahead)[SUPERVISOR] + 10**9
    record = GroupRecord(
        ahead.serial_number, SUPERVISOR, version, "from-the-store", SUPERVISOR, 0, True, False, 0, 0, False,
        datetime(2024, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    await store.upsert_groups([record])
    subjects = [CountingSubject(tree) for tree in trees]
    fleet = fleet_of(counting)
    for subject in subjects:
        fleet.add(subject)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
    finally:
        await fleet.stop()
    assert [subject.tree_requests for subject in subjects] == [int(index == 3) for index in range(20)]
    assert device_versions(ahead)[SUPERVISOR] > version  # re-versioned past the store's
    stored = await store.get_group(ahead.serial_number, SUPERVISOR)
    account = ahead.account(SUPERVISOR)
    assert stored is not None and account is not None and stored.name == account.name  # the device won
    await store_holds(store, trees)


async def test_a_store_that_lost_everything_is_refilled_without_building_any_tree(
    build_fleet: BuildFleet, tmp_path: Path, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(100)
    first = FleetSync(lambda: open_store(f"sqlite:///{tmp_path}/first-store.sqlite3"), settings=FAST)
    for tree in trees:
        first.add(tree)
    first.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
    finally:
        await first.stop()
    # Everything is delivered; a second, empty store must get it all again (re-queued in the reconcile).
    subjects = [CountingSubject(tree) for tree in trees]
    second = fleet_of(counting)
    for subject in subjects:
        second.add(subject)
    second.start()
    try:

        async def refilled() -> bool:
            return second.stats.applied >= 300

        await wait_until(refilled, 30, interval=0.05)
        await wait_until(lambda: drained(trees), 10, interval=0.05)
    finally:
        await second.stop()
    assert all(subject.tree_requests == 0 for subject in subjects)  # payloads came from the state
    await store_holds(store, trees)
    for tree in trees[:5]:
        for group_id in tree.instance_ids(GROUP_OBJECT):
            stored = await store.get_group(tree.serial_number, group_id)
            account = tree.account(group_id)
            assert stored is not None and account is not None
            assert (stored.name, stored.password_set) == (account.name, account.credential is not None)
    assert counting.calls["upsert_groups"] <= 2


def inject_row(state: DeviceState, payload: dict[str, Any]) -> None:
    def write(conn: sqlite3.Connection, device: str) -> None:
        conn.execute(
            "INSERT INTO outbox (device, object_id, instance_id, version, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            (device, GROUP_OBJECT, payload["instance_id"], payload["version"], json.dumps(payload)),
        )

    state.call_sync(write)


async def test_a_record_the_store_refuses_parks_only_that_devices_row(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(30)
    refused = trees[7]
    payload = refused.outbox_payload(GROUP_OBJECT, SUPERVISOR)
    assert payload is not None
    # Public values only (so the device sends it), but a name longer than the store's column allows; a
    # group of its own, so that no other pending row of the device stands behind the same record.
    too_long = {**payload, "instance_id": 77, "values": {**payload["values"], "alias": 77, "name": "n" * 40}}
    inject_row(refused.state, too_long)
    fleet = fleet_of(counting)
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
    finally:
        await fleet.stop()
    assert fleet.stats.rejected == 1
    status = await backlog_status(refused.state)
    assert (status.pending, status.rejected, status.delivered) == (0, 1, 3)
    assert status.last_rejection is not None and "name" in status.last_rejection
    for tree in trees:
        if tree is not refused:
            other = await backlog_status(tree.state)
            assert (other.pending, other.rejected, other.delivered) == (0, 0, 3)
    assert await store.get_group(refused.serial_number, 77) is None
    await store_holds(store, trees)


class TooLongModel(CountingSubject):
    def device_identity(self) -> dict[str, str]:
        return {**super().device_identity(), "model": "m" * 200}  # past the store's column limit


async def test_a_device_record_the_store_refuses_is_that_devices_alone(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(25)
    subjects = [
        TooLongModel(tree) if index == 9 else CountingSubject(tree) for index, tree in enumerate(trees)
    ]
    fleet = fleet_of(counting)
    for subject in subjects:
        fleet.add(subject)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
    finally:
        await fleet.stop()
    devices = {device.serial: device for device in await store.list_devices()}
    refused = devices[trees[9].serial_number]
    assert (refused.model, refused.last_seen) == (
        "",
        datetime(1970, 1, 1, tzinfo=UTC),
    )  # its groups' placeholder
    await store_holds(store, trees[:9] + trees[10:])
    versions = await store.group_versions(trees[9].serial_number)
    assert versions == device_versions(trees[9])  # its groups are synced all the same
    assert counting.calls["upsert_devices"] == 2  # the refused batch, then the others again


async def test_a_push_acknowledged_but_not_settled_is_sent_again_and_never_applied_twice(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(40)
    crashes = 0

    def crash_once() -> None:  # the window between the store's answer and marking the rows
        nonlocal crashes
        crashes += 1
        if crashes == 1:
            raise RuntimeError("lost right after the store acknowledged (test)")

    fleet = fleet_of(counting, after_acknowledged=crash_once)
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
    finally:
        await fleet.stop()
    first_batch = len(counting.group_batches[0])
    assert fleet.stats.failures == 1
    assert fleet.stats.already_stored == first_batch  # the replay: held already, not applied again
    assert fleet.stats.applied == 40 * 3 - first_batch  # (the store applied the first batch unseen)
    await store_holds(store, trees)


@pytest.mark.postgres
async def test_a_store_outage_loses_nothing_and_every_device_converges_after(
    build_fleet: BuildFleet, pg_server: str, pg_schema: str
) -> None:
    target = urlsplit(pg_server)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.open()
    netloc = f"{target.username + '@' if target.username else ''}127.0.0.1:{proxy.port}"
    proxied = with_parameters(target._replace(netloc=netloc).geturl(), options=f"-c search_path={pg_schema}")
    direct = await open_store(with_parameters(pg_server, options=f"-c search_path={pg_schema}"))
    trees = build_fleet(60)
    settings = dataclasses.replace(FAST, backoff_cap=0.2)
    fleet = FleetSync(lambda: open_store(proxied), settings=settings)
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
        applied_before = fleet.stats.applied
        await proxy.cut()
        for index, tree in enumerate(trees):  # every device changes while the store is away
            await rename(tree, SUPERVISOR, f"out{index}")
        failures = fleet.stats.failures

        async def retried() -> bool:
            return fleet.stats.failures >= failures + 3

        await wait_until(retried, 20)
        assert fleet.last_error(trees[0].serial_number) is not None
        during = [await backlog_status(tree.state) for tree in trees]
        assert all(status.pending == 1 for status in during)  # nothing lost: each change waits
        assert any(status.oldest_pending_attempts >= 1 and status.last_error for status in during)
        await proxy.open()  # the store is back, on the same port
        await wait_until(lambda: drained(trees), 30, interval=0.05)
        assert fleet.last_error(trees[0].serial_number) is None
    finally:
        await fleet.stop()
        await proxy.close()
    try:
        # Each change applied exactly once, however many attempts it took.
        assert fleet.stats.applied == applied_before + len(trees)
        await store_holds(direct, trees)
        for index, tree in enumerate(trees):
            stored = await direct.get_group(tree.serial_number, SUPERVISOR)
            assert stored is not None and stored.name == f"out{index}"
    finally:
        await direct.close()


async def test_the_profiles_device_groups_are_joined_by_every_device_in_one_call(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(40)
    fleet = fleet_of(counting, device_groups=["fleet-a", "fleet-b"])
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    try:

        async def joined() -> bool:
            return all(fleet.device_groups_joined(tree.serial_number) for tree in trees)

        await wait_until(joined, 30)
    finally:
        await fleet.stop()
    assert counting.calls["join_profile_groups_many"] == 1 and not counting.calls["join_profile_groups"]
    assert isinstance(store, CloudStore)
    for group_id in ("fleet-a", "fleet-b"):

        async def members(tx: Transaction, group_id: str = group_id) -> list[tuple[Any, ...]]:
            query = "SELECT serial FROM device_group_members WHERE group_id = :group_id ORDER BY serial"
            return await tx.rows(query, {"group_id": group_id})

        rows = await store.atomic(members, read_only=True)
        assert [row[0] for row in rows] == [tree.serial_number for tree in trees]


async def test_a_device_whose_state_fails_backs_off_alone(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    trees = build_fleet(12)
    broken = trees[4]
    fleet = fleet_of(counting)
    for tree in trees:
        fleet.add(tree)
    broken.state.close()  # every read of its outbox now fails with StateError
    others = [tree for tree in trees if tree is not broken]
    fleet.start()
    try:
        await wait_until(lambda: drained(others), 30, interval=0.05)

        async def backing_off() -> bool:
            return (fleet.last_error(broken.serial_number) or "").startswith("state:")

        await wait_until(backing_off, 10)
        assert all(fleet.last_error(tree.serial_number) is None for tree in others)
        fleet.remove(broken.serial_number)
        assert len(fleet) == 11
        with pytest.raises(KeyError):
            fleet.last_error(broken.serial_number)
        await rename(others[0], SUPERVISOR, "still-going")

        async def pushed() -> bool:
            stored = await store.get_group(others[0].serial_number, SUPERVISOR)
            return stored is not None and stored.name == "still-going"

        await wait_until(pushed, 10)
    finally:
        await fleet.stop()
    await store_holds(store, others)
    assert broken.serial_number not in {device.serial for device in await store.list_devices()}


async def test_stop_gives_the_fleets_backlog_a_chance_to_drain(
    build_fleet: BuildFleet, store_url: str, store: ManagementStore
) -> None:
    trees = build_fleet(20)
    gate = asyncio.Event()

    async def slow_open() -> ManagementStore:
        await gate.wait()
        return await open_store(store_url)

    fleet = FleetSync(slow_open, settings=dataclasses.replace(FAST, stop_drain_timeout=10.0))
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    stopping = asyncio.create_task(fleet.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the drain
    gate.set()
    await asyncio.wait_for(stopping, 10)
    assert await drained(trees)
    await store_holds(store, trees)


async def test_stop_does_not_hang_on_an_unreachable_store(build_fleet: BuildFleet) -> None:
    trees = build_fleet(5)
    opened = 0

    async def never() -> ManagementStore:
        nonlocal opened
        opened += 1
        raise StoreError("down (test)")

    fleet = FleetSync(never, settings=dataclasses.replace(FAST, backoff_base=10.0, stop_drain_timeout=5.0))
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    await wait_until(lambda: asyncio.sleep(0, result=opened >= 1), 5)
    await asyncio.wait_for(fleet.stop(), 2.0)  # backing off: stop at once, the rows stay pending
    for tree in trees:
        status = await backlog_status(tree.state)
        assert status.pending == 3 and status.last_error == "down (test)"
        assert fleet.last_error(tree.serial_number) == "down (test)"


class ManualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_heartbeats_are_spread_over_the_period_and_batched(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore
) -> None:
    count, period = 60, 1000.0
    trees = build_fleet(count)
    clock = ManualClock(1_700_000_000.0)
    fleet = fleet_of(
        counting,
        settings=dataclasses.replace(FAST, heartbeat=period),
        clock=clock,
        draw=random.Random(15).random,
    )
    for tree in trees:
        fleet.add(tree)
    fleet.start()
    try:
        await wait_until(lambda: drained(trees), 30, interval=0.05)
        assert [len(batch) for batch in counting.device_batches] == [count]  # the first records
        seen: Counter[str] = Counter()
        sizes = []
        for step in range(1, 11):  # a tenth of the period at a time; a change wakes the task
            clock.now += period / 10
            counting.device_batches.clear()
            await rename(trees[step], SUPERVISOR, f"tick{step}")
            await wait_until(lambda: drained(trees), 10, interval=0.02)
            sizes.append(sum(len(batch) for batch in counting.device_batches))
            seen.update(record.serial for batch in counting.device_batches for record in batch)
    finally:
        await fleet.stop()
    # Over one period each device refreshed its record once, a few devices per step, never all at once.
    assert sorted(seen.values()) == [1] * count
    assert max(sizes) < count / 2 and sum(1 for size in sizes if size) >= 6
    stored = {device.serial: device.last_seen for device in await store.list_devices()}
    assert len({stored[tree.serial_number] for tree in trees}) > 6  # refreshed at different times


async def test_2000_devices_sync_into_the_store_and_store_show_lists_them_all(
    build_fleet: BuildFleet, counting: CountingStore, store: ManagementStore, store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    count = 2000
    started = time.perf_counter()
    trees = build_fleet(count)
    built = time.perf_counter() - started
    fleet = fleet_of(counting)
    for tree in trees:
        fleet.add(tree)

    async def all_applied() -> bool:  # (cheap to poll: reading 2,000 outboxes would slow the fleet down)
        return fleet.stats.applied >= count * 3

    started = time.perf_counter()
    fleet.start()
    try:
        await wait_until(all_applied, 60, interval=0.02)
        elapsed = time.perf_counter() - started
        await wait_until(lambda: drained(trees), 10)
    finally:
        await fleet.stop()
    records = fleet.stats.applied
    assert records == count * 3
    await store_holds(store, trees)
    trips = sum(counting.calls.values())
    engine = store_url.partition(":")[0]
    with capsys.disabled():
        print(
            f"\n[{engine}] {count} devices (built in {built:.1f} s): {records} group records + "
            f"{count} device records in {elapsed:.2f} s = {records / elapsed:.0f} group records/s; "
            f"{trips} round trips ({trips * 1000 / count:.1f} per 1,000 devices): {dict(counting.calls)}"
        )
    assert trips * 1000 / count <= 10
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["store", "show", "--store", store_url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [device["serial"] for device in shown] == [serial_of(index) for index in range(1, count + 1)]
    assert all(len(device["groups"]) == 3 for device in shown)


@pytest.mark.postgres
async def test_two_fleets_sharding_one_postgres_store_add_up(build_fleet: BuildFleet, pg_url: str) -> None:
    """Two fleets (as two processes sharding with --first/--count), each with its own connection, write
    the same PostgreSQL store at once: their batches never deadlock and the store holds both."""
    halves = [build_fleet(1000, first=1), build_fleet(1000, first=1001)]
    fleets = [FleetSync(lambda: open_store(pg_url), settings=FAST) for _half in halves]
    for fleet, half in zip(fleets, halves, strict=True):
        for tree in half:
            fleet.add(tree)

    async def all_applied() -> bool:
        return all(fleet.stats.applied >= 3000 for fleet in fleets)

    for fleet in fleets:
        fleet.start()
    try:
        await wait_until(all_applied, 60, interval=0.05)
    finally:
        for fleet in fleets:
            await fleet.stop()
    assert all(fleet.stats.failures == 0 for fleet in fleets)
    store = await open_store(pg_url)
    try:
        assert [device.serial for device in await store.list_devices()] == [
            serial_of(i) for i in range(1, 2001)
        ]
        await store_holds(store, halves[0] + halves[1])
    finally:
        await store.close()
