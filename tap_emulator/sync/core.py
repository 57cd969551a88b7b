"""The decisions of the sync task, without I/O: backoff, coalescing, records, and the reconcile plan.

Kept apart from the task so each rule is tested directly with plain values: no store, no state file,
no clock and no randomness of their own (the task passes `now` and a random draw in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tap_emulator.state import OutboxRow
from tap_emulator.store import GroupRecord

__all__ = [
    "PUBLIC_VALUES",
    "PendingGroup",
    "ReconcilePlan",
    "UnsafePayload",
    "backoff_delay",
    "coalesce",
    "group_record",
    "next_heartbeat",
    "plan_reconcile",
    "reconciled_versions",
    "tombstone_payload",
]

# The only group values that may leave the device (alias slugs of object 1025); anything else in a
# payload, and any bytes value, is refused before it can reach the store.
PUBLIC_VALUES = frozenset({"name", "session-lifetime", "alias", "scram-user-iteration", "scram-user-salt"})
_PAYLOAD_KEYS = frozenset({"object_id", "instance_id", "version", "deleted", "password_set", "values"})


class UnsafePayload(ValueError):
    """An outbox payload that is malformed or carries something other than public group values."""


def backoff_delay(failures: int, *, base: float, cap: float, draw: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**failures)); `draw` gives a number in [0, 1)."""
    ceiling = min(cap, base * 2.0 ** min(failures, 62))
    return draw() * ceiling


def next_heartbeat(due: float, now: float, period: float) -> float:
    """The next heartbeat slot of a device after the one `due` it was sent for: `due + k * period`, the
    first such slot later than `now` (k >= 1). Each device keeps the phase it was given, so heartbeats
    that start spread over the period stay spread, even after an outage or a send a little early."""
    if period <= 0:
        raise ValueError("the heartbeat period must be positive")
    slots = max(1, math.floor((now - due) / period) + 1)
    following = due + slots * period
    if following <= now:  # the division rounded down onto `now` itself
        following = due + (slots + 1) * period
    return following


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """The newest pending change of one instance, standing for all its older pending rows."""

    object_id: int
    instance_id: int
    version: int
    payload: Mapping[str, Any] = field(repr=False)
    changed_at: float
    row_ids: tuple[int, ...]


def coalesce(rows: Iterable[OutboxRow]) -> list[PendingGroup]:
    """One entry per instance: its newest version; ordered by each instance's oldest pending row (FIFO)."""
    first_seen: dict[tuple[int, int], int] = {}
    newest: dict[tuple[int, int], OutboxRow] = {}
    ids: dict[tuple[int, int], list[int]] = {}
    for row in rows:
        key = (row.object_id, row.instance_id)
        first_seen.setdefault(key, row.id)
        ids.setdefault(key, []).append(row.id)
        best = newest.get(key)
        if best is None or (row.version, row.id) > (best.version, best.id):
            newest[key] = row
    return [
        PendingGroup(
            key[0],
            key[1],
            newest[key].version,
            newest[key].payload,
            newest[key].created_at,
            tuple(ids[key]),
        )
        for key in sorted(first_seen, key=first_seen.__getitem__)
    ]


def _int(values: Mapping[str, Any], key: str, default: int) -> int:
    value = values.get(key, default)
    if type(value) is not int:
        raise UnsafePayload(f"value {key!r} is not an integer")
    return value


