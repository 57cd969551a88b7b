"""A full disk: writes fail with their cause (SQLITE_FULL), the log says so once per episode, and the
device recovers by itself once space is back.

Two real ways to fill a disk: SQLite's ``PRAGMA max_page_count`` on the state's own connection (a real
SQLITE_FULL, raised while a statement allocates a page), and, where this process may mount, a small
tmpfs filled up with a file (SQLITE_FULL when the commit appends to the WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.app import Emulator, ServeOptions
from tap_emulator.model import Operation
from tap_emulator.state import DeviceState, InstanceRow, InstanceWrite, StateError
from tap_emulator.store import open_store
from tap_emulator.sync import SyncSettings
from tap_emulator.tree import MAINTENANCE, Request, Status

pytestmark = pytest.mark.timeout(60)

STATE_LOGGER = "tap_emulator.state"


def write(iid: int, version: int) -> InstanceWrite:
    row = InstanceRow(1025, iid, version, False, {0: f"name-{version}", 4: 300}, None)
    return InstanceWrite(row, {"instance_id": iid, "version": version, "values": {"name": "x" * 300}})


def limit_pages(state: DeviceState, extra: int) -> None:
    """Let the state file grow by at most `extra` pages from now on (0: not at all)."""

    def limit(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra}")

    state.file.call_sync(limit)


def full_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == STATE_LOGGER and "SQLITE_FULL" in r.getMessage()]


def assert_one_line_per_episode(caplog: pytest.LogCaptureFixture, failures: int) -> None:
    """Each SQLITE_FULL line opens an episode that a "succeed again" line closes before the next one
    opens (a write that still fits in a page ends an episode), and the lines are far fewer than the
    failures: the log does not grow with the writes."""
    kinds = [
        "full" if "SQLITE_FULL" in r.getMessage() else "recovered"
        for r in caplog.records
        if r.name == STATE_LOGGER and ("SQLITE_FULL" in r.getMessage() or "succeed again" in r.getMessage())
    ]
    assert kinds and kinds[0] == "full"
    assert all(a != b for a, b in itertools.pairwise(kinds)), kinds
    assert kinds.count("full") <= max(1, failures // 20), (kinds, failures)


def test_a_full_database_fails_writes_with_sqlite_full_once_logged_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = DeviceState(tmp_path / "device.sqlite3", clock=lambda: 1.0)
    try:
        limit_pages(state, 0)
        errors: list[StateError] = []
        with caplog.at_level(logging.DEBUG, STATE_LOGGER):
            for version in range(1, 101):
                try:
                    state.commit_sync([write(version % 3, version)])
                except StateError as error:
                    errors.append(error)
            assert len(errors) > 50  # the file had room for a few rows only
            assert {error.cause for error in errors} == {"SQLITE_FULL"}
            assert all("database or disk is full" in str(error) for error in errors)
            records = full_records(caplog)
            assert len(records) == 1 and records[0].levelno == logging.ERROR
            assert records[0].exc_info is None  # one line, no traceback
            limit_pages(state, 1000)
            state.commit_sync([write(1, 1000)])
        recovered = [r for r in caplog.records if "succeed again" in r.getMessage()]
        assert len(recovered) == 1 and f"after {len(errors)} failure(s)" in recovered[0].getMessage()
        assert state.load().instances[(1025, 1)].version == 1000
    finally:
        state.close()


async def test_coap_writes_on_a_full_disk_get_5_00_and_one_log_line(
    emulator: Any, coap: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limit_pages(emulator.tree.state, 0)
    statuses: list[str] = []
    with caplog.at_level(logging.INFO, STATE_LOGGER):
        # Concurrent writes too: a group commit that fails fails each of its writes, and logs nothing more.
        for batch in range(30):
            responses = await asyncio.gather(
                *(
                    coap.request("PUT", f"/1025/{gid}/0", f"n{batch}-{gid}".encode())
                    for gid in (0, 65534, 65535)
                )
            )
            statuses += [f"{int(r.code) >> 5}.{int(r.code) & 0x1F:02d}" for r in responses]
        assert statuses.count("5.00") > 60 and set(statuses) <= {"2.04", "5.00"}
        assert_one_line_per_episode(caplog, statuses.count("5.00"))
        assert not [r for r in caplog.records if r.exc_info]
        # A refused write is rolled back in the tree too: reads show the last stored name.
        stored = emulator.tree.state.load().instances[(1025, 0)].values[0]
        assert (await coap.request("GET", "/1025/0/0")).payload.decode() == stored
        limit_pages(emulator.tree.state, 1000)
        response = await coap.request("PUT", "/1025/0/0", b"space-back")
        assert int(response.code) == 0x44  # 2.04
    assert (await coap.request("GET", "/1025/0/0")).payload == b"space-back"
    assert [r for r in caplog.records if "succeed again" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info]


@contextlib.contextmanager
def small_filesystem(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount_point`; skips when this process may not mount."""
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the max_page_count tests cover the rest)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=10, check=False)


