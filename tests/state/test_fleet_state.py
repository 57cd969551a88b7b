"""Many devices in one state file: group commit across devices (counted in the WAL, not timed), rows that
never mix, failures and closes that stay with their device, batched seeding of 10,000 devices, and the
owner lock of a fleet file."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.state import (
    DeviceSeed,
    DeviceState,
    DeviceValueWrite,
    InstanceRow,
    InstanceWrite,
    MemoryPageWrite,
    StateError,
    StateFile,
)
from tap_emulator.state import outbox as ob
from tap_emulator.state.lock import StateLockError

pytestmark = pytest.mark.timeout(120)

GROUP = 1025


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[StateFile]:
    opened = StateFile(tmp_path / "fleet.sqlite3", clock=lambda: 1000.0)
    try:
        yield opened
    finally:
        opened.close()


def instance(iid: int, version: int, name: str, *, credential: bytes | None = None) -> InstanceWrite:
    row = InstanceRow(GROUP, iid, version, False, {0: name, 4: 300}, credential)
    return InstanceWrite(row, {"instance_id": iid, "version": version, "values": {"name": name}})


def commit_frames(wal: Path) -> int:
    """How many transactions the WAL holds: frames whose header records a database size (a commit
    frame) and whose salts match the WAL header's (frames left from before a WAL restart do not)."""
    data = wal.read_bytes()
    if len(data) < 32:
        return 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits, offset = 0, 32
    while offset + 24 + page_size <= len(data):
        header = data[offset : offset + 24]
        if header[8:16] != salts:
            break
        if struct.unpack(">I", header[4:8])[0]:
            commits += 1
        offset += 24 + page_size
    return commits


