"""Outbox bookkeeping for the sync task and `tap-emulator store status`.

The state module writes outbox rows in the same transaction as each change; this module settles them
(delivered only once the store has confirmed, rejected with the store's reason, or retried later with
the error and the next attempt time recorded) and summarises the backlog. It also applies the writes a
reconcile with the management store decides (version bumps and tombstones, each with its outbox row),
so the sync task never touches SQL itself. Every function takes a `DeviceState` and runs its SQL on
the state's writer thread, each write in one BEGIN IMMEDIATE transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tap_emulator.state import DeviceState, rollback_open_transaction

__all__ = [
    "BacklogStatus",
    "DeliveredUpTo",
    "ReconcileWrites",
    "apply_reconcile_sync",
    "backlog_status",
    "backlog_status_sync",
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
    """Run statements in one BEGIN IMMEDIATE transaction; the total of rows changed."""
    changed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            changed += conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        rollback_open_transaction(conn)
        raise
    return changed


# Delivered rows are pruned as they are settled: each instance keeps only its newest delivered row (the
# last version the store confirmed, and when), so the outbox stays as small as the device's backlog
# instead of growing by one row per write for ever. The pruned rows are counted in `outbox_pruned`.
_PRUNE_DELIVERED = (
    "DELETE FROM outbox WHERE status = 'delivered' AND id NOT IN ("
    "SELECT id FROM (SELECT id, MAX(version) FROM outbox WHERE status = 'delivered' "
    "GROUP BY object_id, instance_id))"
)


async def mark_delivered(state: DeviceState, settled: Sequence[DeliveredUpTo], now: float) -> int:
    """Mark pending rows delivered (the store confirmed their version or a newer one) and prune the
    delivered rows no longer needed, in one transaction; returns how many rows were marked."""
    statements = [
        (
            "UPDATE outbox SET status = 'delivered', settled_at = ? "
            "WHERE status = 'pending' AND object_id = ? AND instance_id = ? AND version <= ?",
            (now, item.object_id, item.instance_id, item.version),
        )
        for item in settled
    ]

    def write(conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            marked = sum(conn.execute(sql, params).rowcount for sql, params in statements)
            pruned = conn.execute(_PRUNE_DELIVERED).rowcount
            if pruned:
                conn.execute("UPDATE outbox_pruned SET delivered = delivered + ?", (pruned,))
            conn.execute("COMMIT")
        except BaseException:
            rollback_open_transaction(conn)
            raise
        return marked

    changed: int = await state.call(write)
    return changed


async def park_rejected(state: DeviceState, item: DeliveredUpTo, reason: str, now: float) -> int:
    """Set pending rows of one instance (up to a version) aside as rejected, with the store's reason."""
    statement = (
        "UPDATE outbox SET status = 'rejected', settled_at = ?, last_error = ?, attempts = attempts + 1 "
        "WHERE status = 'pending' AND object_id = ? AND instance_id = ? AND version <= ?",
        (now, reason, item.object_id, item.instance_id, item.version),
    )
    changed: int = await state.call(lambda conn: _write(conn, [statement]))
    return changed


async def record_failure(
    state: DeviceState, row_ids: Iterable[int], error: str, next_attempt_at: float
) -> int:
    """Count a failed delivery attempt on still-pending rows, with its error and the next attempt time."""
    statements = [
        (
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
            "WHERE id = ? AND status = 'pending'",
            (error, next_attempt_at, row_id),
        )
        for row_id in row_ids
    ]
    changed: int = await state.call(lambda conn: _write(conn, statements))
    return changed


async def pending_versions(state: DeviceState, object_id: int) -> dict[int, int]:
    """instance id -> newest pending version, for one object."""

    def read(conn: sqlite3.Connection) -> dict[int, int]:
        rows = conn.execute(
            "SELECT instance_id, MAX(version) FROM outbox WHERE status = 'pending' AND object_id = ? "
            "GROUP BY instance_id",
            (object_id,),
        )
        return {instance_id: version for instance_id, version in rows}

    result: dict[int, int] = await state.call(read)
    return result


