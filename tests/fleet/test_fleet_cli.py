"""``tap-emulator fleet`` as a user runs it: a subprocess, Mosquitto on 127.0.0.1:1883, real stores.

Covered: 200 devices on the relay answer getName and their own identity on random devices; a restart
keeps every device's state (a rename on one device survives, the others keep theirs); per-device CoAP
and Tap TCP ports; a 2,000-device fleet synced into SQLite and into PostgreSQL, and a second process
(``--first 2000``) adding 2,000 more to the same PostgreSQL store, all listed by ``store show``; the
HTTP faces over the fleet's store; ports past the file limit refused before anything is made; a broker
that cannot be reached is exit 1 with one line, as for ``serve --mqtt``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiocoap
import httpx
import pytest

from bench.fleet_relay import RelayApp
from tap_emulator.cli import main
from tap_emulator.codec.apdu import Method, TapRequest, encode_request

from .conftest import (
    BROKER_URL,
    REPO,
    FleetSpawner,
    free_port_range,
    require_broker,
    store_counts,
    topics,
    unique_format,
    wait_for_store,
)

pytestmark = pytest.mark.timeout(300)

CONTENT, CHANGED, UNAUTHORIZED = 0x45, 0x44, 0x81
GROUP, DEVICE, INTERFACE = 1025, 3, 1024
ADMIN, SUPERVISOR = 0xFFFF, 0xFFFE


def get(obj: int, inst: int | None, res: int) -> bytes:
    return encode_request(TapRequest(Method.GET, obj, inst, res))


def put(obj: int, inst: int | None, res: int, body: bytes) -> bytes:
    return encode_request(TapRequest(Method.PUT, obj, inst, res, body))


def login(name: str, password: str) -> bytes:
    """POST /1024//0: a plain login (name and password, 16 bytes each)."""
    body = name.encode().ljust(16, b"\0") + password.encode().ljust(16, b"\0")
    return encode_request(TapRequest(Method.POST, INTERFACE, None, 0, body))


async def read(app: RelayApp, serial: str, frame: bytes) -> str:
    status, body = await app.request(topics(serial), frame)
    assert status == CONTENT, f"{serial}: {status:#04x}"
    return body.rstrip(b"\0").decode("ascii")


def serials_of(fmt: str, first: int, count: int) -> list[str]:
    return [fmt.format(index) for index in range(first, first + count)]


async def test_200_devices_answer_on_the_relay_and_keep_their_state_across_a_restart(
    spawn_fleet: FleetSpawner, tmp_path: Path
) -> None:
    """Plain logins (``--security none``) so the Python app can log in; SCRAM through the real SDK is
    tests/interop/test_sdk_fleet.py's."""
    require_broker()
    fmt = unique_format()
    serials = serials_of(fmt, 0, 200)
    args = (
        "--count",
        "200",
        "--serial-format",
        fmt,
        "--state",
        str(tmp_path / "fleet.sqlite3"),
        "--store",
        "off",
    )
    fleet = spawn_fleet(*args, "--security", "none")
    assert fleet.lines == [f"listening mqtt 200-devices {BROKER_URL}"]
    renamed, *others = random.Random(7).sample(serials, 4)
    async with RelayApp().connected() as app:
        for serial in others:
            assert await read(app, serial, get(GROUP, SUPERVISOR, 0)) == "supervisor"
            assert await read(app, serial, get(DEVICE, None, 2)) == serial  # its own identity
        status, _ = await app.request(topics(renamed), login("admin", "admin"))
        assert status == CHANGED
        status, _ = await app.request(topics(renamed), put(GROUP, SUPERVISOR, 0, b"night-shift"))
        assert status == CHANGED
        status, _ = await app.request(topics(others[0]), put(GROUP, SUPERVISOR, 0, b"intruder"))
        assert status == UNAUTHORIZED  # another device: its own sessions, nobody logged in there
    assert fleet.stop(signal.SIGINT) == 0
    fleet = spawn_fleet(*args)
    async with RelayApp().connected() as app:
        assert await read(app, renamed, get(GROUP, SUPERVISOR, 0)) == "night-shift"
        for serial in others:
            assert await read(app, serial, get(GROUP, SUPERVISOR, 0)) == "supervisor"
    assert fleet.stop() == 0
    assert "Traceback" not in fleet.stderr()


