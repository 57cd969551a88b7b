"""Outbox bookkeeping for the sync task and `tap-emulator store status`.

The state module writes outbox rows in the same transaction as each change; this module settles them
(delivered only once the store has confirmed, rejected with the store's reason, or retried later with
the error and the next attempt time recorded) and summarises the backlog. It also applies the writes a
reconcile with the management store decides (version bumps and tombstones, each with its outbox row),
so the sync task never touches SQL itself. Every function takes a `DeviceState` (one device's view of
its state file) and runs its SQL on the file's writer thread, filtered by that device's key. Writes go
through the file's group commit: settling the outboxes of many devices at once costs one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tap_emulator.state import DeviceState, InstanceRow
from tap_emulator.state import _decode_values as decode_values  # the package's one value decoding

__all__ = [
    "BacklogStatus",
    "DeliveredUpTo",
    "LocalVersions",
    "ReconcileWrites",
    "apply_reconcile",
    "apply_reconcile_sync",
    "backlog_status",
    "backlog_status_sync",
    "instance_rows",
    "local_versions",
    "mark_delivered",
    "park_rejected",
    "pending_versions",
    "record_failure",
]


@dataclass(frozen=True, slots=True)
class DeliveredUpTo:
    """All pending rows of one instance with a version up to `version` are settled."""

    object_id: int
    instance_id: int
    version: int


@dataclass(frozen=True, slots=True)
class BacklogStatus:
    """What `store status` prints: the backlog of changes not yet confirmed by the store."""

    pending: int
    pending_instances: int
    oldest_pending_at: float | None  # created_at (epoch seconds) of the oldest pending row
    oldest_pending_attempts: int
    next_attempt_at: float | None  # earliest retry time among pending rows that failed
    last_error: str | None  # error of the most recent failed attempt still pending
    rejected: int
    last_rejection: str | None
    delivered: int  # rows ever delivered, pruned ones included
    last_delivered_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "pending_instances": self.pending_instances,
            "oldest_pending_at": self.oldest_pending_at,
            "oldest_pending_attempts": self.oldest_pending_attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "rejected": self.rejected,
            "last_rejection": self.last_rejection,
            "delivered": self.delivered,
            "last_delivered_at": self.last_delivered_at,
        }


@dataclass(frozen=True, slots=True)
class ReconcileWrites:
    """Writes that make the device's versions newer than the store's, each queued for delivery.

    `bumps`: (object_id, instance_id, expected current version, new version, payload at the new version).
    `tombstones`: (object_id, instance_id, version, payload) for instances the device no longer has.
    `repush`: (object_id, instance_id, version, payload) re-queued when no pending row covers it.
    Payloads are the public outbox payloads (no secret); the credential column is left untouched.
    """

    bumps: Sequence[tuple[int, int, int, int, Mapping[str, Any]]] = ()
    tombstones: Sequence[tuple[int, int, int, Mapping[str, Any]]] = field(default=())
    repush: Sequence[tuple[int, int, int, Mapping[str, Any]]] = ()

    def __bool__(self) -> bool:
        return bool(self.bumps or self.tombstones or self.repush)


def _write(conn: sqlite3.Connection, statements: Iterable[tuple[str, Sequence[Any]]]) -> int:
    """Run statements (inside the caller's transaction); the total of rows changed."""
    return sum(conn.execute(sql, params).rowcount for sql, params in statements)


# Delivered rows are pruned as they are settled: each instance keeps only its newest delivered row (the
# last version the store confirmed, and when), so the outbox stays as small as the device's backlog
# instead of growing by one row per write for ever. The pruned rows are counted in `outbox_pruned`.
_PRUNE_DELIVERED = (
    "DELETE FROM outbox WHERE device = :device AND status = 'delivered' AND id NOT IN ("
    "SELECT id FROM (SELECT id, MAX(version) FROM outbox WHERE device = :device AND status = 'delivered' "
    "GROUP BY object_id, instance_id))"
)


async def mark_delivered(state: DeviceState, settled: Sequence[DeliveredUpTo], now: float) -> int:
    """Mark pending rows delivered (the store confirmed their version or a newer one) and prune the
    delivered rows no longer needed, in one transaction; returns how many rows were marked."""
    items = tuple(settled)

    def write(conn: sqlite3.Connection, device: str) -> int:
        marked = _write(
            conn,
            (
                (
                    "UPDATE outbox SET status = 'delivered', settled_at = ? WHERE device = ? "
                    "AND status = 'pending' AND object_id = ? AND instance_id = ? AND version <= ?",
                    (now, device, item.object_id, item.instance_id, item.version),
                )
                for item in items
            ),
        )
        pruned = conn.execute(_PRUNE_DELIVERED, {"device": device}).rowcount
        if pruned:
            conn.execute(
                "INSERT INTO outbox_pruned (device, delivered) VALUES (?, ?) "
                "ON CONFLICT (device) DO UPDATE SET delivered = delivered + excluded.delivered",
                (device, pruned),
            )
        return marked

    return await state.transact(write)


async def park_rejected(state: DeviceState, item: DeliveredUpTo, reason: str, now: float) -> int:
    """Set pending rows of one instance (up to a version) aside as rejected, with the store's reason."""

    def write(conn: sqlite3.Connection, device: str) -> int:
        return conn.execute(
            "UPDATE outbox SET status = 'rejected', settled_at = ?, last_error = ?, attempts = attempts + 1 "
            "WHERE device = ? AND status = 'pending' AND object_id = ? AND instance_id = ? AND version <= ?",
            (now, reason, device, item.object_id, item.instance_id, item.version),
        ).rowcount

    return await state.transact(write)


async def record_failure(
    state: DeviceState, row_ids: Iterable[int], error: str, next_attempt_at: float
) -> int:
    """Count a failed delivery attempt on still-pending rows, with its error and the next attempt time."""
    ids = tuple(row_ids)

    def write(conn: sqlite3.Connection, device: str) -> int:
        return _write(
            conn,
            (
                (
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                    "WHERE id = ? AND device = ? AND status = 'pending'",
                    (error, next_attempt_at, row_id, device),
                )
                for row_id in ids
            ),
        )

    return await state.transact(write)


_PENDING_VERSIONS = (
    "SELECT instance_id, MAX(version) FROM outbox WHERE device = ? AND status = 'pending' "
    "AND object_id = ? GROUP BY instance_id"
)


async def pending_versions(state: DeviceState, object_id: int) -> dict[int, int]:
    """instance id -> newest pending version, for one object."""

    def read(conn: sqlite3.Connection, device: str) -> dict[int, int]:
        rows = conn.execute(_PENDING_VERSIONS, (device, object_id))
        return {instance_id: version for instance_id, version in rows}

    return await state.call(read)


@dataclass(frozen=True, slots=True)
class LocalVersions:
    """What a reconcile compares with the store, read from the state without building the device's tree.

    `instances`: instance id -> (version, deleted) of every stored instance of the object, tombstones
    included; `pending`: instance id -> newest pending outbox version. Both come from one read, so
    they are consistent with each other.
    """

    instances: Mapping[int, tuple[int, bool]]
    pending: Mapping[int, int]


async def local_versions(state: DeviceState, object_id: int) -> LocalVersions:
    """The versions of one object's instances and of their pending outbox rows (for the sync reconcile)."""

    def read(conn: sqlite3.Connection, device: str) -> LocalVersions:
        instances = conn.execute(
            "SELECT instance_id, version, deleted FROM instance WHERE device = ? AND object_id = ?",
            (device, object_id),
        ).fetchall()
        pending = conn.execute(_PENDING_VERSIONS, (device, object_id)).fetchall()
        return LocalVersions(
            {instance_id: (version, bool(deleted)) for instance_id, version, deleted in instances},
            {instance_id: version for instance_id, version in pending},
        )

    return await state.call(read)


async def instance_rows(
    state: DeviceState, object_id: int, instance_ids: Iterable[int]
) -> dict[int, InstanceRow]:
    """The stored rows of some instances of one object (those that exist), by instance id."""
    wanted = tuple(instance_ids)

    def read(conn: sqlite3.Connection, device: str) -> dict[int, InstanceRow]:
        found = {}
        for instance_id in wanted:
            row = conn.execute(
                "SELECT version, deleted, resource_values, credential FROM instance "
                "WHERE device = ? AND object_id = ? AND instance_id = ?",
                (device, object_id, instance_id),
            ).fetchone()
            if row is not None:
                version, deleted, values, credential = row
                found[instance_id] = InstanceRow(
                    object_id, instance_id, version, bool(deleted), decode_values(values), credential
                )
        return found

    return await state.call(read)


def _read_status(conn: sqlite3.Connection, device: str) -> BacklogStatus:
    pending, instances, oldest_at, next_at = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT object_id || '/' || instance_id), MIN(created_at), "
        "MIN(CASE WHEN attempts > 0 THEN next_attempt_at END) FROM outbox "
        "WHERE device = ? AND status = 'pending'",
        (device,),
    ).fetchone()
    oldest = conn.execute(
        "SELECT attempts FROM outbox WHERE device = ? AND status = 'pending' ORDER BY id LIMIT 1", (device,)
    ).fetchone()
    last_error = conn.execute(
        "SELECT last_error FROM outbox WHERE device = ? AND status = 'pending' AND last_error IS NOT NULL "
        "ORDER BY next_attempt_at DESC, id DESC LIMIT 1",
        (device,),
    ).fetchone()
    rejected, last_rejection = conn.execute(
        "SELECT COUNT(*), (SELECT last_error FROM outbox WHERE device = :device AND status = 'rejected' "
        "ORDER BY settled_at DESC, id DESC LIMIT 1) "
        "FROM outbox WHERE device = :device AND status = 'rejected'",
        {"device": device},
    ).fetchone()
    delivered, last_delivered = conn.execute(
        "SELECT COUNT(*) + COALESCE((SELECT delivered FROM outbox_pruned WHERE device = :device), 0), "
        "MAX(settled_at) FROM outbox WHERE device = :device AND status = 'delivered'",
        {"device": device},
    ).fetchone()
    return BacklogStatus(
        pending=pending,
        pending_instances=instances,
        oldest_pending_at=oldest_at,
        oldest_pending_attempts=0 if oldest is None else oldest[0],
        next_attempt_at=next_at,
        last_error=None if last_error is None else last_error[0],
        rejected=rejected,
        last_rejection=last_rejection,
        delivered=delivered,
        last_delivered_at=last_delivered,
    )


