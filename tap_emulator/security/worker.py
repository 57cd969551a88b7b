"""A low-priority worker process for key derivations, so they never steal the event loop's CPU.

Deriving credentials from an ASCII password runs two PBKDF2s (4096 SHA-1 and thousands of SHA-256
rounds). In threads of the server process they compete with the event loop for the machine's cores:
on two cores, 20 concurrent password changes raised GET p99 fourteenfold. A separate process at the
lowest CPU priority (nice 19) lets the kernel run the server first, so requests keep their latency while
derivations use whatever CPU is left.

The worker is started with ``spawn`` (never ``fork`` in a process that runs threads and an event loop),
warmed up once at start so the first password change does not pay the interpreter's start-up,
replaced if it dies, and it exits by itself when the server process is gone (even after SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["DerivationWorker"]

log = logging.getLogger(__name__)
T = TypeVar("T")

LOWEST_PRIORITY = 19


PARENT_CHECK_SECONDS = 0.5


def _start_worker(niceness: int, parent_pid: int) -> None:
    """Initializer of the worker process: lowest priority, and exit as soon as the server is gone.

    A server killed with SIGKILL cannot stop its worker, and the worker holds the server's stdout and
    stderr open: without this watch it would linger, and so would anything reading those pipes.
    """
    # A platform without nice(2) still derives, at normal priority.
    with contextlib.suppress(OSError):
        os.nice(niceness)

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()


def _ready() -> int:
    return os.getpid()


class DerivationWorker:
    """``await worker(fn, *args)`` runs a module-level function in the worker process."""

    def __init__(self, *, processes: int = 1, niceness: int = LOWEST_PRIORITY) -> None:
        self._processes = processes
        self._niceness = niceness
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._niceness, os.getpid()),
        )

    async def start(self) -> int:
        """Start the worker process now (not on the first password change); returns its pid."""
        pid: int = await self(_ready)
        return pid

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except BrokenProcessPool:
            log.warning("the key-derivation worker died; starting a new one")
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