def group_record(serial: str, payload: Mapping[str, Any], changed_at: float) -> GroupRecord:
    """The store record of one outbox payload; UnsafePayload unless it holds public values only."""
    unknown = set(payload) - _PAYLOAD_KEYS
    if unknown:
        raise UnsafePayload(f"payload has non-public fields {sorted(unknown)}")
    values = payload.get("values")
    if not isinstance(values, Mapping):
        raise UnsafePayload("payload has no values mapping")
    if set(values) - PUBLIC_VALUES:
        raise UnsafePayload(f"payload has non-public values {sorted(set(values) - PUBLIC_VALUES)}")
    if any(isinstance(value, bytes | bytearray | memoryview) for value in values.values()):
        raise UnsafePayload("payload values must not be bytes")
    group_id, version = payload.get("instance_id"), payload.get("version")
    deleted, password_set = payload.get("deleted"), payload.get("password_set")
    if type(group_id) is not int or type(version) is not int:
        raise UnsafePayload("payload needs integer instance_id and version")
    if type(deleted) is not bool or type(password_set) is not bool:
        raise UnsafePayload("payload needs boolean deleted and password_set")
    name = values.get("name", "")
    if not isinstance(name, str):
        raise UnsafePayload("value 'name' is not text")
    alias = _int(values, "alias", group_id)
    updated_at = datetime.fromtimestamp(changed_at, UTC)
    if deleted:
        return GroupRecord(
            serial, group_id, version, "", group_id, 0, False, False, None, None, True, updated_at
        )
    return GroupRecord(
        device_serial=serial,
        group_id=group_id,
        version=version,
        name=name,
        alias=alias,
        session_lifetime=_int(values, "session-lifetime", 0),
        is_profile=alias == group_id,
        password_set=password_set,
        scram_salt=_int(values, "scram-user-salt", 0),
        scram_iteration=_int(values, "scram-user-iteration", 0),
        deleted=False,
        updated_at=updated_at,
    )


def tombstone_payload(object_id: int, instance_id: int, version: int) -> dict[str, Any]:
    """The outbox payload of an instance the device does not have (any more)."""
    return {
        "object_id": object_id,
        "instance_id": instance_id,
        "version": version,
        "deleted": True,
        "password_set": False,
        "values": {},
    }


@dataclass(frozen=True, slots=True)
class ReconcilePlan:
    """What a reconcile must write so the store ends up holding the device's state.

    `bumps`: instance id -> (local version, new version): the store holds a version at least as new
    (the clock went backwards), so the device's state is re-versioned past it and pushed again.
    `tombstones`: instance id -> version: the store holds a group the device does not know.
    `repush`: instance ids whose local version is newer than the store's with no pending row for it.
    """

    bumps: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    tombstones: Mapping[int, int] = field(default_factory=dict)
    repush: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.bumps or self.tombstones or self.repush)


def reconciled_versions(
    instances: Mapping[int, tuple[int, bool]], stored: Mapping[int, int]
) -> dict[int, int]:
    """The device's side of a reconcile: instance id -> version, from (version, deleted) of each
    instance it holds. A tombstone counts only where the store holds the group (it must overwrite it);
    elsewhere the group is simply unknown to both sides."""
    return {
        instance_id: version
        for instance_id, (version, deleted) in instances.items()
        if not deleted or instance_id in stored
    }


def plan_reconcile(
    local: Mapping[int, int],
    stored: Mapping[int, int],
    pending: Mapping[int, int],
    now_ms: int,
) -> ReconcilePlan:
    """Compare versions (instance id -> version) of the device, of the store, and of pending outbox rows.

    The device is the source of truth: anything the store holds that is newer than or unknown to the
    device is overwritten with a version past the store's (hybrid-logical: at least `now_ms`).
    """
    bumps: dict[int, tuple[int, int]] = {}
    tombstones: dict[int, int] = {}
    repush: set[int] = set()
    for group_id, stored_version in stored.items():
        local_version = local.get(group_id)
        if local_version is None:
            tombstones[group_id] = max(now_ms, stored_version + 1)
        elif local_version < stored_version:
            bumps[group_id] = (local_version, max(now_ms, stored_version + 1))
    for group_id, local_version in local.items():
        held = stored.get(group_id)
        newer = held is None or local_version > held
        if newer and pending.get(group_id, 0) < local_version:
            repush.add(group_id)
    return ReconcilePlan(bumps, tombstones, frozenset(repush))
