"""Delivered outbox rows are pruned: after many synced writes the state keeps one delivered row per group
(the last version the store confirmed), and a restart still reconciles with a store that lost everything.
Real state files, real stores (SQLite, and PostgreSQL where a server answers)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tap_emulator.model import Operation
from tap_emulator.state.outbox import backlog_status
from tap_emulator.store import ManagementStore, open_store
from tap_emulator.tree import MAINTENANCE, DeviceTree, Request, Status

from .conftest import running_emulator, store_matches_device, tree_of, wait_until

pytestmark = pytest.mark.timeout(90)

GROUPS = (0, 65534, 65535)
WRITES = 600


async def rename(tree: DeviceTree, group_id: int, name: str) -> None:
    response = await tree.handle(Request(Operation.WRITE, 1025, group_id, 0, name, caller=MAINTENANCE))
    assert response.status is Status.CHANGED


def outbox_rows(tree: DeviceTree) -> list[tuple[int, str]]:
    def read(conn: sqlite3.Connection, key: str) -> list[tuple[int, str]]:
        return conn.execute(
            "SELECT instance_id, status FROM outbox WHERE device = ? ORDER BY id", (key,)
        ).fetchall()

    rows: list[tuple[int, str]] = tree.state.call_sync(read)
    return rows


async def test_many_synced_writes_leave_one_delivered_row_per_group_and_reconcile_survives_a_restart(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    state = tmp_path / "device.sqlite3"
    async with running_emulator(state, store_url) as emulator:
        tree = tree_of(emulator)
        for start in range(0, WRITES, 30):
            await asyncio.gather(*(rename(tree, GROUPS[i % 3], f"n{i}") for i in range(start, start + 30)))
            await asyncio.sleep(0.01)  # let the sync task deliver as it goes
        await wait_until(lambda: store_matches_device(store, tree), 30)
        await wait_until(lambda: _no_pending(tree), 10)
        rows = outbox_rows(tree)
        # Without pruning: one row per write (600 and more, 350 bytes each) for ever.
        assert len(rows) <= len(GROUPS) and {status for _, status in rows} == {"delivered"}
        status = await backlog_status(tree.state)
        assert status.delivered >= WRITES and status.pending == 0
    # Restart against an empty store (a store restored from nothing): reconcile re-pushes every group
    # from the device's state, although the rows of those changes were pruned long ago.
    empty = f"sqlite:///{tmp_path}/empty-store.sqlite3"
    async with running_emulator(state, empty) as emulator:
        tree = tree_of(emulator)
        fresh = await open_store(empty)
        try:
            await wait_until(lambda: store_matches_device(fresh, tree), 10)
            assert (await fresh.get_group(tree.serial_number, GROUPS[(WRITES - 1) % 3])) is not None
        finally:
            await fresh.close()
        assert emulator.sync is not None and emulator.sync.stats.reconciles >= 1
    # And against the original store: nothing pending, the store still matches.
    async with running_emulator(state, store_url) as emulator:
        tree = tree_of(emulator)
        await rename(tree, 65534, "after-restart")
        await wait_until(lambda: store_matches_device(store, tree), 10)
        held = await store.get_group(tree.serial_number, 65534)
        assert held is not None and held.name == "after-restart"


async def _no_pending(tree: DeviceTree) -> bool:
    return not await tree.state.pending_outbox()
