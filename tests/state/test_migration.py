"""Migration 4 (every table keyed by device): a version-3 file, as the emulator wrote it before fleets,
opens with every row kept under the device key '', its outbox ids and AUTOINCREMENT mark kept, and
``serve`` serves it as before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.state import _SCHEMA, ONE_DEVICE, DeviceState, InstanceRow, InstanceWrite, StateFile
from tap_emulator.state.outbox import backlog_status_sync

pytestmark = pytest.mark.timeout(60)

# The schema of versions 1 to 3, frozen as those versions shipped it: a file of that age is what the
# migration must read, whatever later versions do.
VERSION_1_TO_3 = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE device_value (
        object_id INTEGER NOT NULL, resource_id INTEGER NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (object_id, resource_id));
    CREATE TABLE instance (
        object_id INTEGER NOT NULL, instance_id INTEGER NOT NULL,
        version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
        resource_values TEXT NOT NULL, credential BLOB,
        PRIMARY KEY (object_id, instance_id));
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id INTEGER NOT NULL, instance_id INTEGER NOT NULL, version INTEGER NOT NULL,
        payload TEXT NOT NULL, created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'rejected')),
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT, settled_at REAL);
    CREATE INDEX outbox_pending ON outbox (status, id);
    """,
    """
    CREATE TABLE outbox_pruned (
        id INTEGER PRIMARY KEY CHECK (id = 1), delivered INTEGER NOT NULL DEFAULT 0);
    INSERT INTO outbox_pruned (id, delivered) VALUES (1, 0);
    """,
    """
    CREATE TABLE target_page (page INTEGER PRIMARY KEY, data BLOB NOT NULL);
    """,
)
RENAMED = "kept-across-migration"
PRUNED = 7
TABLES = ("meta", "device_value", "instance", "outbox", "outbox_pruned", "target_page")


def test_the_frozen_history_is_the_modules() -> None:
    """Migrations only ever append: versions 1 to 3 are still written as they were."""
    assert _SCHEMA[:3] == VERSION_1_TO_3


def factory_rows(tmp_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The rows today's code seeds a default device with (groups with credentials, device values)."""
    tree = open_device(load_profile("default"), str(tmp_path / "seeded.sqlite3"))
    tree.state.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "seeded.sqlite3")) as conn:
        return {
            "meta": conn.execute("SELECT key, value FROM meta").fetchall(),
            "device_value": conn.execute("SELECT object_id, resource_id, value FROM device_value").fetchall(),
            "instance": conn.execute(
                "SELECT object_id, instance_id, version, deleted, resource_values, credential FROM instance"
            ).fetchall(),
        }