def _read_status(conn: sqlite3.Connection) -> BacklogStatus:
    pending, instances, oldest_at, next_at = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT object_id || '/' || instance_id), MIN(created_at), "
        "MIN(CASE WHEN attempts > 0 THEN next_attempt_at END) FROM outbox WHERE status = 'pending'"
    ).fetchone()
    oldest = conn.execute(
        "SELECT attempts FROM outbox WHERE status = 'pending' ORDER BY id LIMIT 1"
    ).fetchone()
    last_error = conn.execute(
        "SELECT last_error FROM outbox WHERE status = 'pending' AND last_error IS NOT NULL "
        "ORDER BY next_attempt_at DESC, id DESC LIMIT 1"
    ).fetchone()
    rejected, last_rejection = conn.execute(
        "SELECT COUNT(*), (SELECT last_error FROM outbox WHERE status = 'rejected' "
        "ORDER BY settled_at DESC, id DESC LIMIT 1) FROM outbox WHERE status = 'rejected'"
    ).fetchone()
    delivered, last_delivered = conn.execute(
        "SELECT COUNT(*) + (SELECT delivered FROM outbox_pruned), MAX(settled_at) FROM outbox "
        "WHERE status = 'delivered'"
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
    status: BacklogStatus = await state.call(_read_status)
    return status


def backlog_status_sync(state: DeviceState) -> BacklogStatus:
    """The backlog summary, blocking (for the CLI on a running or stopped device's state file)."""
    status: BacklogStatus = state.call_sync(_read_status)
    return status


_INSERT_OUTBOX = (
    "INSERT INTO outbox (object_id, instance_id, version, payload, created_at) VALUES (?, ?, ?, ?, ?)"
)


def apply_reconcile_sync(state: DeviceState, writes: ReconcileWrites, now: float) -> int:
    """Apply a reconcile's writes in one transaction (blocking); returns how many outbox rows were queued.

    A bump applies only if the instance still has the expected version, so a concurrent change is never
    overwritten; a repush is skipped when a pending row already carries that version or a newer one.
    """

    def write(conn: sqlite3.Connection) -> int:
        queued = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for object_id, instance_id, expected, version, payload in writes.bumps:
                updated = conn.execute(
                    "UPDATE instance SET version = ? WHERE object_id = ? AND instance_id = ? AND version = ?",
                    (version, object_id, instance_id, expected),
                ).rowcount
                if updated:
                    conn.execute(_INSERT_OUTBOX, (object_id, instance_id, version, json.dumps(payload), now))
                    queued += 1
            for object_id, instance_id, version, payload in writes.tombstones:
                inserted = conn.execute(
                    "INSERT INTO instance (object_id, instance_id, version, deleted, resource_values, "
                    "credential) VALUES (?, ?, ?, 1, '{}', NULL) "
                    "ON CONFLICT (object_id, instance_id) DO NOTHING",
                    (object_id, instance_id, version),
                ).rowcount
                if inserted:
                    conn.execute(_INSERT_OUTBOX, (object_id, instance_id, version, json.dumps(payload), now))
                    queued += 1
            for object_id, instance_id, version, payload in writes.repush:
                covered = conn.execute(
                    "SELECT 1 FROM outbox WHERE status = 'pending' AND object_id = ? AND instance_id = ? "
                    "AND version >= ? LIMIT 1",
                    (object_id, instance_id, version),
                ).fetchone()
                if covered is None:
                    conn.execute(_INSERT_OUTBOX, (object_id, instance_id, version, json.dumps(payload), now))
                    queued += 1
            conn.execute("COMMIT")
        except BaseException:
            rollback_open_transaction(conn)
            raise
        return queued

    result: int = state.call_sync(write)
    return result
