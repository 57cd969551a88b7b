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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tap_emulator.state import StateError, outbox
from tap_emulator.store import DeviceRecord, ManagementStore, MembershipOutcome, StoreError, StoreRejected
from tap_emulator.tree import ChangeEvent, DeviceTree

from .core import (
    PendingGroup,
    UnsafePayload,
    backoff_delay,
    coalesce,
    group_record,
    plan_reconcile,
    tombstone_payload,
)

__all__ = ["KILL_AFTER_ACK_ENV", "SyncSettings", "SyncStats", "SyncTask"]

log = logging.getLogger(__name__)

# Test hook: when set to 1, the process kills itself with SIGKILL right after the store acknowledges a
# push and before the outbox rows are marked (the crash window the at-least-once design must survive).
KILL_AFTER_ACK_ENV = "TAP_EMULATOR_SYNC_KILL_AFTER_ACK"


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """Tuning of the sync task; the defaults suit a real deployment, tests shorten them."""

    backoff_base: float = 0.5  # seconds: ceiling of the first retry delay
    backoff_cap: float = 30.0  # seconds: the ceiling never grows past this
    batch_rows: int = 500  # outbox rows read per round (coalesced into at most this many records)
    heartbeat: float = 60.0  # seconds between refreshes of the device's last_seen
    stop_drain_timeout: float = 2.0  # seconds `stop` waits for the backlog to drain


@dataclass(slots=True)
class SyncStats:
    """Counters since start, for logs and tests."""

    pushes: int = 0  # upsert batches the store acknowledged
    applied: int = 0  # records the store applied
    already_stored: int = 0  # records the store already held (duplicates after a crash, or stale)
    rejected: int = 0  # records parked as rejected
    failures: int = 0  # attempts that failed with the store unreachable
    reconciles: int = 0


def _kill_hook_from_environment() -> Callable[[], None] | None:
    if os.environ.get(KILL_AFTER_ACK_ENV) != "1":
        return None

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    return kill


