"""The key-derivation worker: a separate, low-priority process that derives exactly what a thread would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tap_emulator.security import credential_from_password
from tap_emulator.security.worker import LOWEST_PRIORITY, DerivationWorker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def worker() -> AsyncIterator[DerivationWorker]:
    derivations = DerivationWorker()
    await derivations.start()
    try:
        yield derivations
    finally:
        derivations.close()


def _niceness() -> int:
    return os.nice(0)


async def test_runs_in_another_process_at_the_lowest_priority(worker: DerivationWorker) -> None:
    pid = await worker.start()
    assert pid != os.getpid()
    assert await worker(_niceness) == min(19, os.nice(0) + LOWEST_PRIORITY)


async def test_derives_the_same_credential_as_the_engine_in_process(worker: DerivationWorker) -> None:
    salt = bytes.fromhex("01020304")
    remote = await worker(credential_from_password, "admin", salt, 5000)
    assert remote == credential_from_password("admin", salt, 5000)
    assert remote.scram is not None
    assert remote.scram.stored_key.hex() == "1b0469eeca2aa2e7a310a55369602047"


async def test_a_dead_worker_is_replaced(worker: DerivationWorker) -> None:
    first = await worker.start()
    os.kill(first, 9)
    salt = bytes.fromhex("deadbeef")
    credential = await worker(credential_from_password, "supervisor", salt, 1000)
    assert credential == credential_from_password("supervisor", salt, 1000)
    assert await worker.start() != first


def test_the_worker_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    """A server killed with SIGKILL leaves no worker behind (it would hold the server's pipes open)."""
    script = tmp_path / "server.py"
    script.write_text(
        "import asyncio\n"
        "from tap_emulator.security.worker import DerivationWorker\n"
        "async def main():\n"
        "    worker = DerivationWorker()\n"
        "    print(await worker.start(), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        worker_pid = int(server.stdout.readline())
        server.kill()
        server.wait(timeout=10)
        # The worker shares the server's stdout: end-of-file there means the worker has exited too.
        assert server.stdout.read() == ""
    finally:
        if server.poll() is None:
            server.kill()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(worker_pid, 0)
            time.sleep(0.05)
