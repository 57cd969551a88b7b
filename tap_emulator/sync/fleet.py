"""The fleet's sync: ONE asyncio task drains the outboxes of any number of devices into the management store.

A fleet of thousands of devices in one process cannot afford a task, a timer and a store round trip per
device (issue 15). `FleetSync` keeps, instead, a few ordered sets of device serials: the devices to
reconcile, whose first device record is owed, that still join the profile's device groups, and whose
outbox may hold work (the dirty set, fed by the devices' change events). Each round takes up to one
batch from each set and makes one store call for it: `group_versions_many` for the reconciles,
`upsert_devices` for device records, `join_profile_groups_many`, and `upsert_groups` with the records of
many devices. Heartbeats are a heap of due times on each device's own phase, drawn once across the
period, so a fleet started at once does not refresh every device record at the same moment ever after;
the devices due within a small slack are sent together. A store outage backs the whole task off (one
store, one backoff) and makes every device reconcile again; a device whose own state fails backs off
alone. The per-device rules themselves are `DeviceSync`'s, shared with the one-device `SyncTask`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tap_emulator.model import DeviceModel, default_model
from tap_emulator.state import StateError
from tap_emulator.store import ManagementStore, StoreRejected
from tap_emulator.tree import ChangeEvent
from tap_emulator.tree.handlers.group import GroupHandler

from .core import backoff_delay, next_heartbeat
from .device import (
    DEFAULT_SETTINGS,
    DeviceSync,
    Outgoing,
    SyncSettings,
    kill_hook_from_environment,
    push,
)
from .loop import StoreLoop
from .subject import SyncSubject

__all__ = ["HEARTBEAT_SLACK", "FleetSync"]

log = logging.getLogger(__name__)

# Heartbeats due within this fraction of the period are sent with the ones due now (fewer round trips;
# each device keeps its phase, so sending a little early never makes them bunch up).
HEARTBEAT_SLACK = 0.05
# Devices whose outboxes are read at once while a batch is filled (local reads, queued together).
_READ_CHUNK = 64
_FIRST_GUESS_RECORDS = 4  # records per device assumed before any was read in a round


@dataclass(slots=True)
class _Member:
    """A device of the fleet: its sync steps and what the fleet schedules for it."""

    sync: DeviceSync
    unsubscribe: Callable[[], None]
    heartbeat_due: float | None = None
    failures: int = 0  # consecutive failures of the device's own state
    retry_at: float = 0.0


class FleetSync(StoreLoop):
    """Pushes every added device's group changes to one management store; `start`, `add`, `stop`."""

    task_name = "fleet sync task"

    def __init__(
        self,
        open_store: Callable[[], Awaitable[ManagementStore]],
        *,
        settings: SyncSettings = DEFAULT_SETTINGS,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        device_groups: Sequence[str] = (),
        model: DeviceModel | None = None,
        after_acknowledged: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(open_store, settings=settings, clock=clock, draw=draw)
        self._device_groups = tuple(device_groups)
        self._after_acknowledged = after_acknowledged or kill_hook_from_environment()
        group_object = (model or default_model()).object_by_alias(GroupHandler.alias)
        if group_object is None:
            raise ValueError("the model has no group object (1025)")
        self._group_object = group_object
        self._object_id = group_object.id
        self._members: dict[str, _Member] = {}
        # Ordered sets (dicts of None): oldest first, so no device waits behind newer ones.
        self._unreconciled: dict[str, None] = {}
        self._unsent: dict[str, None] = {}  # reconciled, first device record owed
        self._joining: dict[str, None] = {}
        self._dirty: dict[str, None] = {}
        self._backing_off: dict[str, float] = {}  # serial -> retry_at, devices whose state failed
        self._heartbeats: list[tuple[float, str]] = []  # heap; an entry is stale unless it is the due
        self._store_error: str | None = None

    # ------------------------------------------------------------------ devices

    def add(self, subject: SyncSubject) -> None:
        """Sync one more device (before or after `start`): reconciled first, then drained."""
        serial = subject.serial_number
        if serial in self._members:
            raise ValueError(f"device {serial!r} is already synced")
        sync = DeviceSync(
            subject,
            self._group_object,
            stats=self.stats,
            clock=self._clock,
            join_device_groups=bool(self._device_groups),
        )

        def changed(event: ChangeEvent) -> None:
            if event.object_id == self._object_id:
                self._dirty[serial] = None
                self._wake.set()

        self._members[serial] = _Member(sync, subject.subscribe(changed))
        self._unreconciled[serial] = None
        self._dirty[serial] = None
        self._wake.set()

    def remove(self, serial: str) -> None:
        """Stop syncing a device; its pending rows stay in its outbox."""
        member = self._members.pop(serial, None)
        if member is None:
            raise KeyError(serial)
        member.unsubscribe()
        for pending in (self._unreconciled, self._unsent, self._joining, self._dirty, self._backing_off):
            pending.pop(serial, None)

    def __len__(self) -> int:
        return len(self._members)

    def last_error(self, serial: str) -> str | None:
        """Why the device's last attempt failed: its own state's error, else the store's; None when
        the last attempt succeeded. KeyError for a device not added."""
        return self._members[serial].sync.last_error or self._store_error

    def device_groups_joined(self, serial: str) -> bool:
        return self._members[serial].sync.groups_joined

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._start_task("sync:fleet")

    def _unsubscribe_all(self) -> None:
        for member in self._members.values():
            member.unsubscribe()

    # ------------------------------------------------------------------ one attempt (StoreLoop)

    async def _attempt(self, store: ManagementStore) -> bool:
        return await self._round(store)

    def _store_lost(self) -> None:
        # The store may have lost what it held (a file replaced, a restored database): every device
        # compares versions again before its next push.
        for serial, member in self._members.items():
            member.sync.needs_reconcile = True
            self._unreconciled[serial] = None

    def _set_store_error(self, error: str | None) -> None:
        self._store_error = error

    async def _round(self, store: ManagementStore) -> bool:
        """One batch of each kind of work; True when more may be waiting now."""
        now = self._clock()
        more = await self._reconcile_some(store, now)
        more = await self._send_device_records(store, now) or more
        more = await self._join_device_groups(store, now) or more
        return await self._drain_some(store, now) or more

    def _ready(self, serials: Iterable[str], now: float, limit: int) -> Iterator[_Member]:
        """Up to `limit` members of `serials`, oldest first, skipping those whose state backs off."""
        taken = 0
        for serial in serials:
            if taken >= limit:
                return
            retry_at = self._backing_off.get(serial)
            member = self._members.get(serial)
            if member is None or (retry_at is not None and retry_at > now):
                continue
            taken += 1
            yield member

    async def _wait_for_work(self) -> None:
        now = self._clock()
        deadlines = list(self._backing_off.values())
        while self._heartbeats:
            due, serial = self._heartbeats[0]
            member = self._members.get(serial)
            if member is not None and member.heartbeat_due == due:
                deadlines.append(due - HEARTBEAT_SLACK * self.settings.heartbeat)
                break
            heapq.heappop(self._heartbeats)  # stale: sent since, or the device was removed
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _record_failure(self, error: str, next_attempt_at: float) -> None:
        # The rows that waited on this attempt: those of the push in flight, else the pending rows of
        # the oldest dirty devices, as many as one batch (a bounded cost however large the fleet).
        in_flight = [m.sync for m in self._members.values() if m.sync.attempted]
        if in_flight:
            await asyncio.gather(
                *(sync.record_failure(error, next_attempt_at, self.settings.batch_rows) for sync in in_flight)
            )
            return
        budget = self.settings.batch_rows
        for serial in list(self._dirty):
            member = self._members.get(serial)
            if member is not None and budget > 0:
                budget -= await member.sync.record_failure(error, next_attempt_at, budget)
            if budget <= 0:
                break

    def _device_failed(self, member: _Member, error: Exception) -> None:
        """One device's own state failed: that device backs off alone, the others go on."""
        serial = member.sync.serial
        if isinstance(error, StateError):  # the state logs its failures, once per episode
            reason = f"state: {error}"
        else:
            log.error("the sync of %s failed; retrying", serial, exc_info=error)
            reason = f"internal error: {type(error).__name__}"
        delay = backoff_delay(
            member.failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap, draw=self._draw
        )
        member.failures += 1
        member.retry_at = self._clock() + delay
        member.sync.last_error = reason
        self._backing_off[serial] = member.retry_at

    def _device_succeeded(self, member: _Member) -> None:
        if member.failures:
            member.failures = 0
            member.sync.last_error = None
            self._backing_off.pop(member.sync.serial, None)

    # ------------------------------------------------------------------ reconcile

    async def _reconcile_some(self, store: ManagementStore, now: float) -> bool:
        chunk = list(self._ready(self._unreconciled, now, self.settings.batch_rows))
        if not chunk:
            return False
        versions = await store.group_versions_many([member.sync.serial for member in chunk])
        results = await asyncio.gather(
            *(member.sync.reconcile(versions[member.sync.serial]) for member in chunk), return_exceptions=True
        )
        for member, result in zip(chunk, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self._device_failed(member, result)
                continue
            self._device_succeeded(member)
            serial = member.sync.serial
            self._unreconciled.pop(serial, None)
            if member.sync.device_sent_at is None and not member.sync.device_rejected:
                self._unsent[serial] = None
        return True

    # ------------------------------------------------------------------ device records and device groups

    def _due_heartbeats(self, now: float, limit: int) -> list[_Member]:
        horizon = now + HEARTBEAT_SLACK * self.settings.heartbeat
        due: list[_Member] = []
        while self._heartbeats and len(due) < limit and self._heartbeats[0][0] <= horizon:
            when, serial = heapq.heappop(self._heartbeats)
            member = self._members.get(serial)
            if member is not None and member.heartbeat_due == when:
                due.append(member)
        return due

    async def _send_device_records(self, store: ManagementStore, now: float) -> bool:
        limit = self.settings.batch_rows
        first = [self._members[serial] for serial in list(self._unsent)[:limit]]
        batch = first + self._due_heartbeats(now, limit - len(first))
        if not batch:
            return False
        try:
            await store.upsert_devices([member.sync.device_record(now) for member in batch])
        except StoreRejected as rejection:
            refused = rejection.record_index
            if refused is None and len(batch) > 1:
                await self._send_device_records_alone(store, batch, now)
                return True
            self._device_refused(batch[refused or 0], rejection.reason, now)
            self._heartbeats_again(batch)  # the others are sent in the next round
            return True
        except BaseException:
            self._heartbeats_again(batch)  # the first records stay owed in _unsent
            raise
        for member in batch:
            self._device_sent(member, now)
        return True

    def _heartbeats_again(self, batch: Sequence[_Member]) -> None:
        """Heartbeats taken off the heap but not sent: back on it, still due (on their own phase)."""
        for member in batch:
            if member.heartbeat_due is not None and member.sync.serial not in self._unsent:
                heapq.heappush(self._heartbeats, (member.heartbeat_due, member.sync.serial))

    async def _send_device_records_alone(
        self, store: ManagementStore, batch: list[_Member], now: float
    ) -> None:
        """A refusal naming no record: find the offender(s) by sending each record alone."""
        for position, member in enumerate(batch):
            try:
                await store.upsert_device(member.sync.device_record(now))
            except StoreRejected as rejection:
                self._device_refused(member, rejection.reason, now)
            except BaseException:
                self._heartbeats_again(batch[position:])  # those not sent yet
                raise
            else:
                self._device_sent(member, now)

    def _device_sent(self, member: _Member, now: float) -> None:
        sync = member.sync
        serial = sync.serial
        period = self.settings.heartbeat
        if member.heartbeat_due is None:
            # The first record: the device's phase is drawn once, uniform over the period but past twice
            # the slack, so the early window never takes the heartbeat right after the first record.
            member.heartbeat_due = now + period * (
                2 * HEARTBEAT_SLACK + (1 - 2 * HEARTBEAT_SLACK) * self._draw()
            )
        else:
            member.heartbeat_due = next_heartbeat(member.heartbeat_due, now, period)
        heapq.heappush(self._heartbeats, (member.heartbeat_due, serial))
        self._unsent.pop(serial, None)
        sync.device_sent(now)
        if sync.wants_device_groups:
            self._joining[serial] = None

    def _device_refused(self, member: _Member, reason: str, now: float) -> None:
        member.sync.device_refused(reason, now)
        member.heartbeat_due = None  # never sent again, as a single device's sync does
        self._unsent.pop(member.sync.serial, None)

    async def _join_device_groups(self, store: ManagementStore, now: float) -> bool:
        chunk = [self._members[serial] for serial in list(self._joining)[: self.settings.batch_rows]]
        if not chunk:
            return False
        at = datetime.fromtimestamp(now, UTC)
        serials = [member.sync.serial for member in chunk]
        try:
            outcomes = await store.join_profile_groups_many(serials, self._device_groups, at)
        except StoreRejected as rejection:
            if len(chunk) > 1:  # narrow it down: each device alone
                for member in chunk:
                    try:
                        alone = await store.join_profile_groups(member.sync.serial, self._device_groups, at)
                    except StoreRejected as refused:
                        member.sync.device_groups_refused(refused.reason)
                    else:
                        member.sync.device_groups_done(alone)
                    self._joining.pop(member.sync.serial, None)
                return True
            chunk[0].sync.device_groups_refused(rejection.reason)
            outcomes = {}
        for member in chunk:
            member.sync.device_groups_done(outcomes.get(member.sync.serial, {}))
            self._joining.pop(member.sync.serial, None)
        return True

    # ------------------------------------------------------------------ drain

    async def _drain_some(self, store: ManagementStore, now: float) -> bool:
        """Fill one batch with the records of as many dirty devices as fit, and push it in one call."""
        limit = self.settings.batch_rows
        shares: list[Outgoing] = []
        taken = 0
        worked = False
        # A snapshot: change events add to the dirty set while the reads below are awaited.
        dirty = list(self._dirty)
        candidates = (m for m in self._ready(dirty, now, len(dirty)) if not m.sync.needs_reconcile)
        while taken < limit:
            per_device = -(-taken // len(shares)) if shares else _FIRST_GUESS_RECORDS
            chunk = list(
                itertools.islice(candidates, max(1, min(_READ_CHUNK, (limit - taken) // per_device)))
            )
            if not chunk:
                break
            worked = True
            for member in chunk:
                # Out of the dirty set before its outbox is read: a change committed after the read
                # puts it back, one committed before is in what the read returns.
                self._dirty.pop(member.sync.serial, None)
            reads = await asyncio.gather(
                *(member.sync.outgoing(limit - taken) for member in chunk), return_exceptions=True
            )
            for member, share in zip(chunk, reads, strict=True):
                serial = member.sync.serial
                if isinstance(share, BaseException):
                    if not isinstance(share, Exception):
                        raise share
                    self._device_failed(member, share)
                    self._mark_dirty(serial)
                elif share is None:
                    self._device_succeeded(member)
                elif not share.records:  # everything read settled or parked locally: read again
                    self._mark_dirty(serial)
                elif taken + len(share.records) > limit:
                    self._mark_dirty(serial)  # no room left in this batch: the next one
                else:
                    shares.append(share)
                    taken += len(share.records)
        if not shares:
            return worked
        try:
            outcome = await push(store, shares, self.stats, self._after_acknowledged)
        except BaseException:
            for share in shares:
                self._mark_dirty(share.device.serial)
            raise
        for share in shares:
            serial = share.device.serial
            kept = self._members.get(serial)
            if kept is None:  # removed meanwhile
                continue
            member = kept
            error = outcome.failed.get(share.device)
            if error is not None:
                self._device_failed(member, error)
            else:
                self._device_succeeded(member)
            if error is not None or outcome.refused or share.more:
                self._mark_dirty(serial)
            if share.device.needs_reconcile:
                self._unreconciled[serial] = None
        return True

    def _mark_dirty(self, serial: str) -> None:
        if serial in self._members:  # not a device removed while its round was in flight
            self._dirty[serial] = None