def version_3_file(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """A one-device state file of schema version 3 with the given rows, a renamed admin group, an outbox
    in every status with gaps in its ids, pruned deliveries and target memory pages."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for version, script in enumerate(VERSION_1_TO_3, start=1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", rows["meta"])
        conn.executemany("INSERT INTO device_value VALUES (?, ?, ?)", rows["device_value"])
        conn.executemany("INSERT INTO instance VALUES (?, ?, ?, ?, ?, ?)", rows["instance"])
        admin = json.loads(
            conn.execute("SELECT resource_values FROM instance WHERE instance_id = 0").fetchone()[0]
        )
        admin["0"] = RENAMED
        conn.execute("UPDATE instance SET resource_values = ? WHERE instance_id = 0", (json.dumps(admin),))
        outbox = [
            (1025, 0, 1, "delivered", 0, None),
            (1025, 0, 2, "pending", 3, "store down"),
            (1025, 3, 1, "delivered", 0, None),  # id 3, deleted below: a gap
            (1025, 1, 1, "rejected", 1, "refused by the store"),
            (1025, 2, 4, "pending", 0, None),
        ]
        for object_id, instance_id, version, status, attempts, error in outbox:
            conn.execute(
                "INSERT INTO outbox (object_id, instance_id, version, payload, created_at, status, attempts, "
                "last_error, next_attempt_at, settled_at) VALUES (?, ?, ?, ?, 100, ?, ?, ?, ?, ?)",
                (
                    object_id,
                    instance_id,
                    version,
                    json.dumps({"instance_id": instance_id, "version": version}),
                    status,
                    attempts,
                    error,
                    200.0 if attempts else 0,
                    None if status == "pending" else 150.0,
                ),
            )
        conn.execute("DELETE FROM outbox WHERE id = 3")
        conn.execute(
            "INSERT INTO outbox (id, object_id, instance_id, version, payload, created_at) "
            "VALUES (9, 1025, 4, 1, '{}', 100)"
        )
        conn.execute("DELETE FROM outbox WHERE id = 9")  # sqlite_sequence says 9; the largest id is 5
        conn.execute("UPDATE outbox_pruned SET delivered = ?", (PRUNED,))
        conn.executemany("INSERT INTO target_page VALUES (?, ?)", [(0, b"\x01" * 256), (3, b"\x03" * 256)])
        conn.execute("COMMIT")


def contents(path: Path, *, device_column: bool) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (without the device column, which must then be '' everywhere)."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for table in TABLES:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            if device_column:
                assert columns[0] == "device" or (table == "outbox" and columns[1] == "device"), columns
                assert conn.execute(f"SELECT DISTINCT device FROM {table}").fetchall() in ([], [("",)])
            kept = [c for c in columns if c not in ("device", "id")] if table == "outbox_pruned" else columns
            kept = [c for c in kept if c != "device"]
            result[table] = sorted(conn.execute(f"SELECT {', '.join(kept)} FROM {table}").fetchall())
    return result


def primary_key(path: Path, table: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        columns = sorted((row[5], row[1]) for row in conn.execute(f"PRAGMA table_info({table})") if row[5])
    return [name for _, name in columns]


def test_a_version_3_file_migrates_with_every_row_kept_under_the_device_key_of_one_device(
    tmp_path: Path,
) -> None:
    path = tmp_path / "device.sqlite3"
    version_3_file(path, factory_rows(tmp_path))
    before = contents(path, device_column=False)
    state = DeviceState(path, clock=lambda: 1000.0)
    try:
        snapshot = state.load()
        assert state.key == ONE_DEVICE
        assert snapshot.instances[(1025, 0)].values[0] == RENAMED
        assert snapshot.instances[(1025, 0)].credential  # the stored key material came along
        assert snapshot.memory_pages == {0: b"\x01" * 256, 3: b"\x03" * 256}
        status = backlog_status_sync(state)
        assert (status.pending, status.rejected, status.delivered) == (2, 1, 1 + PRUNED)
        assert status.last_error == "store down" and status.last_rejection == "refused by the store"
        assert state.file.devices() == [ONE_DEVICE]
    finally:
        state.close()
    after = contents(path, device_column=True)
    assert after == before
    for table, key in (
        ("meta", ["device", "key"]),
        ("device_value", ["device", "object_id", "resource_id"]),
        ("instance", ["device", "object_id", "instance_id"]),
        ("outbox_pruned", ["device"]),
        ("target_page", ["device", "page"]),
    ):
        assert primary_key(path, table) == key
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_SCHEMA) == 4
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone() == (9,)
        assert {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%_v3'")
        } == set()


async def test_a_new_outbox_row_after_the_migration_gets_an_unused_id(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    version_3_file(path, factory_rows(tmp_path))
    fleet = StateFile(path, clock=lambda: 0.0)
    try:
        view = fleet.device(ONE_DEVICE)
        row = view.load().instances[(1025, 0)]
        await view.commit([InstanceWrite(InstanceRow(1025, 0, row.version + 1, False, row.values), {"x": 1})])
        ids = [r.id for r in await view.pending_outbox()]
        assert ids == [2, 5, 10]  # past every id ever used, not just past the largest one left
    finally:
        fleet.close()


async def test_serve_reads_a_version_3_file_as_before(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "device.sqlite3"
    version_3_file(path, factory_rows(tmp_path))
    server = spawn_server("--state", str(path))
    context = await aiocoap.Context.create_client_context()
    try:
        message = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{server.port}/1025/0/0")
        response = await asyncio.wait_for(context.request(message).response, 5)
        assert response.code == aiocoap.CONTENT and response.payload == RENAMED.encode()
        rename = aiocoap.Message(
            code=aiocoap.PUT, uri=f"coap://127.0.0.1:{server.port}/1025/0/0", payload=b"new"
        )
        assert (await asyncio.wait_for(context.request(rename).response, 5)).code == aiocoap.CHANGED
    finally:
        await context.shutdown()
    assert server.stop() == 0
    with contextlib.closing(sqlite3.connect(path)) as conn:
        newest = conn.execute(
            "SELECT id, device, payload FROM outbox WHERE instance_id = 0 ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert newest[0] > 9 and newest[1] == ONE_DEVICE and json.loads(newest[2])["values"]["name"] == "new"
