"""The schedule both sync tasks share: one store connection, attempts, full-jitter backoff, a clean stop.

`SyncTask` (one device) and `FleetSync` (a fleet) differ in what one attempt does, in what an outage
leaves to reconcile and in what they wait for between attempts. How an attempt's failure is named,
backed off (one warning per outage, the retries at debug), recorded and ended by a stop, and how the
task stops and closes its store, is written once here.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tap_emulator.state import StateError
from tap_emulator.store import ManagementStore, StoreError

from .core import backoff_delay
from .device import SyncSettings, SyncStats

__all__ = ["StoreLoop"]

log = logging.getLogger(__name__)


class StoreLoop(abc.ABC):
    """An asyncio task that keeps attempting against one management store until stopped."""

    # What the log calls this task ("the sync task failed; retrying").
    task_name = "sync task"

    def __init__(
        self,
        open_store: Callable[[], Awaitable[ManagementStore]],
        *,
        settings: SyncSettings,
        clock: Callable[[], float],
        draw: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.stats = SyncStats()
        self._open_store = open_store
        self._clock = clock
        self._draw = draw
        self._store: ManagementStore | None = None
        self._failures = 0  # consecutive failed attempts against the store
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ what each schedule supplies

    @abc.abstractmethod
    async def _attempt(self, store: ManagementStore) -> bool:
        """One round of work; True when more may be waiting now."""

    @abc.abstractmethod
    async def _wait_for_work(self) -> None:
        """Until a change, a due heartbeat or a retry (``self._wake`` cuts it short)."""

    @abc.abstractmethod
    def _store_lost(self) -> None:
        """The store failed: it may have lost what it held, so whatever it holds is compared again."""

    @abc.abstractmethod
    def _set_store_error(self, error: str | None) -> None:
        """Why the store's last attempt failed; None once it answers again."""

    @abc.abstractmethod
    async def _record_failure(self, error: str, next_attempt_at: float) -> None:
        """Count the failed attempt on the outbox rows that waited on it (never raises)."""

    @abc.abstractmethod
    def _unsubscribe_all(self) -> None:
        """Stop hearing of changes (called first by `stop`)."""

    # ------------------------------------------------------------------ life cycle

    def _start_task(self, name: str) -> None:
        if self._task is not None:
            raise RuntimeError(f"the {self.task_name} is already started")
        self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        """Give the backlog `stop_drain_timeout` to drain, then stop and close the store."""
        self._unsubscribe_all()
        task, self._task = self._task, None
        if task is not None:
            self._stop_requested.set()
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.settings.stop_drain_timeout)
            except TimeoutError:
                pass
            except Exception:
                log.exception("the %s failed", self.task_name)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                store = await self._connected_store()
                more = await self._attempt(store)
                if self._failures:
                    log.warning("management store reachable again after %d failed attempt(s)", self._failures)
                self._failures = 0
                self._set_store_error(None)
            except Exception as error:
                if self._stop_requested.is_set():
                    return
                if isinstance(error, StoreError):
                    reason = str(error)
                    self._store_lost()
                elif isinstance(error, StateError):  # the state logs its failures, once per episode
                    reason = f"state: {error}"
                else:  # keep the task alive, the rows stay pending
                    log.exception("the %s failed; retrying", self.task_name)
                    reason = f"internal error: {type(error).__name__}"
                await self._back_off(reason)
                continue
            if more:
                continue
            if self._stop_requested.is_set():
                return
            await self._wait_for_work()

    async def _connected_store(self) -> ManagementStore:
        if self._store is None:
            self._store = await self._open_store()
        return self._store

    async def _back_off(self, error: str) -> None:
        delay = backoff_delay(
            self._failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap, draw=self._draw
        )
        self._failures += 1
        self.stats.failures += 1
        self._set_store_error(error)
        # One warning per outage; the retries are debug noise until the store answers again.
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "management store unavailable (%s); retrying in %.2f s", error, delay)
        await self._record_failure(error, self._clock() + delay)
        with contextlib.suppress(TimeoutError):  # a stop cuts the wait short
            await asyncio.wait_for(self._stop_requested.wait(), delay)