class SyncTask:
    """Pushes one device's group changes to a management store; `start` it, then `stop` it."""

    def __init__(
        self,
        tree: DeviceTree,
        open_store: Callable[[], Awaitable[ManagementStore]],
        *,
        settings: SyncSettings = SyncSettings(),
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        after_acknowledged: Callable[[], None] | None = None,
        device_groups: Sequence[str] = (),
    ) -> None:
        self.tree = tree
        self.settings = settings
        self.stats = SyncStats()
        self.last_error: str | None = None
        self._open_store = open_store
        self._clock = clock
        self._draw = draw
        self._after_acknowledged = after_acknowledged or _kill_hook_from_environment()
        self._object_id = tree.group_object.id
        self._serial = tree.serial_number
        self._store: ManagementStore | None = None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._needs_reconcile = True
        self._device_sent_at: float | None = None
        self._device_rejected = False
        self._device_groups = tuple(device_groups)  # joined once, right after the device's first record
        self._groups_joined = not device_groups
        self._failures = 0
        self._attempted: tuple[int, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Subscribe to the tree's changes and start draining (reconciling first)."""
        if self._task is not None:
            raise RuntimeError("the sync task is already started")
        self._unsubscribe = self.tree.subscribe(self._on_change)
        self._task = asyncio.create_task(self._run(), name=f"sync:{self._serial}")

    async def stop(self) -> None:
        """Give the backlog a short chance to drain, then stop and close the store."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        if task is not None:
            self._stop_requested.set()
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.settings.stop_drain_timeout)
            except TimeoutError:
                pass
            except Exception:
                log.exception("the sync task failed")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()

    def _on_change(self, event: ChangeEvent) -> None:
        if event.object_id == self._object_id:
            self._wake.set()

    # ------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        while True:
            try:
                store = await self._connected_store()
                if self._needs_reconcile:
                    await self._reconcile(store)
                await self._refresh_device(store)
                more = await self._drain_once(store)
                if self._failures:
                    log.warning("management store reachable again after %d failed attempt(s)", self._failures)
                self._failures = 0
                self.last_error = None
            except Exception as error:
                if self._stop_requested.is_set():
                    return
                if isinstance(error, StoreError):
                    reason = str(error)
                    # The store may have lost what it held (a file deleted or replaced, a restored
                    # database): compare versions again before the next push.
                    self._needs_reconcile = True
                elif isinstance(error, StateError):  # the state logs its failures, once per episode
                    reason = f"state: {error}"
                else:  # keep the task alive, the rows stay pending
                    log.exception("the sync task failed; retrying")
                    reason = f"internal error: {type(error).__name__}"
                await self._back_off(reason)
                continue
            if more:
                continue
            if self._stop_requested.is_set():
                return
            await self._wait_for_change()

    async def _connected_store(self) -> ManagementStore:
        if self._store is None:
            self._store = await self._open_store()
        return self._store

    async def _wait_for_change(self) -> None:
        timeout = self.settings.heartbeat
        if self._device_sent_at is not None:
            timeout = max(0.0, self._device_sent_at + self.settings.heartbeat - self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _back_off(self, error: str) -> None:
        delay = backoff_delay(
            self._failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap, draw=self._draw
        )
        self._failures += 1
        self.stats.failures += 1
        self.last_error = error
        # One warning per outage; the retries are debug noise until the store answers again.
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "management store unavailable (%s); retrying in %.2f s", error, delay)
        try:
            # The rows that waited on this attempt (all pending ones when the store could not be reached).
            waiting = self._attempted or tuple(
                row.id for row in await self.tree.state.pending_outbox(self.settings.batch_rows)
            )
            await outbox.record_failure(self.tree.state, waiting, error, self._clock() + delay)
        except StateError:
            pass  # the state logs its failures (a full disk), once per episode
        except Exception:
            log.exception("could not record a failed delivery in the outbox")
        self._attempted = ()
        with contextlib.suppress(TimeoutError):  # a stop cuts the wait short
            await asyncio.wait_for(self._stop_requested.wait(), delay)

    # ------------------------------------------------------------------ device record

    async def _refresh_device(self, store: ManagementStore) -> None:
        now = self._clock()
        due = self._device_sent_at is None or now - self._device_sent_at >= self.settings.heartbeat
        if due and not self._device_rejected:
            await self._send_device(store, now)
        # After the device record, so the store knows the device; retried with backoff until it succeeds.
        if not (self._groups_joined or self._device_rejected or self._device_sent_at is None):
            await self._join_device_groups(store, datetime.fromtimestamp(now, UTC))

    async def _send_device(self, store: ManagementStore, now: float) -> None:
        identity = self.tree.device_identity()
        record = DeviceRecord(
            serial=self._serial,
            model=identity["model"],
            firmware=identity["firmware_version"],
            last_seen=datetime.fromtimestamp(now, UTC),
        )
        try:
            await store.upsert_device(record)
        except StoreRejected as rejection:
            log.error("the management store refuses the device record: %s", rejection.reason)
            self._device_rejected = True
        self._device_sent_at = now

    @property
    def device_groups_joined(self) -> bool:
        """Whether the profile's device groups were handed to the store (joined, or already joined once)."""
        return self._groups_joined

    async def _join_device_groups(self, store: ManagementStore, at: datetime) -> None:
        """Join the device groups the profile names; the store does it only on the device's first sync."""
        try:
            outcomes = await store.join_profile_groups(self._serial, self._device_groups, at)
        except StoreRejected as rejection:
            log.error("the management store refuses the profile's device groups: %s", rejection.reason)
            outcomes = {}
        self._groups_joined = True
        full = sorted(group for group, outcome in outcomes.items() if outcome is MembershipOutcome.FULL)
        if full:
            log.warning("device groups full, not joined: %s", ", ".join(full))

    # ------------------------------------------------------------------ reconcile

    async def _reconcile(self, store: ManagementStore) -> None:
        """Pull the store's versions, then make the device's state newer wherever it must win."""
        stored = await store.group_versions(self._serial)
        pending = await outbox.pending_versions(self.tree.state, self._object_id)
        # From here to the end nothing awaits: the tree cannot change while the plan is made and applied.
        local: dict[int, int] = {}
        payloads = {}
        for group_id in {*self.tree.instance_ids(self._object_id), *stored}:
            payload = self.tree.outbox_payload(self._object_id, group_id)
            if payload is None or (payload["deleted"] and group_id not in stored):
                continue
            local[group_id] = payload["version"]
            payloads[group_id] = payload
        plan = plan_reconcile(local, stored, pending, int(self._clock() * 1000))
        self.stats.reconciles += 1
        self._needs_reconcile = False
        if not plan:
            return
        writes = outbox.ReconcileWrites(
            bumps=[
                (self._object_id, gid, old, new, {**payloads[gid], "version": new})
                for gid, (old, new) in sorted(plan.bumps.items())
            ],
            tombstones=[
                (self._object_id, gid, version, tombstone_payload(self._object_id, gid, version))
                for gid, version in sorted(plan.tombstones.items())
            ],
            repush=[(self._object_id, gid, local[gid], payloads[gid]) for gid in sorted(plan.repush)],
        )
        queued = self.tree.apply_reconcile(writes, self._clock())  # blocking: see DeviceTree.apply_reconcile
        log.info(
            "reconciled with the store: %d re-versioned, %d tombstoned, %d re-queued (%d outbox rows)",
            len(plan.bumps),
            len(plan.tombstones),
            len(plan.repush),
            queued,
        )

    # ------------------------------------------------------------------ drain

    async def _drain_once(self, store: ManagementStore) -> bool:
        """Push one batch; True when more may be waiting."""
        state = self.tree.state
        rows = await state.pending_outbox(self.settings.batch_rows)
        if not rows:
            return False
        groups: list[PendingGroup] = []
        records = []
        pending = coalesce(rows)
        others = [g for g in pending if g.object_id != self._object_id]
        if others:
            # The management store holds groups only: rows of other objects (the LwM2M Security and
            # Server accounts) have nowhere to go and settle locally, instead of parking as rejected.
            await outbox.mark_delivered(
                state,
                [outbox.DeliveredUpTo(g.object_id, g.instance_id, g.version) for g in others],
                self._clock(),
            )
        for group in pending:
            if group.object_id != self._object_id:
                continue
            try:
                records.append(group_record(self._serial, group.payload, group.changed_at))
            except UnsafePayload as error:
                await self._park(group, f"not sent: {error}")
                continue
            groups.append(group)
        if not records:
            return True
        self._attempted = tuple(row_id for group in groups for row_id in group.row_ids)
        try:
            applied = await store.upsert_groups(records)
        except StoreRejected as rejection:
            self._attempted = ()
            index = rejection.record_index
            if index is None and len(groups) > 1:
                return await self._push_one_by_one(store, groups)
            await self._park(groups[index or 0], rejection.reason)
            return True
        self._attempted = ()
        self.stats.pushes += 1
        if self._after_acknowledged is not None:
            self._after_acknowledged()
        await self._settle(store, groups, applied)
        return len(rows) >= self.settings.batch_rows

    async def _push_one_by_one(self, store: ManagementStore, groups: list[PendingGroup]) -> bool:
        """A rejection that names no record: find the offender(s) by pushing each record alone."""
        for group in groups:
            record = group_record(self._serial, group.payload, group.changed_at)
            self._attempted = group.row_ids
            try:
                applied = await store.upsert_groups([record])
            except StoreRejected as rejection:
                self._attempted = ()
                await self._park(group, rejection.reason)
                continue
            self._attempted = ()
            self.stats.pushes += 1
            if self._after_acknowledged is not None:
                self._after_acknowledged()
            await self._settle(store, [group], applied)
        return True

    async def _settle(self, store: ManagementStore, groups: list[PendingGroup], applied: list[bool]) -> None:
        settled = [outbox.DeliveredUpTo(g.object_id, g.instance_id, g.version) for g in groups]
        await outbox.mark_delivered(self.tree.state, settled, self._clock())
        held = [group for group, was_applied in zip(groups, applied, strict=True) if not was_applied]
        self.stats.applied += len(groups) - len(held)
        self.stats.already_stored += len(held)
        if held:
            # Already held: a replay after a crash (same version), or the store is ahead of the device.
            stored = await store.group_versions(self._serial)
            if any(stored.get(group.instance_id, 0) > group.version for group in held):
                log.warning("the store holds newer versions than the device; reconciling")
                self._needs_reconcile = True
        log.debug(
            "pushed %d group(s): %d applied, %d already stored",
            len(groups),
            len(groups) - len(held),
            len(held),
        )

    async def _park(self, group: PendingGroup, reason: str) -> None:
        log.error(
            "the store rejects group %d version %d; parked: %s", group.instance_id, group.version, reason
        )
        self.stats.rejected += 1
        await outbox.park_rejected(
            self.tree.state,
            outbox.DeliveredUpTo(group.object_id, group.instance_id, group.version),
            reason,
            self._clock(),
        )
