"""The management store: the cloud-side copy of each emulated Tap's devices and access groups.

The sync task pushes group state here with version-guarded upserts; `tap-emulator store show` reads it.
Two engines sit behind the one `ManagementStore` interface, chosen by URL in `open_store`: SQLite
(embedded default) and PostgreSQL (shared by several emulator processes; needs tap-emulator[postgres]).
"""

from .records import DeviceRecord, GroupRecord, ManagementStore, MembershipOutcome, StoreError, StoreRejected
from .snapshot import DeviceSnapshot, snapshot_to_json, store_snapshot, store_snapshot_json
from .urls import open_store, redact_url

__all__ = [
    "DeviceRecord",
    "DeviceSnapshot",
    "GroupRecord",
    "ManagementStore",
    "MembershipOutcome",
    "StoreError",
    "StoreRejected",
    "open_store",
    "redact_url",
    "snapshot_to_json",
    "store_snapshot",
    "store_snapshot_json",
]
