"""One device's side of the sync, written once for the one-device `SyncTask` and the many-device `FleetSync`.

A task decides *when* to talk to the store and with how many devices per round trip; everything about
*one* device lives here: reconciling it with what the store holds (pull before push), its device record
and the profile's device groups, turning its outbox into store records, settling what the store
confirmed, parking what it refused, and counting failed attempts on the rows that waited. `push` sends
the records of any number of devices in one `upsert_groups` call and settles each device's share, so a
single device's push and a fleet's batch follow the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tap_emulator.model import ObjectDef
from tap_emulator.state import StateError, outbox
from tap_emulator.store import DeviceRecord, GroupRecord, ManagementStore, MembershipOutcome, StoreRejected
from tap_emulator.tree import DeviceTree
from tap_emulator.tree.tree import stored_payload

from .core import (
    PendingGroup,
    UnsafePayload,
    coalesce,
    group_record,
    plan_reconcile,
    reconciled_versions,
    tombstone_payload,
)
from .subject import SyncSubject

__all__ = [
    "DEFAULT_SETTINGS",
    "KILL_AFTER_ACK_ENV",
    "DeviceSync",
    "Outgoing",
    "PushOutcome",
    "SyncSettings",
    "SyncStats",
    "kill_hook_from_environment",
    "push",
]

log = logging.getLogger("tap_emulator.sync.task")

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


DEFAULT_SETTINGS = SyncSettings()


@dataclass(slots=True)
class SyncStats:
    """Counters since start, for logs and tests."""

    pushes: int = 0  # upsert batches the store acknowledged
    applied: int = 0  # records the store applied
    already_stored: int = 0  # records the store already held (duplicates after a crash, or stale)
    rejected: int = 0  # records parked as rejected
    failures: int = 0  # attempts that failed with the store unreachable
    reconciles: int = 0


def kill_hook_from_environment() -> Callable[[], None] | None:
    """The KILL_AFTER_ACK_ENV hook, when the environment asks for it."""
    if os.environ.get(KILL_AFTER_ACK_ENV) != "1":
        return None

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    return kill


@dataclass(slots=True)
class Outgoing:
    """One device's share of a push: its coalesced groups and their records, in the same order."""

    device: DeviceSync
    groups: list[PendingGroup]
    records: list[GroupRecord]
    more: bool  # the device's outbox held a full read: more rows may wait behind these


@dataclass(slots=True)
class PushOutcome:
    """What a push left to its caller: devices whose own state failed (with the error), and whether the
    store refused a record (then the others of the batch are still pending: push again at once)."""

    failed: dict[DeviceSync, Exception]
    refused: bool = False


