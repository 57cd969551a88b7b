"""The management store's vocabulary: records, errors and the interface every engine implements.

The sync task and the CLI are written against this module only, never against an engine, so that
SQLite (embedded) and PostgreSQL (shared by several emulator processes) stay interchangeable.
The records carry no key material on purpose: a password, its hash or SCRAM keys never leave the device.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "DeviceRecord",
    "GroupRecord",
    "ManagementStore",
    "MembershipOutcome",
    "StoreError",
    "StoreRejected",
    "as_utc",
    "check_device",
    "check_group",
]

# Both engines store integers as signed 64-bit; anything wider cannot even be bound as a parameter.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class StoreError(Exception):
    """The store is unreachable or failed transiently; the caller may retry later (with backoff)."""


class StoreRejected(StoreError):
    """The store refuses a record as invalid; retrying the same record can never succeed.

    `record_index` is the position of the offending record in the batch given to `upsert_groups` or
    `upsert_devices` (None for a single device record), so the caller can park exactly that record.
    """

    def __init__(self, reason: str, record_index: int | None = None) -> None:
        where = "" if record_index is None else f" (record {record_index})"
        super().__init__(f"store rejected the record{where}: {reason}")
        self.reason = reason
        self.record_index = record_index


@dataclass(frozen=True)
class DeviceRecord:
    """One emulated Tap as the management side knows it. `last_seen` is an aware UTC datetime."""

    serial: str
    model: str
    firmware: str
    last_seen: datetime


@dataclass(frozen=True)
class GroupRecord:
    """One access group (LwM2M 1025 instance) of one device, at one version.

    `version` grows by one with every change on the device; the store keeps only the newest.
    A deleted group is kept as a tombstone (`deleted=True`) so that older versions stay stale.
    `password_set` says whether the group has a password; the password itself is never stored.
    """

    device_serial: str
    group_id: int
    version: int
    name: str
    alias: int
    session_lifetime: int
    is_profile: bool
    password_set: bool
    scram_salt: int | None
    scram_iteration: int | None
    deleted: bool
    updated_at: datetime


class MembershipOutcome(enum.Enum):
    """What adding a device to a device group did."""

    ADDED = "added"
    ALREADY_MEMBER = "already member"
    FULL = "full"


@runtime_checkable
class ManagementStore(Protocol):
    """The few operations the sync task and the CLI need; implemented by the SQLite and PostgreSQL engines."""

    async def upsert_device(self, device: DeviceRecord) -> None:
        """Insert or refresh a device; an older `last_seen` than the stored one is ignored."""
        ...

    async def upsert_devices(self, devices: Sequence[DeviceRecord]) -> None:
        """`upsert_device` for many devices in one transaction (one round trip): all or none are written;
        a refused record raises StoreRejected with its index in `devices`."""
        ...

    async def upsert_groups(self, groups: Sequence[GroupRecord]) -> list[bool]:
        """Apply records in one transaction; per record True = applied, False = stale or duplicate."""
        ...

    async def get_group(self, device_serial: str, group_id: int) -> GroupRecord | None:
        """The stored version of one group (tombstones included), or None."""
        ...

    async def list_groups(
        self, device_serial: str, limit: int = 100, after_group_id: int | None = None
    ) -> list[GroupRecord]:
        """Groups of a device by ascending group id, tombstones included; keyset pagination."""
        ...

    async def group_versions(self, device_serial: str) -> dict[int, int]:
        """group id -> stored version (tombstones included), for reconciling after a factory reset."""
        ...

    async def group_versions_many(self, serials: Sequence[str]) -> dict[str, dict[int, int]]:
        """`group_versions` of many devices at once: serial -> (group id -> version), every serial a key
        (an empty mapping for a device the store does not hold)."""
        ...

    async def list_devices(self) -> list[DeviceRecord]:
        """All devices by serial number."""
        ...

    async def join_profile_groups(
        self, serial: str, group_ids: Sequence[str], at: datetime
    ) -> dict[str, MembershipOutcome]:
        """Join a stored device to the device groups its profile names, the first time only (see
        tap_emulator.store.cloud.CloudOperations)."""
        ...

    async def join_profile_groups_many(
        self, serials: Sequence[str], group_ids: Sequence[str], at: datetime
    ) -> dict[str, dict[str, MembershipOutcome]]:
        """`join_profile_groups` for many devices in one transaction: serial -> outcomes."""
        ...

    async def close(self) -> None:
        """Release the connection; idempotent. Any later call raises StoreError."""
        ...


def _require(condition: bool, reason: str, record_index: int | None) -> None:
    if not condition:
        raise StoreRejected(reason, record_index)


def _check_types(record: DeviceRecord | GroupRecord, record_index: int | None) -> None:
    """Reject values the drivers would coerce or fail to bind; ranges are left to the schema's CHECKs."""
    for field in fields(record):
        value = getattr(record, field.name)
        expected = str(field.type)
        if value is None:
            _require("None" in expected, f"{field.name} must not be None", record_index)
        elif expected.startswith("int"):
            _require(
                type(value) is int and _INT64_MIN <= value <= _INT64_MAX,
                f"{field.name} must be a 64-bit integer",
                record_index,
            )
        elif expected == "bool":
            _require(type(value) is bool, f"{field.name} must be a bool", record_index)
        elif expected == "str":
            _require(type(value) is str, f"{field.name} must be a str", record_index)
        elif expected == "datetime":
            _require(
                isinstance(value, datetime) and value.utcoffset() is not None,
                f"{field.name} must be a timezone-aware datetime",
                record_index,
            )
        else:  # pragma: no cover - guards against a field added without a rule here
            raise AssertionError(f"no type rule for {field.name}: {expected}")


def check_device(device: DeviceRecord, record_index: int | None = None) -> None:
    """Raise StoreRejected if the device record cannot be bound to the store's column types."""
    _check_types(device, record_index)


def check_group(group: GroupRecord, record_index: int | None = None) -> None:
    """Raise StoreRejected if the group record cannot be bound to the store's column types."""
    _check_types(group, record_index)


def as_utc(moment: datetime) -> datetime:
    """Normalise an aware datetime to UTC, so both engines hand back equal values."""
    return moment.astimezone(UTC)
