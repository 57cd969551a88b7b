"""Outbox bookkeeping on a real state file: settling, failures, parking, backlog summary, reconcile writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tap_emulator.state import DeviceState, InstanceRow, InstanceWrite
from tap_emulator.state.outbox import (
    DeliveredUpTo,
    LocalVersions,
    ReconcileWrites,
    apply_reconcile_sync,
    backlog_status,
    backlog_status_sync,
    local_versions,
    mark_delivered,
    park_rejected,
    pending_versions,
    record_failure,
)

pytestmark = pytest.mark.timeout(30)

GROUP = 1025


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path, clock: Clock) -> Iterator[DeviceState]:
    opened = DeviceState(tmp_path / "device.sqlite3", clock=clock)
    try:
        yield opened
    finally:
        opened.close()


def change(instance_id: int, version: int, name: str = "n", credential: bytes | None = None) -> InstanceWrite:
    row = InstanceRow(GROUP, instance_id, version, False, {0: name}, credential)
    payload = {
        "object_id": GROUP,
        "instance_id": instance_id,
        "version": version,
        "deleted": False,
        "password_set": credential is not None,
        "values": {"name": name},
    }
    return InstanceWrite(row, payload)


def rows(state: DeviceState) -> list[tuple[int, int, str, int, str | None]]:
    def read(conn: sqlite3.Connection, key: str) -> list[tuple[int, int, str, int, str | None]]:
        return conn.execute(
            "SELECT instance_id, version, status, attempts, last_error FROM outbox "
            "WHERE device = ? ORDER BY id",
            (key,),
        ).fetchall()

    result: list[tuple[int, int, str, int, str | None]] = state.call_sync(read)
    return result


async def test_mark_delivered_settles_one_instance_up_to_a_version(state: DeviceState, clock: Clock) -> None:
    await state.commit([change(1, 10), change(1, 11), change(2, 12), change(1, 13)])
    clock.now = 1005.0
    assert await mark_delivered(state, [DeliveredUpTo(GROUP, 1, 11)], clock()) == 2
    # Settled rows are pruned down to the newest delivered one of the instance (version 11).
    assert [(iid, version, status) for iid, version, status, _, _ in rows(state)] == [
        (1, 11, "delivered"),
        (2, 12, "pending"),
        (1, 13, "pending"),
    ]
    assert await pending_versions(state, GROUP) == {1: 13, 2: 12}
    status = await backlog_status(state)
    assert (status.pending, status.pending_instances, status.delivered) == (2, 2, 2)
    assert status.last_delivered_at == 1005.0
    assert status.oldest_pending_at == 1000.0


async def test_local_versions_read_instances_and_pending_rows_of_one_object(state: DeviceState) -> None:
    other = InstanceWrite(InstanceRow(1024, 0, 3, False, {0: "x"}, None), None)
    gone = InstanceWrite(InstanceRow(GROUP, 4, 9, True, {}, None), None)
    await state.commit([change(1, 10), change(2, 11), change(1, 13), other, gone])
    await mark_delivered(state, [DeliveredUpTo(GROUP, 2, 11)], 1001.0)
    assert await local_versions(state, GROUP) == LocalVersions(
        instances={1: (13, False), 2: (11, False), 4: (9, True)},  # tombstones included
        pending={1: 13},  # the newest pending version only; instance 2 is delivered
    )
    assert await local_versions(state, 1099) == LocalVersions({}, {})


async def test_failures_count_attempts_and_keep_the_last_error(state: DeviceState, clock: Clock) -> None:
    await state.commit([change(1, 10), change(2, 11)])
    ids = [row.id for row in await state.pending_outbox()]
    await record_failure(state, ids, "store down", 1001.0)
    await record_failure(state, ids[:1], "store still down", 1003.0)
    assert [(attempts, error) for _, _, _, attempts, error in rows(state)] == [
        (2, "store still down"),
        (1, "store down"),
    ]
    status = backlog_status_sync(state)
    assert status.last_error == "store still down"
    assert status.oldest_pending_attempts == 2
    assert status.next_attempt_at == 1001.0
    # A delivered row is no longer counted as failing.
    await mark_delivered(state, [DeliveredUpTo(GROUP, 1, 10), DeliveredUpTo(GROUP, 2, 11)], 1004.0)
    await record_failure(state, ids, "late", 1005.0)
    assert backlog_status_sync(state).last_error is None
    assert [attempts for _, _, _, attempts, _ in rows(state)] == [2, 1]


async def test_a_parked_change_keeps_its_reason_and_leaves_other_rows_pending(state: DeviceState) -> None:
    await state.commit([change(1, 10), change(1, 11), change(2, 12)])
    await park_rejected(state, DeliveredUpTo(GROUP, 1, 11), "violates access_groups_name_length", 1002.0)
    assert [(status, error) for _, _, status, _, error in rows(state)] == [
        ("rejected", "violates access_groups_name_length"),
        ("rejected", "violates access_groups_name_length"),
        ("pending", None),
    ]
    status = backlog_status_sync(state)
    assert status.rejected == 2 and status.last_rejection == "violates access_groups_name_length"
    assert status.pending == 1


async def test_reconcile_writes_bump_tombstone_and_requeue_in_one_transaction(state: DeviceState) -> None:
    await state.commit([change(1, 10, credential=b"\x01" * 72), change(2, 20)])
    await mark_delivered(state, [DeliveredUpTo(GROUP, 1, 10), DeliveredUpTo(GROUP, 2, 20)], 1001.0)
    bumped = {"object_id": GROUP, "instance_id": 1, "version": 500, "deleted": False, "values": {}}
    writes = ReconcileWrites(
        bumps=[(GROUP, 1, 10, 500, bumped), (GROUP, 2, 19, 600, {"stale": True})],  # 2 moved on: skipped
        tombstones=[(GROUP, 7, 700, {"deleted": True}), (GROUP, 2, 800, {"deleted": True})],  # 2 exists
        repush=[(GROUP, 2, 20, {"again": True})],
    )
    assert apply_reconcile_sync(state, writes, 1002.0) == 3
    instances = state.load().instances
    assert instances[(GROUP, 1)].version == 500
    assert instances[(GROUP, 1)].credential == b"\x01" * 72  # the credential is untouched
    assert instances[(GROUP, 2)].version == 20 and not instances[(GROUP, 2)].deleted
    assert instances[(GROUP, 7)].deleted and instances[(GROUP, 7)].version == 700
    pending = await state.pending_outbox()
    assert [(row.instance_id, row.version) for row in pending] == [(1, 500), (7, 700), (2, 20)]
    assert pending[0].payload == json.loads(json.dumps(bumped))
    # A second identical reconcile queues nothing: the versions no longer match, rows already cover it.
    assert apply_reconcile_sync(state, writes, 1003.0) == 0


async def test_delivered_rows_are_pruned_to_the_newest_of_each_instance(
    state: DeviceState, clock: Clock
) -> None:
    version = 0
    for _ in range(200):  # many writes on three groups, each delivered soon after it was made
        for iid in (1, 2, 3):
            version += 1
            await state.commit([change(iid, version)])
        clock.now += 1
        await mark_delivered(
            state, [DeliveredUpTo(GROUP, iid, version - 3 + iid) for iid in (1, 2, 3)], clock()
        )
    await state.commit([change(1, version + 1)])
    kept = rows(state)
    assert len(kept) == 4  # one delivered row per group and the pending one, not 601
    assert [(iid, v, status) for iid, v, status, _, _ in kept if status == "delivered"] == [
        (1, version - 2, "delivered"),
        (2, version - 1, "delivered"),
        (3, version, "delivered"),
    ]
    status = await backlog_status(state)
    assert (status.pending, status.delivered, status.last_delivered_at) == (1, 600, clock())
