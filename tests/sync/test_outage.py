"""A PostgreSQL outage of several seconds, cut with a loopback TCP proxy, under continuous device writes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tap_emulator.model import Operation
from tap_emulator.state.outbox import backlog_status
from tap_emulator.store import open_store
from tap_emulator.tree import MAINTENANCE, Request, Status

from .conftest import (
    GROUP_OBJECT,
    TcpProxy,
    running_emulator,
    store_matches_device,
    tree_of,
    wait_until,
    with_parameters,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.postgres]

OUTAGE_SECONDS = 4.0
GROUPS = [65534, 65535, 0]


async def test_a_store_outage_under_continuous_writes_loses_nothing_and_converges_after(
    tmp_path: Path, pg_server: str, pg_schema: str
) -> None:
    target = urlsplit(pg_server)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.open()
    proxied = target._replace(
        netloc=f"{target.username + '@' if target.username else ''}127.0.0.1:{proxy.port}"
    )
    url = with_parameters(proxied.geturl(), options=f"-c search_path={pg_schema}")
    direct = await open_store(with_parameters(pg_server, options=f"-c search_path={pg_schema}"))
    try:
        async with running_emulator(tmp_path / "device.sqlite3", url) as emulator:
            tree = tree_of(emulator)
            sync = emulator.sync
            assert sync is not None
            await wait_until(lambda: store_matches_device(direct, tree), 10)
            written = 0
            refused = 0
            stop_writing = asyncio.Event()

            async def writer() -> None:
                nonlocal written, refused
                while not stop_writing.is_set():
                    group = GROUPS[written % len(GROUPS)]
                    response = await tree.handle(
                        Request(Operation.WRITE, GROUP_OBJECT, group, 0, f"w{written}", caller=MAINTENANCE)
                    )
                    written += 1
                    refused += response.status is not Status.CHANGED
                    await asyncio.sleep(0.01)

            writing = asyncio.create_task(writer())
            await asyncio.sleep(0.5)
            await proxy.cut()
            cut_at = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            during = await backlog_status(tree.state)
            failures_during = sync.stats.failures
            await proxy.open()  # same port: the store is back
            restored_at = time.monotonic()
            await asyncio.sleep(0.5)
            stop_writing.set()
            await writing
            converged_after = await wait_until(lambda: store_matches_device(direct, tree), 20)
            print(
                f"\noutage {restored_at - cut_at:.1f} s, {written} writes, backlog at the end of the outage "
                f"{during.pending}, {failures_during} failed attempts; converged "
                f"{time.monotonic() - restored_at:.2f} s after the store came back ({converged_after:.2f} s "
                "after the writes stopped)"
            )
            assert refused == 0  # the device kept accepting writes throughout
            assert written > 100
            assert failures_during >= 2  # retried, with backoff, while the store was away
            assert during.pending > 0 and during.last_error is not None
            assert during.oldest_pending_attempts >= 1
            final = await backlog_status(tree.state)
            assert final.pending == 0 and final.rejected == 0
            for group in GROUPS:
                stored = await direct.get_group(tree.serial_number, group)
                account = tree.account(group)
                assert stored is not None and account is not None and stored.name == account.name
    finally:
        await direct.close()
        await proxy.close()
