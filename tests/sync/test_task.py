"""SyncTask behaviour with injected clock and random draw, against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.state.outbox import backlog_status
from tap_emulator.store import ManagementStore, StoreError, open_store
from tap_emulator.sync import SyncSettings, SyncTask
from tap_emulator.tree import DeviceTree

from .conftest import GROUP_OBJECT, store_matches_device, wait_until

pytestmark = pytest.mark.timeout(30)

SERIAL = "EMU0000000001"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[DeviceTree]:
    opened = open_device(load_profile("default"), str(tmp_path / "device.sqlite3"))
    try:
        yield opened
    finally:
        opened.state.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ManagementStore]:
    opened = await open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    try:
        yield opened
    finally:
        await opened.close()


async def test_retries_follow_full_jitter_backoff_with_the_injected_draw_and_clock(
    tmp_path: Path, tree: DeviceTree, store: ManagementStore
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    outages = 4
    opened: list[int] = []
    next_attempts: list[float] = []

    async def flaky_open() -> ManagementStore:
        opened.append(1)
        if len(opened) <= outages:
            rows = await tree.state.pending_outbox()
            next_attempts.append(rows[0].next_attempt_at)
            raise StoreError("store unreachable (test)")
        return await open_store(url)

    settings = SyncSettings(backoff_base=0.02, backoff_cap=0.05)
    task = SyncTask(tree, flaky_open, settings=settings, clock=lambda: 5000.0, draw=lambda: 0.5)
    task.start()
    try:
        await wait_until(lambda: store_matches_device(store, tree), 10)
    finally:
        await task.stop()
    # Before each retry, the rows carry the next attempt time: clock + draw * min(cap, base * 2**n).
    assert next_attempts == pytest.approx([0.0, 5000.01, 5000.02, 5000.025])
    assert task.stats.failures == outages
    assert task.last_error is None
    status = await backlog_status(tree.state)
    assert status.pending == 0 and status.delivered == 3


async def test_a_payload_carrying_a_secret_is_parked_and_never_sent(
    tmp_path: Path, tree: DeviceTree, store: ManagementStore
) -> None:
    leaked = {
        "object_id": GROUP_OBJECT,
        "instance_id": 77,
        "version": 5,
        "deleted": False,
        "password_set": True,
        "values": {"name": "x", "password": "hunter2-leak"},
    }

    def inject(conn: sqlite3.Connection, key: str) -> None:
        conn.execute(
            "INSERT INTO outbox (device, object_id, instance_id, version, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            (key, GROUP_OBJECT, 77, 5, json.dumps(leaked)),
        )

    await tree.state.call(inject)
    task = SyncTask(tree, lambda: open_store(f"sqlite:///{tmp_path}/store.sqlite3"))
    task.start()
    try:
        await wait_until(lambda: store_matches_device(store, tree), 10)

        async def parked() -> bool:
            return (await backlog_status(tree.state)).rejected == 1

        await wait_until(parked, 5)
    finally:
        await task.stop()
    status = await backlog_status(tree.state)
    assert status.last_rejection is not None and "password" in status.last_rejection
    assert "hunter2" not in status.last_rejection
    assert await store.get_group(SERIAL, 77) is None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("store.sqlite3*"))
    assert b"hunter2" not in raw


async def test_stop_gives_the_backlog_a_chance_to_drain(
    tmp_path: Path, tree: DeviceTree, store: ManagementStore
) -> None:
    gate = asyncio.Event()

    async def slow_open() -> ManagementStore:
        await gate.wait()
        return await open_store(f"sqlite:///{tmp_path}/store.sqlite3")

    task = SyncTask(tree, slow_open, settings=SyncSettings(stop_drain_timeout=5.0))
    task.start()
    stopping = asyncio.create_task(task.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the drain
    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert await store_matches_device(store, tree)


async def test_stop_does_not_hang_on_an_unreachable_store(tree: DeviceTree) -> None:
    async def never() -> ManagementStore:
        raise StoreError("down")

    task = SyncTask(tree, never, settings=SyncSettings(backoff_base=10.0, stop_drain_timeout=5.0))
    task.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(task.stop(), 1.0)  # backing off: stop at once, the rows stay pending
    assert (await backlog_status(tree.state)).pending == 3


async def test_the_device_record_is_upserted_and_last_seen_refreshed_on_each_heartbeat(
    tmp_path: Path, tree: DeviceTree, store: ManagementStore
) -> None:
    now = [1_700_000_000.0]
    task = SyncTask(
        tree,
        lambda: open_store(f"sqlite:///{tmp_path}/store.sqlite3"),
        settings=SyncSettings(heartbeat=0.05),
        clock=lambda: now[0],
    )
    task.start()
    try:

        async def seen_at(moment: float) -> bool:
            devices = await store.list_devices()
            return bool(devices) and devices[0].last_seen.timestamp() == moment

        await wait_until(lambda: seen_at(1_700_000_000.0), 5)
        now[0] += 120.0
        await wait_until(lambda: seen_at(1_700_000_120.0), 5)
    finally:
        await task.stop()
    (device,) = await store.list_devices()
    assert (device.serial, device.model, device.firmware) == (SERIAL, "TAP 1.10 EMU", "1.118.0")


async def test_rows_of_objects_the_store_does_not_hold_settle_without_being_sent(
    tmp_path: Path, tree: DeviceTree, store: ManagementStore
) -> None:
    from tap_emulator.faces.coap.registration import ServerUri, ensure_account

    # An LwM2M server account: Security and Server instance 0, written through the tree (outbox rows).
    await ensure_account(tree, 0, ServerUri("127.0.0.1", 5683), 120)
    task = SyncTask(tree, lambda: open_store(f"sqlite:///{tmp_path}/store.sqlite3"))
    task.start()
    try:
        await wait_until(lambda: store_matches_device(store, tree), 10)

        async def settled() -> bool:
            return (await backlog_status(tree.state)).pending == 0

        await wait_until(settled, 5)
    finally:
        await task.stop()
    status = await backlog_status(tree.state)
    assert status.rejected == 0
    group = await store.get_group(SERIAL, 0)  # group 0 (anonymous) is untouched by Security instance 0
    assert group is not None and group.name == "anonymous"
