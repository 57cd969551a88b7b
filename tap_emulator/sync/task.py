"""The sync task: drains a device's outbox into the management store, at least once, without losing a change.

Delivery is at least once and the store's version-guarded upserts make it exactly once in effect: a row
is marked delivered only after the store confirmed it, so a crash in between means one more push, which
the store reports as already held. The task wakes on the tree's change events instead of polling,
pushes only the newest pending version of each group, backs off with full jitter while the store is
unreachable (the device keeps accepting writes: they wait in the outbox), and parks a change the store
refuses as invalid with its reason. Before its first push, and whenever the store turns out to hold a
newer version than the device, it reconciles: pull the store's versions, then re-version or tombstone
what the device must overwrite (pull before push), so a lost state file or a clock that went backwards
cannot make new changes look stale.

This module is the schedule of one device (its own asyncio task and heartbeat timer); the steps
themselves are `device.DeviceSync`'s and the retry loop `loop.StoreLoop`'s, both shared with the
fleet's `FleetSync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from tap_emulator.store import ManagementStore, StoreRejected
from tap_emulator.tree import ChangeEvent, DeviceTree

from .device import (
    DEFAULT_SETTINGS,
    KILL_AFTER_ACK_ENV,
    DeviceSync,
    SyncSettings,
    SyncStats,
    kill_hook_from_environment,
    push,
)
from .loop import StoreLoop

__all__ = ["KILL_AFTER_ACK_ENV", "SyncSettings", "SyncStats", "SyncTask"]

log = logging.getLogger(__name__)


class SyncTask(StoreLoop):
    """Pushes one device's group changes to a management store; `start` it, then `stop` it."""

    def __init__(
        self,
        tree: DeviceTree,
        open_store: Callable[[], Awaitable[ManagementStore]],
        *,
        settings: SyncSettings = DEFAULT_SETTINGS,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        after_acknowledged: Callable[[], None] | None = None,
        device_groups: Sequence[str] = (),
    ) -> None:
        super().__init__(open_store, settings=settings, clock=clock, draw=draw)
        self.tree = tree
        self._after_acknowledged = after_acknowledged or kill_hook_from_environment()
        self._object_id = tree.group_object.id
        self._serial = tree.serial_number
        self._device = DeviceSync(
            tree, tree.group_object, stats=self.stats, clock=clock, join_device_groups=bool(device_groups)
        )
        self._device_groups = tuple(device_groups)
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def last_error(self) -> str | None:
        """Why the last attempt failed (None once the store answers again)."""
        return self._device.last_error

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Subscribe to the tree's changes and start draining (reconciling first)."""
        if self._task is not None:
            raise RuntimeError("the sync task is already started")
        self._unsubscribe = self.tree.subscribe(self._on_change)
        self._start_task(f"sync:{self._serial}")

    def _unsubscribe_all(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_change(self, event: ChangeEvent) -> None:
        if event.object_id == self._object_id:
            self._wake.set()

    # ------------------------------------------------------------------ one attempt (StoreLoop)

    async def _attempt(self, store: ManagementStore) -> bool:
        device = self._device
        if device.needs_reconcile:
            await device.reconcile(await store.group_versions(self._serial))
        await self._refresh_device(store)
        return await self._drain_once(store)

    def _store_lost(self) -> None:
        # The store may have lost what it held (a file deleted or replaced, a restored database):
        # compare versions again before the next push.
        self._device.needs_reconcile = True

    def _set_store_error(self, error: str | None) -> None:
        self._device.last_error = error

    async def _record_failure(self, error: str, next_attempt_at: float) -> None:
        await self._device.record_failure(error, next_attempt_at, self.settings.batch_rows)

    async def _wait_for_work(self) -> None:
        timeout = self.settings.heartbeat
        sent_at = self._device.device_sent_at
        if sent_at is not None:
            timeout = max(0.0, sent_at + self.settings.heartbeat - self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # ------------------------------------------------------------------ device record

    async def _refresh_device(self, store: ManagementStore) -> None:
        device = self._device
        now = self._clock()
        due = device.device_sent_at is None or now - device.device_sent_at >= self.settings.heartbeat
        if due and not device.device_rejected:
            try:
                await store.upsert_device(device.device_record(now))
            except StoreRejected as rejection:
                device.device_refused(rejection.reason, now)
            else:
                device.device_sent(now)
        # After the device record, so the store knows the device; retried with backoff until it succeeds.
        if device.wants_device_groups:
            at = datetime.fromtimestamp(now, UTC)
            try:
                outcomes = await store.join_profile_groups(self._serial, self._device_groups, at)
            except StoreRejected as rejection:
                device.device_groups_refused(rejection.reason)
            else:
                device.device_groups_done(outcomes)

    @property
    def device_groups_joined(self) -> bool:
        """Whether the profile's device groups were handed to the store (joined, or already joined once)."""
        return self._device.groups_joined

    # ------------------------------------------------------------------ drain

    async def _drain_once(self, store: ManagementStore) -> bool:
        """Push one batch; True when more may be waiting."""
        share = await self._device.outgoing(self.settings.batch_rows)
        if share is None:
            return False
        if not share.records:
            return True
        outcome = await push(store, [share], self.stats, self._after_acknowledged)
        if outcome.failed:
            raise outcome.failed[self._device]
        return outcome.refused or share.more
