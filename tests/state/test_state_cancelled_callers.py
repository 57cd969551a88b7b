"""A caller that gives up on a write (its task cancelled, e.g. a CoAP client vanished) must not kill the
state's writer thread: the write is still committed, and later writes still complete."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tap_emulator.state import DeviceState, DeviceValueWrite


async def test_a_cancelled_commit_is_stored_and_the_writer_lives_on(tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "device.sqlite3", clock=time.time)
    try:
        release = threading.Event()
        blocker = asyncio.ensure_future(state.call(lambda _conn, _key: release.wait(5)))
        abandoned = asyncio.ensure_future(state.commit([DeviceValueWrite(3, 0, "abandoned")]))
        await asyncio.sleep(0.05)  # both jobs queued behind the blocker
        abandoned.cancel()
        release.set()
        await asyncio.wait_for(blocker, 5)
        await asyncio.wait_for(state.commit([DeviceValueWrite(3, 1, "later")]), 5)
        values = state.load().device_values
        assert values[(3, 0)] == "abandoned"
        assert values[(3, 1)] == "later"
    finally:
        state.close()


async def test_a_cancelled_call_does_not_stop_the_writer(tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "device.sqlite3", clock=time.time)
    try:
        release = threading.Event()
        blocker = asyncio.ensure_future(state.call(lambda _conn, _key: release.wait(5)))
        abandoned = asyncio.ensure_future(state.call(lambda conn, _key: conn.execute("SELECT 1").fetchone()))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        release.set()
        await asyncio.wait_for(blocker, 5)
        assert (
            await asyncio.wait_for(state.call(lambda conn, _key: conn.execute("SELECT 2").fetchone()[0]), 5)
            == 2
        )
    finally:
        state.close()
