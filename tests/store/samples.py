"""Sample records for the store tests: a live user group, a profile, a device, with a fixed clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tap_emulator.store import DeviceRecord, GroupRecord

T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def group(group_id: int = 5, version: int = 1, serial: str = "EMU0000000001", **changes: Any) -> GroupRecord:
    """A live user group of `serial`; alias 0 (inherits anonymous) unless changed."""
    record = GroupRecord(
        device_serial=serial,
        group_id=group_id,
        version=version,
        name=f"user{group_id}v{version}"[:16],
        alias=0,
        session_lifetime=300,
        is_profile=group_id == 0,
        password_set=True,
        scram_salt=0x01020304,
        scram_iteration=5000,
        deleted=False,
        updated_at=T0 + timedelta(seconds=version % 1000),
    )
    return replace(record, **changes)


def profile(group_id: int, version: int = 1, serial: str = "EMU0000000001", **changes: Any) -> GroupRecord:
    return group(group_id, version, serial, alias=group_id, is_profile=True, **changes)


def device(serial: str = "EMU0000000001", last_seen: datetime = T0, **changes: Any) -> DeviceRecord:
    return replace(DeviceRecord(serial, "TAP 1.10 L4 NFC BLE", "1.15", last_seen), **changes)