def fresh_wal(fleet: StateFile) -> Path:
    """Empty the WAL and keep SQLite from checkpointing on its own, so its frames count transactions."""
    fleet.call_sync(lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 0").fetchone())
    fleet.call_sync(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    wal = Path(f"{fleet.path}-wal")
    assert commit_frames(wal) == 0
    return wal


async def queued_behind_a_gate(fleet: StateFile, jobs: list[Awaitable[Any]]) -> list[Any]:
    """Start ``jobs`` while the writer thread is held busy, so they are all waiting when it is free."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(fleet.call(lambda _conn: gate.wait(5)))
    futures = [asyncio.ensure_future(job) for job in jobs]
    await asyncio.sleep(0.05)  # the jobs reach the queue (the count below does not depend on it)
    gate.set()
    await asyncio.wait_for(blocker, 10)
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)


# ------------------------------------------------------------------------------------------ group commit


async def test_writes_of_many_devices_queued_together_commit_in_one_transaction(fleet: StateFile) -> None:
    views = [fleet.device(f"EMU{n:04d}") for n in range(20)]
    wal = fresh_wal(fleet)
    results = await queued_behind_a_gate(
        fleet, [view.commit([instance(1, 1, f"name-{view.key}")]) for view in views]
    )
    assert results == [None] * 20
    assert commit_frames(wal) == 1  # twenty devices, one transaction: one fsync
    for view in views:
        assert view.load().instances[(GROUP, 1)].values[0] == f"name-{view.key}"
    # The count is real: writes awaited one after another are one transaction each.
    for view in views[:3]:
        await view.commit([instance(1, 2, "again")])
    assert commit_frames(wal) == 4


async def test_outbox_settlements_of_many_devices_share_one_transaction(fleet: StateFile) -> None:
    views = [fleet.device(f"EMU{n:04d}") for n in range(10)]
    for view in views:
        await view.commit([instance(1, 1, "a"), instance(2, 1, "b")])
    wal = fresh_wal(fleet)
    settled = [ob.DeliveredUpTo(GROUP, 1, 1), ob.DeliveredUpTo(GROUP, 2, 1)]
    marked = await queued_behind_a_gate(fleet, [ob.mark_delivered(view, settled, 5.0) for view in views])
    assert marked == [2] * 10
    assert commit_frames(wal) == 1
    assert await fleet.pending_devices() == []


async def test_one_devices_refused_write_fails_alone(fleet: StateFile) -> None:
    good, bad, other = fleet.device("GOOD"), fleet.device("BAD"), fleet.device("OTHER")
    wal = fresh_wal(fleet)
    results = await queued_behind_a_gate(
        fleet,
        [
            good.commit([instance(1, 1, "good")]),
            bad.commit([instance(1, 1, "half"), DeviceValueWrite(3, 9, {1, 2})]),  # a set is not storable
            other.commit([instance(1, 1, "other")]),
            bad.commit([instance(2, 1, "bad's other write")]),
        ],
    )
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], StateError)
    assert commit_frames(wal) == 1
    assert set(bad.load().instances) == {(GROUP, 2)}  # the refused write left nothing, not even its row
    assert [r.instance_id for r in await bad.pending_outbox()] == [2]
    assert good.load().instances[(GROUP, 1)].values[0] == "good"
    assert other.load().instances[(GROUP, 1)].values[0] == "other"


# ------------------------------------------------------------------------------------ rows never mix


def dump(view: DeviceState) -> dict[str, Any]:
    """Everything a view can read of its device, through every reading method."""

    def raw(conn: sqlite3.Connection, key: str) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT object_id, instance_id, version, status, attempts, last_error FROM outbox "
            "WHERE device = ? ORDER BY id",
            (key,),
        ).fetchall()

    snapshot = view.load()
    return {
        "snapshot": (
            dict(snapshot.meta),
            dict(snapshot.device_values),
            {k: (r.version, r.deleted, dict(r.values), r.credential) for k, r in snapshot.instances.items()},
            dict(snapshot.memory_pages),
        ),
        "outbox": view.call_sync(raw),
        "backlog": ob.backlog_status_sync(view).as_dict(),
    }


async def test_rows_of_two_devices_never_mix(fleet: StateFile) -> None:
    """Every public method of a view, the outbox functions included, run on each of two devices that
    use the same object and instance ids: each step changes its own device and leaves the other as it
    was."""
    first, second = fleet.device("EMU0000000001"), fleet.device("EMU0000000002")

    async def steps(view: DeviceState, tag: str) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
        async def value(result: Any) -> Any:
            return result

        def now(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
            return lambda: value(fn())

        return [
            ("commit", lambda: view.commit([instance(1, 1, f"{tag}-1", credential=tag.encode())])),
            (
                "commit_sync",
                now(
                    lambda: view.commit_sync(
                        [
                            instance(2, 1, f"{tag}-2"),
                            instance(9, 1, f"{tag}-9"),
                            DeviceValueWrite(3, 2, tag),
                            MemoryPageWrite(0, tag.encode() * 8),
                        ]
                    )
                ),
            ),
            ("set_meta_sync", now(lambda: view.set_meta_sync({"serial_number": view.key, "tag": tag}))),
            ("transact", lambda: view.transact(lambda conn, key: None)),
            ("transact_sync", now(lambda: view.transact_sync(lambda conn, key: None))),
            ("commit again", lambda: view.commit([instance(1, 2, f"{tag}-1b")])),
            ("pending_versions", lambda: ob.pending_versions(view, GROUP)),
            ("record_failure", lambda: _record_failure_on_every_row(view)),
            ("mark_delivered", lambda: ob.mark_delivered(view, [ob.DeliveredUpTo(GROUP, 1, 2)], 7.0)),
            ("park_rejected", lambda: ob.park_rejected(view, ob.DeliveredUpTo(GROUP, 2, 1), "no", 8.0)),
            (
                "apply_reconcile_sync",
                now(
                    lambda: ob.apply_reconcile_sync(
                        view,
                        ob.ReconcileWrites(
                            bumps=[(GROUP, 1, 2, 3, {"v": 3})],
                            tombstones=[(GROUP, 5, 1, {"gone": True})],
                            repush=[(GROUP, 9, 1, {"v": 1})],
                        ),
                        9.0,
                    )
                ),
            ),
            ("backlog_status", lambda: ob.backlog_status(view)),
            ("pending_outbox", lambda: view.pending_outbox()),
            ("load", now(view.load)),
            ("call", lambda: view.call(lambda conn, key: key)),
            ("call_sync", now(lambda: view.call_sync(lambda conn, key: key))),
            ("reset_sync", now(lambda: view.reset_sync([instance(1, 4, f"{tag}-reset")], {"tag": tag}))),
        ]

    reads = {"load", "call", "call_sync", "pending_outbox", "backlog_status", "pending_versions"}
    no_ops = {"transact", "transact_sync"}  # their functions write nothing
    results: dict[str, dict[str, Any]] = {}
    for view, other, tag in ((first, second, "one"), (second, first, "two")):
        for name, step in await steps(view, tag):
            before_other, before_self = dump(other), dump(view)
            results.setdefault(tag, {})[name] = await step()
            assert dump(other) == before_other, f"{name} on {view.key} changed {other.key}"
            if name not in reads | no_ops:
                assert dump(view) != before_self, f"{name} on {view.key} changed nothing"
    for tag, view in (("one", first), ("two", second)):
        got = results[tag]
        assert got["call"] == got["call_sync"] == view.key
        assert got["pending_versions"] == {1: 2, 2: 1, 9: 1}
        assert got["record_failure"] == 4  # its own four pending rows, none of the other device's
        assert got["mark_delivered"] == 2
        assert got["park_rejected"] == 1
        # The bump applies (version 2 is this device's), the tombstone is new to this device (for the
        # second device, even though the first already has that tombstone), and instance 9's pending
        # row already covers the repush.
        assert got["apply_reconcile_sync"] == 2
        assert got["backlog_status"].pending == 3 and got["backlog_status"].rejected == 1
        assert got["load"].meta == {"serial_number": view.key, "tag": tag}
        snapshot = view.load()
        assert snapshot.meta == {"tag": tag}
        assert snapshot.device_values == {} and snapshot.memory_pages == {}
        assert snapshot.instances[(GROUP, 1)].values[0] == f"{tag}-reset"
        assert snapshot.instances[(GROUP, 2)].values[0] == f"{tag}-2"
        assert snapshot.instances[(GROUP, 5)].deleted
    assert fleet.devices() == [first.key, second.key]
    assert fleet.meta_of_all_sync("tag") == {first.key: "one", second.key: "two"}
    assert await fleet.pending_devices() == [first.key, second.key]


async def _record_failure_on_every_row(view: DeviceState) -> int:
    """Count a failure on every outbox row id of the file, both devices': only the view's own may change."""
    everything = await view.file.call(lambda conn: [i for (i,) in conn.execute("SELECT id FROM outbox")])
    return await ob.record_failure(view, everything, "store down", 50.0)


# ------------------------------------------------------------------------------------- closing


async def test_closing_a_view_leaves_the_others_working(fleet: StateFile) -> None:
    first, second = fleet.device("A"), fleet.device("B")
    await first.commit([DeviceValueWrite(3, 2, "a")])
    first.close()
    assert first.closed and not second.closed
    with pytest.raises(StateError, match="device 'A' is closed"):
        await first.commit([DeviceValueWrite(3, 2, "late")])
    with pytest.raises(StateError):
        first.load()
    await second.commit([DeviceValueWrite(3, 2, "b")])
    assert second.load().device_values == {(3, 2): "b"}
    assert fleet.device("A").load().device_values == {(3, 2): "a"}  # a new view of the same device


async def test_closing_the_file_fails_later_calls_of_every_view(tmp_path: Path) -> None:
    fleet = StateFile(tmp_path / "fleet.sqlite3", clock=lambda: 0.0)
    view = fleet.device("A")
    await view.commit([DeviceValueWrite(3, 2, "a")])
    fleet.close()
    fleet.close()  # twice is harmless
    assert view.closed
    for attempt in (
        lambda: view.commit_sync([DeviceValueWrite(3, 2, "late")]),
        view.load,
        lambda: fleet.device("B"),
        fleet.devices,
        lambda: fleet.meta_of_all_sync("profile"),
        lambda: fleet.seed_many_sync([]),
    ):
        with pytest.raises(StateError, match="closed"):
            attempt()
    with pytest.raises(StateError, match="closed"):
        await fleet.pending_devices()
    with pytest.raises(StateError, match="closed"):
        await view.commit([DeviceValueWrite(3, 2, "late")])


async def test_writes_queued_before_the_file_closes_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    fleet = StateFile(path, clock=lambda: 0.0)
    gate = threading.Event()
    blocker = asyncio.ensure_future(fleet.call(lambda _conn: gate.wait(5)))
    writes = [
        asyncio.ensure_future(fleet.device(f"D{n}").commit([DeviceValueWrite(3, 2, n)])) for n in range(5)
    ]
    await asyncio.sleep(0.05)
    closing = asyncio.get_running_loop().run_in_executor(None, fleet.close)
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *writes, closing), 10)
    reopened = StateFile(path, clock=lambda: 0.0)
    try:
        assert reopened.devices() == [f"D{n}" for n in range(5)]
    finally:
        reopened.close()


def test_bad_device_keys_are_refused_clearly(fleet: StateFile) -> None:
    for key in ("x" * 129, "line\nbreak", 7):
        with pytest.raises(StateError, match="device key"):
            fleet.device(key)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="device key"):
        fleet.seed_many_sync([DeviceSeed("tab\there", [], {})])
    assert fleet.devices() == []


# ------------------------------------------------------------------------------- seeding a fleet


def factory(key: str) -> DeviceSeed:
    """A few rows per device, as a fleet's start-up writes them."""
    return DeviceSeed(
        key,
        [
            DeviceValueWrite(3, 2, key),
            DeviceValueWrite(3, 0, "IoTize"),
            instance(0, 1, "admin", credential=b"\x01" * 48),
            instance(1, 1, "anonymous"),
        ],
        {"profile": "default", "serial_number": key},
    )


def test_seeding_10000_devices_in_one_transaction(
    fleet: StateFile, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [f"EMU{n:010d}" for n in range(10_000)]
    seeds = [factory(key) for key in keys]
    wal = fresh_wal(fleet)
    started = time.perf_counter()
    fleet.seed_many_sync(seeds)
    seeded = time.perf_counter() - started
    assert commit_frames(wal) == 1
    assert fleet.devices() == keys
    assert fleet.meta_of_all_sync("serial_number") == {key: key for key in keys}
    assert asyncio.run(fleet.pending_devices()) == keys

    started = time.perf_counter()
    snapshots = {key: fleet.device(key).load() for key in keys}
    loaded = time.perf_counter() - started
    for key in random.Random(15).sample(keys, 50):
        snapshot = snapshots[key]
        assert snapshot.device_values == {(3, 2): key, (3, 0): "IoTize"}
        assert snapshot.instances[(GROUP, 0)].credential == b"\x01" * 48
        assert snapshot.meta == {"profile": "default", "serial_number": key}
    fleet.call_sync(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    size = Path(fleet.path).stat().st_size
    with capsys.disabled():  # information only, never asserted
        sys.stdout.write(
            f"\n[fleet state] seed 10,000 devices (one transaction): {seeded:.2f} s; "
            f"open views + load each: {loaded:.2f} s; file: {size / 1e6:.1f} MB "
            f"({size / len(keys):.0f} B per device)\n"
        )


def test_seeding_is_all_or_nothing_and_names_the_device(fleet: StateFile) -> None:
    bad = DeviceSeed("EMU-BAD", [DeviceValueWrite(3, 2, {1, 2})], {})
    with pytest.raises(StateError, match="EMU-BAD"):
        fleet.seed_many_sync([factory("EMU-1"), bad, factory("EMU-2")])
    assert fleet.devices() == []
    fleet.seed_many_sync([factory("EMU-1"), ("EMU-2", [DeviceValueWrite(3, 2, "two")], {"k": "v"})])
    assert fleet.devices() == ["EMU-1", "EMU-2"]  # the file still works; an item may be a plain tuple
    assert fleet.device("EMU-2").load().meta == {"k": "v"}


# ------------------------------------------------------------------------------------------ the lock


def test_the_lock_refuses_a_second_owner_of_a_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    owner = StateFile(path, clock=lambda: 0.0, owner=True)
    try:
        owner.device("EMU1").commit_sync([DeviceValueWrite(3, 2, "x")])
        with pytest.raises(StateLockError, match="in use by process"):
            StateFile(path, clock=lambda: 0.0, owner=True)
        with pytest.raises(StateLockError):
            DeviceState(path, clock=lambda: 0.0, owner=True)
        reader = StateFile(path, clock=lambda: 0.0)  # not an owner: a reader such as `store status`
        try:
            assert reader.devices() == ["EMU1"]
        finally:
            reader.close()
    finally:
        owner.close()
    again = StateFile(path, clock=lambda: 0.0, owner=True)  # released on close
    again.close()


def test_a_fleet_file_is_not_opened_as_one_device(tmp_path: Path) -> None:
    """``serve --state FLEET_FILE`` must not add a device '' to a fleet's file: it is refused, untouched."""
    path = tmp_path / "fleet.sqlite3"
    fleet = StateFile(path, clock=lambda: 0.0)
    fleet.seed_many_sync([factory("EMU0000000007")])
    fleet.close()
    with pytest.raises(StateError, match="holds a fleet of devices \\(such as 'EMU0000000007'\\)"):
        DeviceState(path, clock=lambda: 0.0, owner=True)
    again = StateFile(path, clock=lambda: 0.0, owner=True)  # the refused open released the lock
    try:
        assert again.devices() == ["EMU0000000007"]
    finally:
        again.close()
