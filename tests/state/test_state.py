"""Durable device state: SQLite settings, round trips, outbox rows in the same transaction, group commit,
factory reset, and clear errors. (Survival of SIGKILL is proved end to end in tests/cli/test_serve.py.)
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.state import (
    DeviceState,
    DeviceValueWrite,
    InstanceRow,
    InstanceWrite,
    StateError,
)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[DeviceState]:
    opened = DeviceState(tmp_path / "device.sqlite3", clock=lambda: 1000.0)
    try:
        yield opened
    finally:
        opened.close()


def instance(
    iid: int, version: int, name: str, *, credential: bytes | None = None, deleted: bool = False
) -> InstanceWrite:
    row = InstanceRow(1025, iid, version, deleted, {0: name, 4: 300, 16: 2**32 - 1}, credential)
    return InstanceWrite(row, {"instance_id": iid, "version": version, "values": {"name": name}})


def test_a_file_state_uses_wal_and_full_sync(state: DeviceState) -> None:
    journal = state.file.call_sync(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    synchronous = state.file.call_sync(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    assert (journal, synchronous) == ("wal", 2)


async def test_changes_round_trip_through_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    first = DeviceState(path, clock=lambda: 5.0)
    await first.commit(
        [
            DeviceValueWrite(3, 2, "EMU1"),
            DeviceValueWrite(1024, 6, 0x18),
            DeviceValueWrite(1024, 99, b"\x00\xff"),
            instance(7, 10, "seven", credential=b"\x01\x02secret"),
        ]
    )
    first.close()
    second = DeviceState(path, clock=lambda: 6.0)
    try:
        snapshot = second.load()
        assert snapshot.device_values == {(3, 2): "EMU1", (1024, 6): 0x18, (1024, 99): b"\x00\xff"}
        row = snapshot.instances[(1025, 7)]
        assert (row.version, row.deleted, dict(row.values)) == (
            10,
            False,
            {0: "seven", 4: 300, 16: 2**32 - 1},
        )
        assert row.credential == b"\x01\x02secret"
        assert "secret" not in repr(row)
    finally:
        second.close()


async def test_every_instance_change_writes_its_outbox_row_in_the_same_transaction(
    state: DeviceState,
) -> None:
    await state.commit([instance(1, 1, "a"), DeviceValueWrite(3, 2, "x")])
    await state.commit([instance(1, 2, "b")])
    rows = await state.pending_outbox()
    assert [(r.instance_id, r.version, r.payload["values"]["name"], r.created_at) for r in rows] == [
        (1, 1, "a", 1000.0),
        (1, 2, "b", 1000.0),
    ]
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)


async def test_a_failed_change_leaves_neither_the_row_nor_the_outbox(state: DeviceState) -> None:
    bad = InstanceWrite(
        InstanceRow(1025, 2, 1, False, {0: {1, 2}}), {"instance_id": 2}
    )  # a set is not storable
    with pytest.raises(StateError):
        await state.commit([instance(1, 1, "ok"), bad])
    assert (1025, 1) not in state.load().instances
    assert await state.pending_outbox() == []


async def test_concurrent_writes_share_one_transaction(state: DeviceState) -> None:
    gate = threading.Event()
    batches: list[int] = []
    original = state.file._commit_batch

    def counting(conn: sqlite3.Connection, batch: list[Any]) -> None:
        batches.append(len(batch))
        original(conn, batch)

    state.file._commit_batch = counting  # type: ignore[method-assign]
    blocker = asyncio.ensure_future(state.call(lambda _conn, _key: gate.wait(5)))
    writes = [asyncio.ensure_future(state.commit([instance(i, 1, f"g{i}")])) for i in range(1, 21)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *writes), 10)
    assert batches == [20]
    assert len(state.load().instances) == 20


async def test_a_bad_write_does_not_fail_the_good_writes_committed_with_it(state: DeviceState) -> None:
    gate = threading.Event()
    blocker = asyncio.ensure_future(state.call(lambda _conn, _key: gate.wait(5)))
    good_before = asyncio.ensure_future(state.commit([instance(1, 1, "before")]))
    bad = asyncio.ensure_future(state.commit([instance(2, 1, "partial"), DeviceValueWrite(3, 9, {1, 2})]))
    good_after = asyncio.ensure_future(state.commit([instance(3, 1, "after")]))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, good_before, good_after), 10)
    with pytest.raises(StateError):
        await asyncio.wait_for(bad, 10)
    instances = state.load().instances
    assert set(instances) == {(1025, 1), (1025, 3)}
    assert [r.instance_id for r in await state.pending_outbox()] == [1, 3]


async def test_reset_rewrites_instances_and_drops_device_values_but_keeps_the_outbox(
    state: DeviceState,
) -> None:
    await state.commit([instance(1, 1, "a"), DeviceValueWrite(3, 2, "old")])
    state.set_meta_sync({"profile": "old"})
    state.reset_sync(
        [instance(1, 5, "", deleted=True), DeviceValueWrite(3, 2, "new")], {"profile": "default"}
    )
    snapshot = state.load()
    assert snapshot.meta == {"profile": "default"}
    assert snapshot.device_values == {(3, 2): "new"}
    assert snapshot.instances[(1025, 1)].deleted
    assert [r.version for r in await state.pending_outbox()] == [1, 5]


def test_memory_state_works_and_is_private(tmp_path: Path) -> None:
    first = DeviceState(":memory:", clock=lambda: 0.0)
    second = DeviceState(":memory:", clock=lambda: 0.0)
    try:
        first.commit_sync([DeviceValueWrite(3, 2, "only-here")])
        assert first.load().device_values == {(3, 2): "only-here"}
        assert second.load().device_values == {}
    finally:
        first.close()
        second.close()
    assert list(tmp_path.iterdir()) == []


def test_unusable_files_are_state_errors(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"not a database|file is not"):
        (tmp_path / "junk.sqlite3").write_bytes(b"this is not sqlite" * 100)
        DeviceState(tmp_path / "junk.sqlite3", clock=lambda: 0.0)
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StateError, match="newer"):
        DeviceState(newer, clock=lambda: 0.0)


async def test_a_closed_state_refuses_work(tmp_path: Path) -> None:
    closed = DeviceState(tmp_path / "device.sqlite3", clock=lambda: 0.0)
    closed.close()
    with pytest.raises(StateError):
        await closed.commit([DeviceValueWrite(3, 2, "late")])


async def test_outbox_payloads_are_stored_as_given(state: DeviceState) -> None:
    await state.commit([instance(4, 3, "four")])
    raw = state.call_sync(
        lambda conn, key: conn.execute("SELECT payload FROM outbox WHERE device = ?", (key,)).fetchone()[0]
    )
    assert json.loads(raw) == {"instance_id": 4, "version": 3, "values": {"name": "four"}}