async def backlog_status(state: DeviceState) -> BacklogStatus:
    """The backlog summary (for a running device)."""
    return await state.call(_read_status)


def backlog_status_sync(state: DeviceState) -> BacklogStatus:
    """The backlog summary, blocking (for the CLI on a running or stopped device's state file)."""
    return state.call_sync(_read_status)


_INSERT_OUTBOX = (
    "INSERT INTO outbox (device, object_id, instance_id, version, payload, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def apply_reconcile_sync(state: DeviceState, writes: ReconcileWrites, now: float) -> int:
    """Apply a reconcile's writes in one transaction (blocking); returns how many outbox rows were queued.

    A bump applies only if the instance still has the expected version, so a concurrent change is never
    overwritten; a repush is skipped when a pending row already carries that version or a newer one.
    """
    return state.transact_sync(_reconcile_write(writes, now))


async def apply_reconcile(state: DeviceState, writes: ReconcileWrites, now: float) -> int:
    """`apply_reconcile_sync` awaited instead of blocking, in the file's group commit: for writes that
    change no instance (re-queued rows only), which a tree holding the device need not see at once."""
    return await state.transact(_reconcile_write(writes, now))


def _reconcile_write(writes: ReconcileWrites, now: float) -> Callable[[sqlite3.Connection, str], int]:
    def write(conn: sqlite3.Connection, device: str) -> int:
        def queue_row(object_id: int, instance_id: int, version: int, payload: Mapping[str, Any]) -> int:
            conn.execute(_INSERT_OUTBOX, (device, object_id, instance_id, version, json.dumps(payload), now))
            return 1

        queued = 0
        for object_id, instance_id, expected, version, payload in writes.bumps:
            updated = conn.execute(
                "UPDATE instance SET version = ? "
                "WHERE device = ? AND object_id = ? AND instance_id = ? AND version = ?",
                (version, device, object_id, instance_id, expected),
            ).rowcount
            if updated:
                queued += queue_row(object_id, instance_id, version, payload)
        for object_id, instance_id, version, payload in writes.tombstones:
            inserted = conn.execute(
                "INSERT INTO instance (device, object_id, instance_id, version, deleted, resource_values, "
                "credential) VALUES (?, ?, ?, ?, 1, '{}', NULL) "
                "ON CONFLICT (device, object_id, instance_id) DO NOTHING",
                (device, object_id, instance_id, version),
            ).rowcount
            if inserted:
                queued += queue_row(object_id, instance_id, version, payload)
        for object_id, instance_id, version, payload in writes.repush:
            covered = conn.execute(
                "SELECT 1 FROM outbox WHERE device = ? AND status = 'pending' AND object_id = ? "
                "AND instance_id = ? AND version >= ? LIMIT 1",
                (device, object_id, instance_id, version),
            ).fetchone()
            if covered is None:
                queued += queue_row(object_id, instance_id, version, payload)
        return queued

    return write