def fill(path: Path) -> None:
    """Write `path` until the filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 512):
                pass
    finally:
        os.close(fd)


def test_a_really_full_filesystem_keeps_the_commit_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_filesystem(tmp_path / "small", "512k") as small:
        state = DeviceState(small / "device.sqlite3", clock=lambda: 1.0)
        try:
            state.commit_sync([write(1, 1)])
            fill(small / "filler")
            errors: list[StateError] = []
            with caplog.at_level(logging.INFO, STATE_LOGGER):
                for version in range(2, 200):
                    try:
                        state.commit_sync([write(version % 3, version)])
                    except StateError as error:
                        errors.append(error)
                assert errors, "the filesystem never filled up"
                assert {error.cause for error in errors} == {"SQLITE_FULL"}
                assert len(full_records(caplog)) == 1
                (small / "filler").unlink()
                state.commit_sync([write(1, 500)])
            assert state.load().instances[(1025, 1)].version == 500
        finally:
            state.close()


async def test_a_full_disk_with_sync_running_logs_no_traceback_and_the_store_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store is out of reach while the disk is full (its directory is a plain file for now), so the
    # sync task keeps retrying, and each retry's outbox bookkeeping fails on the full disk too.
    blocker = tmp_path / "store-dir"
    blocker.write_bytes(b"")
    store_url = f"sqlite:///{blocker}/store.sqlite3"
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=None,
            tcp=None,
            ws=None,
            http=None,
            store=store_url,
            sync=SyncSettings(backoff_base=0.01, backoff_cap=0.05),
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        tree = emulator.tree
        assert tree is not None
        with caplog.at_level(logging.INFO):
            limit_pages(tree.state, 0)
            statuses = [
                (
                    await tree.handle(Request(Operation.WRITE, 1025, 65534, 0, f"n{i}", caller=MAINTENANCE))
                ).status
                for i in range(200)
            ]
            assert statuses.count(Status.INTERNAL_SERVER_ERROR) > 100
            await asyncio.sleep(0.3)  # the sync task retries meanwhile, its outbox writes failing too
            limit_pages(tree.state, 1000)
            blocker.unlink()
            blocker.mkdir()
            back = await tree.handle(Request(Operation.WRITE, 1025, 65534, 0, "back", caller=MAINTENANCE))
            assert back.status is Status.CHANGED
            store = await open_store(store_url)
            try:
                for _ in range(200):
                    held = await store.get_group(tree.serial_number, 65534)
                    if held is not None and held.name == "back":
                        break
                    await asyncio.sleep(0.05)
                assert held is not None and held.name == "back"
            finally:
                await store.close()
    finally:
        await emulator.stop()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert_one_line_per_episode(caplog, statuses.count(Status.INTERNAL_SERVER_ERROR))