class DeviceSync:
    """The sync state and steps of one device; the caller owns the store, the schedule and the backoff."""

    def __init__(
        self,
        subject: SyncSubject,
        group_object: ObjectDef,
        *,
        stats: SyncStats,
        clock: Callable[[], float],
        join_device_groups: bool,
    ) -> None:
        self.subject = subject
        self.serial = subject.serial_number
        self.group_object = group_object
        self.object_id = group_object.id
        self.stats = stats
        self._clock = clock
        self.needs_reconcile = True
        self.device_sent_at: float | None = None
        self.device_rejected = False
        self.groups_joined = not join_device_groups  # joined once, right after the device's first record
        self.attempted: tuple[int, ...] = ()  # outbox rows of a push in flight
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"DeviceSync({self.serial!r})"

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, stored: Mapping[int, int]) -> None:
        """Make the device's state newer wherever it must win over `stored` (the store's versions).

        The versions come from the state, and so do the payloads of a plan that only re-queues groups
        (the store lacks them: a new or emptied store), which changes nothing on the device. Only a
        plan that re-versions or tombstones instances asks for the tree; it is then made again from the
        tree with nothing awaited until it is applied, so no change can slip between plan and writes.
        """
        local = await outbox.local_versions(self.subject.state, self.object_id)
        versions = reconciled_versions(local.instances, stored)
        plan = plan_reconcile(versions, stored, local.pending, int(self._clock() * 1000))
        if plan.bumps or plan.tombstones:
            self._apply_reconcile(await self.subject.sync_tree(), stored, local.pending)
        elif plan.repush:
            await self._requeue_from_state(plan.repush, versions)
        self.stats.reconciles += 1
        self.needs_reconcile = False

    async def _requeue_from_state(self, repush: Iterable[int], versions: Mapping[int, int]) -> None:
        state = self.subject.state
        rows = await outbox.instance_rows(state, self.object_id, sorted(repush))
        writes = outbox.ReconcileWrites(
            repush=[
                (self.object_id, gid, row.version, stored_payload(self.group_object, row))
                for gid, row in rows.items()
                if row.version == versions[gid]  # else it changed meanwhile: that change queued its row
            ]
        )
        queued = await outbox.apply_reconcile(state, writes, self._clock())
        log.info(
            "%s reconciled with the store: %d re-queued (%d outbox rows)", self.serial, len(rows), queued
        )

    def _apply_reconcile(
        self, tree: DeviceTree, stored: Mapping[int, int], pending: Mapping[int, int]
    ) -> None:
        instances: dict[int, tuple[int, bool]] = {}
        payloads = {}
        for group_id in {*tree.instance_ids(self.object_id), *stored}:
            payload = tree.outbox_payload(self.object_id, group_id)
            if payload is not None:
                instances[group_id] = (payload["version"], payload["deleted"])
                payloads[group_id] = payload
        local = reconciled_versions(instances, stored)
        now = self._clock()
        plan = plan_reconcile(local, stored, pending, int(now * 1000))
        if not plan:
            return
        oid = self.object_id
        writes = outbox.ReconcileWrites(
            bumps=[
                (oid, gid, old, new, {**payloads[gid], "version": new})
                for gid, (old, new) in sorted(plan.bumps.items())
            ],
            tombstones=[
                (oid, gid, version, tombstone_payload(oid, gid, version))
                for gid, version in sorted(plan.tombstones.items())
            ],
            repush=[(oid, gid, local[gid], payloads[gid]) for gid in sorted(plan.repush)],
        )
        queued = tree.apply_reconcile(writes, now)  # blocking: see DeviceTree.apply_reconcile
        log.info(
            "%s reconciled with the store: %d re-versioned, %d tombstoned, %d re-queued (%d outbox rows)",
            self.serial,
            len(plan.bumps),
            len(plan.tombstones),
            len(plan.repush),
            queued,
        )

    # ------------------------------------------------------------------ device record and device groups

    def device_record(self, now: float) -> DeviceRecord:
        identity = self.subject.device_identity()
        return DeviceRecord(
            serial=self.serial,
            model=identity["model"],
            firmware=identity["firmware_version"],
            last_seen=datetime.fromtimestamp(now, UTC),
        )

    def device_sent(self, now: float) -> None:
        self.device_sent_at = now

    def device_refused(self, reason: str, now: float) -> None:
        """The store refuses the device record: never sent again (nor the device groups)."""
        log.error("the management store refuses the device record of %s: %s", self.serial, reason)
        self.device_rejected = True
        self.device_sent_at = now

    @property
    def wants_device_groups(self) -> bool:
        """The profile's device groups are still to be joined, and the store knows the device."""
        return not (self.groups_joined or self.device_rejected or self.device_sent_at is None)

    def device_groups_done(self, outcomes: Mapping[str, MembershipOutcome]) -> None:
        self.groups_joined = True
        full = sorted(group for group, outcome in outcomes.items() if outcome is MembershipOutcome.FULL)
        if full:
            log.warning("device groups full, %s not joined: %s", self.serial, ", ".join(full))

    def device_groups_refused(self, reason: str) -> None:
        log.error("the management store refuses the profile's device groups of %s: %s", self.serial, reason)
        self.groups_joined = True

    # ------------------------------------------------------------------ drain

    async def outgoing(self, limit: int) -> Outgoing | None:
        """The device's next share of a push (up to `limit` outbox rows, coalesced); None when nothing
        is pending. Rows of objects the store does not hold settle here; unsafe payloads are parked."""
        state = self.subject.state
        rows = await state.pending_outbox(limit)
        if not rows:
            return None
        pending = coalesce(rows)
        others = [g for g in pending if g.object_id != self.object_id]
        if others:
            # The management store holds groups only: rows of other objects (the LwM2M Security and
            # Server accounts) have nowhere to go and settle locally, instead of parking as rejected.
            settled = [outbox.DeliveredUpTo(g.object_id, g.instance_id, g.version) for g in others]
            await outbox.mark_delivered(state, settled, self._clock())
        share = Outgoing(self, [], [], more=len(rows) >= limit)
        for group in pending:
            if group.object_id != self.object_id:
                continue
            try:
                share.records.append(group_record(self.serial, group.payload, group.changed_at))
            except UnsafePayload as error:
                await self.park(group, f"not sent: {error}")
                continue
            share.groups.append(group)
        return share

    async def settle(self, groups: Sequence[PendingGroup], applied: Sequence[bool]) -> list[PendingGroup]:
        """Mark what the store confirmed delivered; the groups it already held (a replay or stale)."""
        settled = [outbox.DeliveredUpTo(g.object_id, g.instance_id, g.version) for g in groups]
        await outbox.mark_delivered(self.subject.state, settled, self._clock())
        held = [group for group, was_applied in zip(groups, applied, strict=True) if not was_applied]
        self.stats.applied += len(groups) - len(held)
        self.stats.already_stored += len(held)
        log.debug(
            "%s pushed %d group(s): %d applied, %d already stored",
            self.serial,
            len(groups),
            len(groups) - len(held),
            len(held),
        )
        return held

    def check_held(self, held: Sequence[PendingGroup], stored: Mapping[int, int]) -> None:
        """A group the store already held at a newer version: the store is ahead, reconcile again."""
        if any(stored.get(group.instance_id, 0) > group.version for group in held):
            log.warning("the store holds newer versions than %s; reconciling", self.serial)
            self.needs_reconcile = True

    async def park(self, group: PendingGroup, reason: str) -> None:
        log.error(
            "the store rejects group %d version %d of %s; parked: %s",
            group.instance_id,
            group.version,
            self.serial,
            reason,
        )
        self.stats.rejected += 1
        await outbox.park_rejected(
            self.subject.state,
            outbox.DeliveredUpTo(group.object_id, group.instance_id, group.version),
            reason,
            self._clock(),
        )

    async def record_failure(self, error: str, next_attempt_at: float, limit: int) -> int:
        """Count a failed attempt on the rows that waited on it (the push in flight, else up to `limit`
        pending rows); how many rows that was. Never raises: the state logs its own failures."""
        waiting: tuple[int, ...] = ()
        try:
            waiting = self.attempted or tuple(
                row.id for row in await self.subject.state.pending_outbox(limit)
            )
            await outbox.record_failure(self.subject.state, waiting, error, next_attempt_at)
        except StateError:
            pass  # the state logs its failures (a full disk), once per episode
        except Exception:
            log.exception("could not record a failed delivery in the outbox")
        self.attempted = ()
        return len(waiting)


