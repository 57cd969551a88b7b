"""The embedded store's files changed under a running `serve` (a subprocess, real files, real CoAP):
deleted or replaced, the sync task notices, opens the file afresh and pushes the device's groups again;
truncated or scribbled over (its -shm included, which WAL mode mapped into the process: SIGBUS), the
device keeps answering and the store is rebuilt where it can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tap_emulator.state import DeviceState

from .conftest import coap_request, write_profile

pytestmark = pytest.mark.timeout(90)

SERIAL = "EMU0000000001"
SIDE_FILES = ("-journal", "-wal", "-shm")


def stored_groups(store: Path, serial: str = SERIAL) -> dict[int, str]:
    """group id -> name of the device's live groups as the store file at `store` holds them now."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute(
                "SELECT group_id, name FROM access_groups WHERE device_serial = ? AND NOT deleted", (serial,)
            ).fetchall()
    except sqlite3.Error:  # not there yet, or being rebuilt
        return {}
    return dict(rows)


def device_groups(state: Path) -> dict[int, str]:
    """group id -> name of the device's live groups, from its state file (read beside the server)."""
    opened = DeviceState(state, clock=lambda: 0.0)
    try:
        instances = opened.load().instances
    finally:
        opened.close()
    return {
        gid: row.values.get(0, "") for (oid, gid), row in instances.items() if oid == 1025 and not row.deleted
    }


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def rename(client: aiocoap.Context, port: int, group_id: int, name: str) -> None:
    uri = f"coap://127.0.0.1:{port}/1025/{group_id}/0"
    response = await coap_request(client, Code.PUT, uri, name.encode())
    assert response.code == Code.CHANGED, response


@pytest.fixture
def serving(spawn_server: Callable[..., Any], tmp_path: Path) -> tuple[Any, Path, Path]:
    """A serve subprocess with its state and its default store (beside the state) in tmp_path/state."""
    state = tmp_path / "state" / "device.sqlite3"
    server = spawn_server("--state", str(state))
    return server, state, state.parent / "management-store.sqlite3"


@pytest.mark.parametrize("change", ["delete", "replace"])
async def test_a_store_file_deleted_or_replaced_under_serve_is_rebuilt_with_the_device_groups(
    serving: tuple[Any, Path, Path], coap_client: aiocoap.Context, tmp_path: Path, change: str
) -> None:
    server, state, store = serving
    await rename(coap_client, server.port, 65534, "before")
    await eventually(lambda: stored_groups(store).get(65534) == "before")
    for suffix in ("", *SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{store}{suffix}").unlink()
    if change == "replace":  # another, empty SQLite database where the store was
        with contextlib.closing(sqlite3.connect(tmp_path / "other.sqlite3")) as conn:
            conn.execute("CREATE TABLE unrelated (x)")
        (tmp_path / "other.sqlite3").replace(store)
    await rename(coap_client, server.port, 65535, "after")
    expected = {**device_groups(state)}
    assert expected[65535] == "after" and expected[65534] == "before" and len(expected) >= 3
    # Every group of the device, not just the one that changed: the task reconciled and re-pushed.
    await eventually(lambda: stored_groups(store) == expected)
    assert server.process.poll() is None
    log = server.stderr()
    assert "deleted or replaced" in log and "Traceback" not in log


async def test_truncating_or_scribbling_over_the_store_files_does_not_kill_serve(
    serving: tuple[Any, Path, Path], coap_client: aiocoap.Context
) -> None:
    server, state, store = serving
    await rename(coap_client, server.port, 65534, "first")
    await eventually(lambda: stored_groups(store).get(65534) == "first")
    # What killed the process in WAL mode: the -shm file it had mapped, truncated (SIGBUS).
    for suffix in SIDE_FILES:
        side = Path(f"{store}{suffix}")
        if side.exists():
            os.truncate(side, 0)
    for round_ in range(5):
        await rename(coap_client, server.port, 65534, f"round{round_}")
        await asyncio.sleep(0.1)
    # Garbage side files and the store itself cut to nothing.
    for suffix in SIDE_FILES:
        Path(f"{store}{suffix}").write_bytes(os.urandom(4096) * 8)
    await rename(coap_client, server.port, 65534, "scribbled")
    os.truncate(store, 0)
    await rename(coap_client, server.port, 65535, "truncated")
    for _ in range(5):
        response = await coap_request(coap_client, Code.GET, f"coap://127.0.0.1:{server.port}/1025/65535/0")
        assert response.code == Code.CONTENT and response.payload == b"truncated"
    assert server.process.poll() is None, server.stderr()
    # The truncated file reads as an empty database: the task rebuilds it with the device's groups.
    await eventually(lambda: stored_groups(store) == device_groups(state))
    assert "Traceback" not in server.stderr()


async def test_three_serve_processes_share_one_embedded_store_without_shared_memory(
    spawn_server: Callable[..., Any], coap_client: aiocoap.Context, tmp_path: Path
) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    serials = ["EMU-A-0001", "EMU-B-0002", "EMU-C-0003"]
    servers = [
        spawn_server(
            "--profile", str(write_profile(tmp_path, serial)), "--state", str(directory / f"{serial}.sqlite3")
        )
        for serial in serials
    ]
    store = directory / "management-store.sqlite3"
    for round_ in range(10):  # the three devices write at once, a reader looks on
        await asyncio.gather(
            *(
                rename(coap_client, server.port, 65534, f"{serial[4]}{round_}")
                for serial, server in zip(serials, servers, strict=True)
            )
        )
        stored_groups(store, serials[round_ % 3])
    final = {serial: f"{serial[4]}9" for serial in serials}
    await eventually(lambda: {serial: stored_groups(store, serial).get(65534) for serial in serials} == final)
    assert not Path(f"{store}-shm").exists() and not Path(f"{store}-wal").exists()
    for server in servers:
        assert server.process.poll() is None
        log = server.stderr()
        assert "Traceback" not in log and "locked" not in log and "unavailable" not in log
