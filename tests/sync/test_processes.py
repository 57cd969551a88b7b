"""Sync across real processes: a SIGKILL between the store's confirmation and the local mark, and three
emulator processes sharing one PostgreSQL store."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tap_emulator.cli import main
from tap_emulator.state import DeviceState
from tap_emulator.store import ManagementStore, open_store
from tap_emulator.store.urls import sqlite_path
from tap_emulator.sync import KILL_AFTER_ACK_ENV

from .conftest import (
    coap_request,
    device_versions,
    running_emulator,
    store_matches_device,
    tree_of,
    wait_until,
    write_profile,
)

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
SERIAL = "EMU0000000001"
SUPERVISOR = 65534
SERVE = [
    sys.executable,
    "-m",
    "tap_emulator",
    "serve",
    "--coap",
    "127.0.0.1:0",
    "--tcp",
    "off",
    "--ws",
    "off",
    "--http",
    "off",
]


class Server:
    """A `tap-emulator serve` subprocess and its CoAP port."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*SERVE, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        line = self._readline(20.0)
        if not line.startswith("listening coap udp "):
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"server did not start: {line!r} {err}")
        self.port = int(line.rsplit(":", 1)[1])

    def _readline(self, timeout: float) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.process.kill()
                raise AssertionError("the server printed nothing in time")
        return self.process.stdout.readline().strip()

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.port}{path}"

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def install_apply_log(url: str) -> None:
    """Record every row the store inserts or updates in access_groups (what "applied" means)."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as connection:
            connection.executescript(
                """
                CREATE TABLE apply_log (group_id INTEGER, version INTEGER);
                CREATE TRIGGER log_insert AFTER INSERT ON access_groups
                BEGIN INSERT INTO apply_log VALUES (NEW.group_id, NEW.version); END;
                CREATE TRIGGER log_update AFTER UPDATE ON access_groups
                BEGIN INSERT INTO apply_log VALUES (NEW.group_id, NEW.version); END;
                """
            )
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE apply_log (group_id INTEGER, version BIGINT)")
        connection.execute(
            "CREATE FUNCTION log_apply() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO apply_log VALUES (NEW.group_id, NEW.version); RETURN NEW; END $$"
        )
        connection.execute(
            "CREATE TRIGGER log_apply AFTER INSERT OR UPDATE ON access_groups "
            "FOR EACH ROW EXECUTE FUNCTION log_apply()"
        )


def apply_log(url: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as connection:
            return connection.execute("SELECT group_id, version FROM apply_log").fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute("SELECT group_id, version FROM apply_log").fetchall()


async def test_sigkill_between_the_store_ack_and_the_local_mark_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path,
    store_url: str,
    store: ManagementStore,
    coap_client: aiocoap.Context,
    servers: list[Server],
) -> None:
    state = tmp_path / "device.sqlite3"
    async with running_emulator(state, store_url) as emulator:  # seeded and synced
        await wait_until(lambda: store_matches_device(store, tree_of(emulator)), 10)
    install_apply_log(store_url)

    server = Server(["--state", str(state), "--store", store_url], tmp_path, {KILL_AFTER_ACK_ENV: "1"})
    servers.append(server)
    response = await coap_request(coap_client, Code.PUT, server.uri(f"/group/{SUPERVISOR}/name"), b"crash", 0)
    assert response.code == Code.CHANGED
    assert server.process.wait(15) == -signal.SIGKILL

    # The store applied the change once; the device still holds it as pending (the mark never happened).
    stored = await store.get_group(SERIAL, SUPERVISOR)
    assert stored is not None and stored.name == "crash"
    assert apply_log(store_url) == [(SUPERVISOR, stored.version)]
    probe = DeviceState(state, clock=lambda: 0.0)
    try:
        pending = await probe.pending_outbox()
    finally:
        probe.close()
    assert [(row.instance_id, row.version) for row in pending] == [(SUPERVISOR, stored.version)]

    # Restarted: the replay is reported as already stored and the row settles; nothing applies twice.
    async with running_emulator(state, store_url) as emulator:
        tree = tree_of(emulator)

        async def drained() -> bool:
            return await tree.state.pending_outbox() == []

        await wait_until(drained, 10)
        assert device_versions(tree)[SUPERVISOR] == stored.version
        assert emulator.sync is not None
        assert emulator.sync.stats.already_stored == 1 and emulator.sync.stats.applied == 0
    assert apply_log(store_url) == [(SUPERVISOR, stored.version)]
    again = await store.get_group(SERIAL, SUPERVISOR)
    assert again == stored


@pytest.mark.postgres
async def test_three_emulator_processes_share_one_postgresql_store(
    tmp_path: Path,
    pg_url: str,
    coap_client: aiocoap.Context,
    servers: list[Server],
    capsys: pytest.CaptureFixture[str],
) -> None:
    serials = ["EMU-A-0001", "EMU-B-0002", "EMU-C-0003"]
    for serial in serials:
        profile = write_profile(tmp_path, serial)
        args = ["--profile", str(profile), "--state", str(tmp_path / f"{serial}.sqlite3"), "--store", pg_url]
        servers.append(Server(args, tmp_path))
    for round_number in range(5):
        for serial, server in zip(serials, servers, strict=True):
            name = f"{serial[4]}-r{round_number}".encode()
            response = await coap_request(
                coap_client, Code.PUT, server.uri(f"/group/{SUPERVISOR}/name"), name, 0
            )
            assert response.code == Code.CHANGED
    for server in servers:
        created = await coap_request(coap_client, Code.POST, server.uri("/group/42/create"))
        assert created.code == Code.CREATED

    store = await open_store(pg_url)
    try:

        async def all_synced() -> bool:
            for serial in serials:
                group = await store.get_group(serial, SUPERVISOR)
                if (
                    group is None
                    or group.name != f"{serial[4]}-r4"
                    or await store.get_group(serial, 42) is None
                ):
                    return False
            return True

        await wait_until(all_synced, 15)
        devices = await store.list_devices()
        assert [device.serial for device in devices] == serials
        assert all(device.model == "TAP 1.10 EMU" for device in devices)
        for serial in serials:
            assert set(await store.group_versions(serial)) == {0, 42, SUPERVISOR, 65535}
    finally:
        await store.close()
    assert [server.stop() for server in servers] == [0, 0, 0]
    for serial in serials:
        probe = DeviceState(tmp_path / f"{serial}.sqlite3", clock=lambda: 0.0)
        try:
            assert await probe.pending_outbox() == []
        finally:
            probe.close()
    capsys.readouterr()
    show = ["store", "show", "--store", pg_url, "--device", serials[1], "--json", "-q"]
    assert await asyncio.to_thread(main, show) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [device["serial"] for device in shown] == [serials[1]]
    assert [group["group_id"] for group in shown[0]["groups"]] == [0, 42, SUPERVISOR, 65535]
