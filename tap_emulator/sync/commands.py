"""`tap-emulator store show | status`: what the management store holds, and what a device has yet to send.

`show` reads the store (any engine) and prints devices with their groups; `--json` is the stable form
of `tap_emulator.store.snapshot`. `status` reads a device's state file (running or stopped: WAL lets a
reader in beside the server) and prints the outbox backlog, the oldest pending change and the last error.
Both only read: a missing SQLite store or state file is an error, never silently created; a damaged or
locked file is one line (exit 1), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tap_emulator.state import DeviceState, FleetFileError, StateFile
from tap_emulator.state.outbox import BacklogStatus, backlog_status_sync
from tap_emulator.store import (
    DeviceSnapshot,
    open_store,
    redact_url,
    snapshot_to_json,
    store_snapshot,
)
from tap_emulator.store.urls import sqlite_path

from . import DEFAULT_STORE_NAME, check_store_url

__all__ = [
    "DEFAULT_SHOW_URL",
    "CommandError",
    "add_store_commands",
    "format_snapshot",
    "format_status",
    "run_store_command",
]

DEFAULT_SHOW_URL = f"sqlite:///state/{DEFAULT_STORE_NAME}"
# A running device holds its state's write lock for milliseconds at a time; longer means another
# program locked the file, which `status` reports rather than waiting for.
STATUS_BUSY_TIMEOUT = 3.0


class CommandError(Exception):
    """A store command cannot run (missing file, unreachable store); the message is for the user."""


def add_store_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `store show` and `store status` to the CLI's subcommands (`common` adds the shared options)."""
    store = commands.add_parser("store", help="inspect the management store and the sync backlog")
    actions = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="devices and their groups as the management store holds them")
    show.add_argument(
        "--store", default=DEFAULT_SHOW_URL, metavar="URL", help=f"store URL (default {DEFAULT_SHOW_URL})"
    )
    show.add_argument("--device", metavar="SERIAL", default=None, help="only this device")
    show.add_argument("--json", action="store_true", help="the stable JSON form")
    show.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    show.add_argument("-q", "--quiet", action="store_true", help="only errors")
    status = actions.add_parser("status", help="backlog of a device's changes not yet in the store")
    common(status)
    status.add_argument(
        "--device", metavar="SERIAL", default=None, help="this device of a fleet's state file"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")


def run_store_command(args: argparse.Namespace, default_state: Callable[[str], str]) -> int:
    """Run `store show|status`; `default_state(profile)` is the state path when --state is not given."""
    if args.store_command == "show":
        text = asyncio.run(_show(args.store, args.device, args.json))
    else:
        text = _status(args.state or default_state(args.profile), args.json, args.device)
    print(text, end="")
    return 0


async def _show(url: str, device: str | None, as_json: bool) -> str:
    check_store_url(url)
    if url.lower().startswith("sqlite:"):
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).is_file():
            raise CommandError(f"no management store at {path}")
    store = await open_store(url)
    try:
        snapshots = await store_snapshot(store, device)
    finally:
        await store.close()
    if as_json:
        return snapshot_to_json(snapshots)
    if not snapshots:
        return f"no devices in {redact_url(url)}\n" if device is None else f"no device {device}\n"
    return format_snapshot(snapshots)


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def format_snapshot(snapshots: list[DeviceSnapshot]) -> str:
    """The human-readable form of `store show`: one block per device, one line per group."""
    lines: list[str] = []
    for snapshot in snapshots:
        device = snapshot.device
        lines.append(
            f"device {device.serial}  model {device.model!r}  firmware {device.firmware!r}  "
            f"last seen {_when(device.last_seen)}"
        )
        live = [group for group in snapshot.groups if not group.deleted]
        lines.append(f"  {len(live)} group(s), {len(snapshot.groups) - len(live)} deleted")
        for group in snapshot.groups:
            if group.deleted:
                lines.append(f"  {group.group_id:>5}  v{group.version}  (deleted {_when(group.updated_at)})")
                continue
            kind = "profile" if group.is_profile else f"user of {group.alias}"
            line = (
                f"  {group.group_id:>5}  v{group.version}  {group.name!r:<18} {kind:<16} "
                f"lifetime {group.session_lifetime:<5}  password {'set' if group.password_set else 'none'}"
            )
            if group.scram_salt:
                line += f"  salt {group.scram_salt:#010x}  iterations {group.scram_iteration}"
            lines.append(line)
    return "\n".join(lines) + "\n"


def _status(path: str, as_json: bool, device: str | None = None) -> str:
    if path == ":memory:" or not Path(path).is_file():
        raise CommandError(f"no state file at {path}")
    if device is None:
        try:
            state = DeviceState(path, clock=time.time, busy_timeout=STATUS_BUSY_TIMEOUT)
        except FleetFileError as exc:
            raise CommandError(f"{exc}: name one with --device SERIAL") from None
        try:
            status = backlog_status_sync(state)
        finally:
            state.close()
    else:
        file = StateFile(path, clock=time.time, busy_timeout=STATUS_BUSY_TIMEOUT)
        try:
            if device not in file.devices():
                raise CommandError(f"no device {device!r} in the state file {path}")
            status = backlog_status_sync(file.device(device))
        finally:
            file.close()
    where = path if device is None else f"{path} device {device}"
    if as_json:
        fields = {"state": path, **({} if device is None else {"device": device}), **status.as_dict()}
        return json.dumps(fields, indent=2) + "\n"
    return format_status(where, status, time.time())


def format_status(path: str, status: BacklogStatus, now: float) -> str:
    """The human-readable form of `store status`."""
    lines = [f"state {path}"]
    lines.append(f"backlog: {status.pending} pending change(s) of {status.pending_instances} group(s)")
    if status.oldest_pending_at is not None:
        age = max(0.0, now - status.oldest_pending_at)
        lines.append(
            f"oldest pending: {_when(status.oldest_pending_at)} ({age:.1f} s ago, "
            f"{status.oldest_pending_attempts} attempt(s))"
        )
    else:
        lines.append("oldest pending: -")
    lines.append(f"last error: {status.last_error or '-'}")
    if status.next_attempt_at is not None:
        lines.append(f"next attempt: {_when(status.next_attempt_at)}")
    lines.append(
        f"rejected: {status.rejected}" + (f" (last: {status.last_rejection})" if status.rejected else "")
    )
    lines.append(f"delivered: {status.delivered} (last {_when(status.last_delivered_at)})")
    return "\n".join(lines) + "\n"