async def test_devices_with_ports_answer_coap_with_their_own_serials(spawn_fleet: FleetSpawner) -> None:
    coap_start = free_port_range(3, socket.SOCK_DGRAM)
    tcp_start = free_port_range(3, socket.SOCK_STREAM)
    fmt = unique_format()
    serials = serials_of(fmt, 0, 3)
    fleet = spawn_fleet(
        "--count",
        "3",
        "--serial-format",
        fmt,
        "--state",
        ":memory:",
        "--mqtt",
        "off",
        "--coap-ports",
        f"{coap_start}-",
        "--tcp-ports",
        f"{tcp_start}-{tcp_start + 2}",
        expect=4,
    )
    assert fleet.lines == [
        *(
            f"listening device {serial} coap udp 127.0.0.1:{coap_start + i} tcp 127.0.0.1:{tcp_start + i}"
            for i, serial in enumerate(serials)
        ),
        "listening fleet 3-devices (relay off)",
    ]
    context = await aiocoap.Context.create_client_context()
    try:
        for index in (0, 2):
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{coap_start + index}/3/0/2")
            response = await asyncio.wait_for(context.request(request).response, 10)
            assert response.payload.decode() == serials[index]
    finally:
        await context.shutdown()
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_start + 1)
    writer.close()
    await writer.wait_closed()
    del reader
    assert fleet.stop() == 0


def store_show(url: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The serials ``store show --json`` lists, each with the default profile's three groups."""
    capsys.readouterr()
    assert main(["store", "show", "--store", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert all(len(device["groups"]) == 3 for device in shown)
    return {device["serial"] for device in shown}


def test_2000_devices_sync_into_sqlite_and_the_cloud_shows_each_ones_backlog(
    spawn_fleet: FleetSpawner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = unique_format()
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    fleet = spawn_fleet(
        *("--count", "2000", "--serial-format", fmt, "--mqtt", "off", "--store", url),
        *("--http", "127.0.0.1:0"),
        expect=2,
    )
    http = fleet.lines[0].removeprefix("listening http ")
    assert fleet.lines[1] == "listening fleet 2000-devices (relay off)"
    wait_for_store(url, 2000, 3 * 2000)
    assert store_show(url, capsys) == set(serials_of(fmt, 0, 2000))
    serial = fmt.format(1234)
    sync = httpx.get(f"http://{http}/api/v1/devices/{serial}/sync", timeout=10).json()
    assert sync["serial"] == serial and sync["access_groups"] == 3
    assert sync["backlog"]["pending"] == 0 and sync["backlog"]["delivered"] >= 3
    assert fleet.stop() == 0


@pytest.mark.postgres
def test_two_processes_of_2000_devices_share_one_postgresql_store(
    spawn_fleet: FleetSpawner, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = unique_format()
    common = ("--count", "2000", "--serial-format", fmt, "--mqtt", "off", "--store", pg_url)
    first = spawn_fleet(*common)
    wait_for_store(pg_url, 2000, 3 * 2000)
    assert store_counts(pg_url) == (2000, 6000)
    second = spawn_fleet(*common, "--first", "2000")
    wait_for_store(pg_url, 4000, 3 * 4000)
    assert store_show(pg_url, capsys) == set(serials_of(fmt, 0, 4000))
    assert first.stop() == 0
    assert second.stop() == 0


def test_ports_beyond_the_file_limit_are_refused_before_anything_starts(tmp_path: Path) -> None:
    def low_limit() -> None:  # in the child: a hard limit the fleet cannot raise
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    done = subprocess.run(
        [sys.executable, "-m", "tap_emulator", "fleet", "--count", "300", "--coap-ports", "20000-"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=low_limit,
        check=False,
    )
    assert done.returncode == 2
    assert "file descriptors" in done.stderr and "ulimit -n" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "state").exists()  # refused before the state file was made


def test_an_unreachable_broker_is_exit_1_with_one_line_as_for_serve(tmp_path: Path) -> None:
    """The start fails once no broker has accepted the connection within the relay's connect timeout,
    as ``serve``'s does; the subscriptions' own allowance (30 s + N/200 s) is not waited for. The bound
    of the run is below that allowance, so waiting it out fails the test."""
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "tap_emulator", "fleet", "--count", "50", "--state", ":memory:"),
                *("--store", "off", "--mqtt", f"mqtt://127.0.0.1:{port}"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=25,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("tap-emulator:")]
    assert len(errors) == 1, done.stderr
    assert f"MQTT broker 127.0.0.1:{port} not reachable" in errors[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
