"""Fixtures for the fleet tests: ``tap-emulator fleet`` subprocesses, the app side of the relay, stores.

Every fleet gets serials of its own (a uuid-based prefix): the broker (Mosquitto on 127.0.0.1:1883)
is shared with every other test and engineer on the machine.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from tap_emulator.codec.mqtt_relay import relay_key, relay_topics
from tap_emulator.config import DEFAULT_NET_KEY

REPO = Path(__file__).resolve().parents[2]
BROKER = ("127.0.0.1", 1883)
BROKER_URL = "mqtt://127.0.0.1:1883"


def require_broker() -> None:
    try:
        socket.create_connection(BROKER, timeout=1).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto is not listening on 127.0.0.1:1883 ({exc})")


def unique_format() -> str:
    """A serial format of this test's own: 'EMUF' + 6 hex digits + a five-digit index."""
    return "EMUF" + uuid.uuid4().hex[:6].upper() + "{:05d}"


def topics(serial: str, net_key: str = DEFAULT_NET_KEY) -> tuple[str, str]:
    """(command, answer) relay topics of a device, as the SDK computes them."""
    derived = relay_topics(serial, relay_key(net_key, serial))
    return derived.command, derived.answer


@dataclass
class FleetProcess:
    process: subprocess.Popen[str]
    lines: list[str]
    log: Path
    args: tuple[str, ...] = field(default=())

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


class FleetSpawner:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[str]] = []

    def __call__(self, *args: str, expect: int = 1, timeout: float = 120.0) -> FleetProcess:
        """Run ``tap-emulator fleet ARGS`` and wait for ``expect`` lines starting with 'listening'."""
        log = self.tmp_path / f"fleet-{len(self.started)}.stderr"
        with log.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "tap_emulator", "fleet", *args],
                cwd=self.tmp_path,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        self.started.append(process)
        fleet = FleetProcess(process, [], log, args)
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while len(fleet.lines) < expect:
                left = deadline - time.monotonic()
                if left <= 0 or process.poll() is not None:
                    process.kill()
                    process.wait(10)
                    raise AssertionError(f"the fleet did not start: {fleet.lines} {fleet.stderr()[-3000:]}")
                if not selector.select(min(left, 0.5)):
                    continue
                # Raw reads: a buffered readline could keep lines the selector no longer reports.
                buffered += os.read(process.stdout.fileno(), 65536)
                *lines, buffered = buffered.split(b"\n")
                fleet.lines += [line.decode() for line in lines if line.startswith(b"listening")]
        return fleet

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)


@pytest.fixture
def spawn_fleet(tmp_path: Path) -> Iterator[FleetSpawner]:
    spawner = FleetSpawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.close()


def store_counts(url: str) -> tuple[int, int]:
    """(devices, live access groups) the store holds, read straight from its tables."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not Path(path).exists():
            return 0, 0
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
            return (
                conn.execute("SELECT count(*) FROM devices WHERE model <> ''").fetchone()[0],
                conn.execute("SELECT count(*) FROM access_groups WHERE NOT deleted").fetchone()[0],
            )
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        devices = conn.execute("SELECT count(*) FROM devices WHERE model <> ''").fetchone()
        groups = conn.execute("SELECT count(*) FROM access_groups WHERE NOT deleted").fetchone()
    assert devices is not None and groups is not None
    return int(devices[0]), int(groups[0])


def wait_for_store(url: str, devices: int, groups: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    held = (0, 0)
    while time.monotonic() < deadline:
        try:
            held = store_counts(url)
        except Exception:  # the store is being created by the fleet: ask again
            held = (0, 0)
        if held[0] >= devices and held[1] >= groups:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"the store holds {held[0]} devices and {held[1]} groups, not {devices} and {groups}"
    )


@pytest.fixture
def pg_url(pg_server: str, pg_schema: str) -> str:
    """The test's PostgreSQL store: its own schema on the server (search_path in the URL)."""
    options = quote(f"-c search_path={pg_schema}", safe="")
    return f"{pg_server}{'&' if '?' in pg_server else '?'}options={options}"


def free_port_range(count: int, kind: int) -> int:
    """The first port of ``count`` consecutive ports that are free now (UDP or TCP, as ``kind`` says)."""
    rng = uuid.uuid4().int
    for attempt in range(50):
        start = 20000 + (rng + attempt * 7919) % 30000
        holders: list[socket.socket] = []
        try:
            for port in range(start, start + count):
                sock = socket.socket(socket.AF_INET, kind)
                holders.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in holders:
                sock.close()
        return start
    raise AssertionError("no free port range")
