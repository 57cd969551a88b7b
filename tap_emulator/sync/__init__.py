"""Cloud sync: every change of a group (object 1025) reaches the management store, exactly once in effect.

`SyncTask` (asyncio) drains one device's outbox into a `ManagementStore`; `FleetSync` does it for any
number of devices (`SyncSubject`) in one task and batched store calls; both run `DeviceSync`'s steps.
`core` holds their decisions as plain functions. `store_url_for` chooses the store a `serve` reports to.
"""

from __future__ import annotations

from pathlib import Path

from tap_emulator.state import MEMORY
from tap_emulator.store import StoreError, redact_url
from tap_emulator.store.urls import sqlite_path

from .core import (
    PUBLIC_VALUES,
    PendingGroup,
    ReconcilePlan,
    UnsafePayload,
    backoff_delay,
    coalesce,
    group_record,
    next_heartbeat,
    plan_reconcile,
    reconciled_versions,
    tombstone_payload,
)
from .fleet import FleetSync
from .subject import SyncSubject
from .task import KILL_AFTER_ACK_ENV, SyncSettings, SyncStats, SyncTask

__all__ = [
    "DEFAULT_STORE_NAME",
    "KILL_AFTER_ACK_ENV",
    "PUBLIC_VALUES",
    "FleetSync",
    "PendingGroup",
    "ReconcilePlan",
    "SyncSettings",
    "SyncStats",
    "SyncSubject",
    "SyncTask",
    "UnsafePayload",
    "backoff_delay",
    "check_store_url",
    "coalesce",
    "group_record",
    "next_heartbeat",
    "plan_reconcile",
    "reconciled_versions",
    "store_url_for",
    "tombstone_payload",
]

DEFAULT_STORE_NAME = "management-store.sqlite3"


def store_url_for(option: str | None, state_path: str) -> str | None:
    """The store URL `serve` uses: `option` as given, None for "off" (no sync).

    Without an option the store is a SQLite file beside the state file (state/management-store.sqlite3
    by default, shared by every device whose state lives in that directory). A device kept in memory
    (`--state :memory:`) leaves no files behind, so it syncs only when a store is named explicitly.
    """
    if option is not None:
        if option == "off":
            return None
        check_store_url(option)
        return option
    if state_path == MEMORY:
        return None
    return f"sqlite:///{Path(state_path).parent / DEFAULT_STORE_NAME}"


def check_store_url(url: str) -> None:
    """StoreError unless `url` names an engine `open_store` knows (checked before serving, not later)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        sqlite_path(url)
    elif scheme not in ("postgresql", "postgres"):
        raise StoreError(
            f"unsupported store URL {redact_url(url)!r}: use sqlite:///PATH, postgresql://... or off"
        )
