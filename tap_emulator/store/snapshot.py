"""What `tap-emulator store show` prints: every device (or one) with all its groups and their versions.

The JSON form is a stable interface for scripts and cloud-side tests, so its shape is fixed here, in one
place: a list of devices ordered by serial, each with its groups ordered by group id (tombstones
included, flagged `deleted`), keys in a fixed order, timestamps as ISO 8601 UTC ending in "Z".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .records import DeviceRecord, GroupRecord, ManagementStore, as_utc

__all__ = ["DeviceSnapshot", "snapshot_to_json", "store_snapshot", "store_snapshot_json"]

_PAGE = 500


@dataclass(frozen=True)
class DeviceSnapshot:
    """One device with all its stored groups, by group id."""

    device: DeviceRecord
    groups: tuple[GroupRecord, ...]


async def store_snapshot(store: ManagementStore, device_serial: str | None = None) -> list[DeviceSnapshot]:
    """All devices (or only `device_serial`; empty if unknown) with all their groups."""
    devices = [
        device
        for device in await store.list_devices()
        if device_serial is None or device.serial == device_serial
    ]
    snapshots = []
    for device in devices:
        groups: list[GroupRecord] = []
        while True:
            after = groups[-1].group_id if groups else None
            page = await store.list_groups(device.serial, limit=_PAGE, after_group_id=after)
            groups.extend(page)
            if len(page) < _PAGE:
                break
        snapshots.append(DeviceSnapshot(device, tuple(groups)))
    return snapshots


def _timestamp(moment: datetime) -> str:
    return as_utc(moment).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _group_json(group: GroupRecord) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "version": group.version,
        "name": group.name,
        "alias": group.alias,
        "session_lifetime": group.session_lifetime,
        "is_profile": group.is_profile,
        "password_set": group.password_set,
        "scram_salt": group.scram_salt,
        "scram_iteration": group.scram_iteration,
        "deleted": group.deleted,
        "updated_at": _timestamp(group.updated_at),
    }


def snapshot_to_json(snapshots: list[DeviceSnapshot]) -> str:
    """The stable JSON text of a snapshot (two-space indent, newline-terminated)."""
    document = [
        {
            "serial": snapshot.device.serial,
            "model": snapshot.device.model,
            "firmware": snapshot.device.firmware,
            "last_seen": _timestamp(snapshot.device.last_seen),
            "groups": [_group_json(group) for group in snapshot.groups],
        }
        for snapshot in snapshots
    ]
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


async def store_snapshot_json(store: ManagementStore, device_serial: str | None = None) -> str:
    """`store show --json`: the stable JSON of all devices (or one) and their groups."""
    return snapshot_to_json(await store_snapshot(store, device_serial))