async def push(
    store: ManagementStore,
    shares: Sequence[Outgoing],
    stats: SyncStats,
    after_acknowledged: Callable[[], None] | None,
) -> PushOutcome:
    """Send the records of every share in one `upsert_groups` call and settle each device's share.

    A refused record is parked alone (the store names it); the others stay pending for the next push. A
    refusal naming no record is narrowed down by pushing each record alone. A StoreError propagates and
    leaves each device's `attempted` rows set, for the caller to count the failed attempt on them. A
    device whose own state fails while settling (or parking) is returned with its error, so one
    device's full disk does not stop the others' settling; its rows stay pending (pushed again later,
    which the store's version guard makes harmless).
    """
    owners = [(share, group) for share in shares for group in share.groups]
    records = [record for share in shares for record in share.records]
    if not records:
        return PushOutcome({})
    for share in shares:
        share.device.attempted = tuple(row_id for group in share.groups for row_id in group.row_ids)
    try:
        applied = await store.upsert_groups(records)
    except StoreRejected as rejection:
        for share in shares:
            share.device.attempted = ()
        outcome = PushOutcome({}, refused=True)
        if rejection.record_index is None and len(records) > 1:
            for (share, group), record in zip(owners, records, strict=True):
                if share.device not in outcome.failed:
                    alone = [Outgoing(share.device, [group], [record], more=False)]
                    outcome.failed.update((await push(store, alone, stats, after_acknowledged)).failed)
            return outcome
        share, group = owners[rejection.record_index or 0]
        try:
            await share.device.park(group, rejection.reason)
        except StateError as error:
            outcome.failed[share.device] = error
        return outcome
    for share in shares:
        share.device.attempted = ()
    stats.pushes += 1
    if after_acknowledged is not None:
        after_acknowledged()
    settling = []
    start = 0
    for share in shares:
        settling.append(share.device.settle(share.groups, applied[start : start + len(share.groups)]))
        start += len(share.groups)
    outcome = PushOutcome({})
    held_of: list[tuple[Outgoing, list[PendingGroup]]] = []
    for share, settled in zip(shares, await asyncio.gather(*settling, return_exceptions=True), strict=True):
        if isinstance(settled, BaseException):
            if not isinstance(settled, Exception):
                raise settled  # a cancellation
            outcome.failed[share.device] = settled
        elif settled:
            held_of.append((share, settled))
    # Already held: a replay after a crash (same version), or the store is ahead of the device.
    if len(held_of) == 1:
        share, held = held_of[0]
        share.device.check_held(held, await store.group_versions(share.device.serial))
    elif held_of:
        versions = await store.group_versions_many([share.device.serial for share, _held in held_of])
        for share, held in held_of:
            share.device.check_held(held, versions[share.device.serial])
    return outcome
