"""``tap-emulator serve`` and ``reset`` as a user runs them: subprocesses, real UDP on 127.0.0.1.

Covers the start-up line, durability across SIGKILL, ``--state :memory:``, factory reset with
tombstones, a busy port, clean shutdown on SIGINT/SIGTERM, and usage errors (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from tap_emulator.cli import main

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 30


# `serve` with only CoAP: the fixed default ports of the other faces could be held by another test.
SERVE_WITHOUT_TAP = ("serve", "--tcp", "off", "--ws", "off", "--http", "off")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


async def call(context: Any, port: int, method: str, path: str, payload: bytes = b"") -> Any:
    message = aiocoap.Message(
        code=getattr(aiocoap, method), uri=f"coap://127.0.0.1:{port}{path}", payload=payload
    )
    return await asyncio.wait_for(context.request(message).response, 5)


def dotted(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}"


# ----------------------------------------------------------------------------------- start-up and durability


def test_serve_announces_its_endpoint_and_stops_on_sigterm(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = spawn_server("--state", str(tmp_path / "s.db"))
    assert 0 < server.port < 65536
    assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signals_stop_serve_cleanly(spawn_server: Callable[..., Any], tmp_path: Path, sig: int) -> None:
    server = spawn_server("--state", str(tmp_path / "s.db"))
    context = await aiocoap.Context.create_client_context()
    try:
        assert (await call(context, server.port, "PUT", "/1025/0/0", b"before-stop")).payload == b""
    finally:
        await context.shutdown()
    assert server.stop(sig) == 0
    assert "Traceback" not in server.stderr()
    # A clean stop leaves a state file that opens again with the change in it.
    restarted = spawn_server("--state", str(tmp_path / "s.db"))
    context = await aiocoap.Context.create_client_context()
    try:
        assert (await call(context, restarted.port, "GET", "/1025/0/0")).payload == b"before-stop"
    finally:
        await context.shutdown()


async def test_every_acknowledged_write_survives_sigkill(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    state = tmp_path / "device.sqlite3"
    server = spawn_server("--state", str(state))
    groups = list(range(1, 9))
    acknowledged: dict[tuple[int, str], bytes] = {}
    context = await aiocoap.Context.create_client_context()
    try:
        for group in groups:
            assert dotted(await call(context, server.port, "POST", f"/1025/{group}/65535")) == "2.01"

        async def stream(group: int) -> None:
            # Concurrent streams land in shared transactions (group commit); each ack must still be durable.
            for step in range(25):
                path, value = (
                    (f"/1025/{group}/4", str(step * 7 + group).encode())
                    if step % 2
                    else (f"/group/{group}/name", f"g{group}-{step}".encode())
                )
                response = await call(context, server.port, "PUT", path, value)
                assert dotted(response) == "2.04"
                acknowledged[(group, "4" if step % 2 else "0")] = value

        await asyncio.gather(*(stream(g) for g in groups))
        server.process.send_signal(signal.SIGKILL)  # right after the last acknowledgement
    finally:
        await context.shutdown()
    assert server.process.wait(10) == -signal.SIGKILL
    restarted = spawn_server("--state", str(state))
    context = await aiocoap.Context.create_client_context()
    try:
        for (group, rid), value in sorted(acknowledged.items()):
            response = await call(context, restarted.port, "GET", f"/1025/{group}/{rid}")
            assert (dotted(response), response.payload) == ("2.05", value), (group, rid)
    finally:
        await context.shutdown()
    assert len(acknowledged) == 2 * len(groups)


async def test_memory_state_keeps_nothing(spawn_server: Callable[..., Any], tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    first = spawn_server("--state", ":memory:", cwd=workdir)
    context = await aiocoap.Context.create_client_context()
    try:
        assert dotted(await call(context, first.port, "POST", "/1025/5/65535")) == "2.01"
        assert dotted(await call(context, first.port, "PUT", "/1025/65535/0", b"changed")) == "2.04"
        assert first.stop() == 0
        second = spawn_server("--state", ":memory:", cwd=workdir)
        assert dotted(await call(context, second.port, "GET", "/1025/5/0")) == "4.04"
        assert (await call(context, second.port, "GET", "/1025/65535/0")).payload == b"admin"
        assert second.stop() == 0
    finally:
        await context.shutdown()
    assert not any(p.suffix in (".sqlite3", ".db", ".sqlite3-wal") for p in workdir.rglob("*")), list(
        workdir.rglob("*")
    )


async def test_the_default_state_file_is_per_device_under_the_working_directory(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = spawn_server(cwd=tmp_path)
    assert server.stop() == 0
    assert (tmp_path / "state" / "EMU0000000001.sqlite3").is_file()


# ----------------------------------------------------------------------------------- reset


async def test_reset_restores_the_profile_and_leaves_tombstones(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    state = tmp_path / "device.sqlite3"
    server = spawn_server("--state", str(state))
    context = await aiocoap.Context.create_client_context()
    try:
        assert dotted(await call(context, server.port, "POST", "/1025/12/65535")) == "2.01"
        assert dotted(await call(context, server.port, "PUT", "/1025/65535/0", b"root")) == "2.04"
        assert dotted(await call(context, server.port, "PUT", "/1025/65534/4", b"9")) == "2.04"
        assert server.stop() == 0
        done = run_cli("reset", "--state", str(state), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "EMU0000000001" in done.stdout and "default" in done.stdout
        with sqlite3.connect(state) as db:
            deleted = db.execute(
                "SELECT deleted FROM instance WHERE object_id = 1025 AND instance_id = 12"
            ).fetchone()
            last_outbox = db.execute(
                "SELECT payload FROM outbox WHERE instance_id = 12 ORDER BY id DESC LIMIT 1"
            ).fetchone()
        assert deleted == (1,)
        assert json.loads(last_outbox[0])["deleted"] is True
        restarted = spawn_server("--state", str(state))
        assert dotted(await call(context, restarted.port, "GET", "/1025/12/0")) == "4.04"
        assert (await call(context, restarted.port, "GET", "/1025/65535/0")).payload == b"admin"
        assert (await call(context, restarted.port, "GET", "/1025/65534/4")).payload == b"300"
        # The group can be created again after the reset.
        assert dotted(await call(context, restarted.port, "POST", "/1025/12/65535")) == "2.01"
    finally:
        await context.shutdown()


# ----------------------------------------------------------------------------------- errors


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        done = run_cli(
            *SERVE_WITHOUT_TAP,
            "--coap",
            f"127.0.0.1:{port}",
            "--state",
            ":memory:",
            cwd=tmp_path,
        )
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr
    assert "in use" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stdout


def test_a_port_held_by_another_emulator_is_refused(spawn_server: Callable[..., Any], tmp_path: Path) -> None:
    first = spawn_server("--state", ":memory:")
    done = run_cli(
        *SERVE_WITHOUT_TAP,
        "--coap",
        f"127.0.0.1:{first.port}",
        "--state",
        ":memory:",
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "in use" in done.stderr.lower()
    assert first.process.poll() is None


@pytest.mark.parametrize("value", ["nonsense:port", "127.0.0.1:70000", "127.0.0.1:-1", "[::1", "1.2.3.4:"])
def test_a_bad_coap_value_exits_2(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SERVE_WITHOUT_TAP, "--coap", value, "--state", ":memory:"]) == 2
    err = capsys.readouterr().err
    assert "--coap" in err
    assert not (tmp_path / "state").exists()


def test_an_unknown_profile_exits_2(tmp_path: Path) -> None:
    done = run_cli(
        "serve", "--coap", "127.0.0.1:0", "--state", ":memory:", "--profile", "no-such-device", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "no-such-device" in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr
    reset = run_cli("reset", "--state", ":memory:", "--profile", "no-such-device", cwd=tmp_path)
    assert reset.returncode == 2 and "no-such-device" in reset.stderr


def test_a_broken_profile_exits_2_naming_the_key(tmp_path: Path) -> None:
    profile = tmp_path / "broken.toml"
    profile.write_text('[device]\nmodel = "x"\nserial_number = "S1"\n', encoding="utf-8")
    done = run_cli(
        "serve", "--coap", "127.0.0.1:0", "--state", ":memory:", "--profile", str(profile), cwd=tmp_path
    )
    assert done.returncode == 2
    assert "broken.toml" in done.stderr and "firmware_version" in done.stderr


def test_verbosity_flags(spawn_server: Callable[..., Any]) -> None:
    verbose = spawn_server("--state", ":memory:", "-v")
    quiet = spawn_server("--state", ":memory:", "-q")
    assert verbose.stop() == 0 and quiet.stop() == 0
    assert "device EMU0000000001 up" in verbose.stderr()
    assert quiet.stderr() == ""


def test_an_unusable_state_path_is_a_clear_runtime_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    done = run_cli(
        *SERVE_WITHOUT_TAP,
        "--coap",
        "127.0.0.1:0",
        "--state",
        str(blocker / "s.db"),
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("tap-emulator: ") and "a-file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("group", "key"),
    [
        ('name = "a-name-longer-than-sixteen"', "name"),
        ('name = "tab\\there"', "name"),
        ('name = "u"\npassword = "a-password-longer-than-16"', "password"),
        ('name = "u"\nalias = 77', "alias"),
        ('name = "twin"\n[[groups]]\nid = 2\nname = "twin"', "already used by group 1"),
        ('name = "u"\nsession_lifetime = 70000', "session_lifetime"),
    ],
)
def test_a_profile_group_the_model_forbids_exits_2(tmp_path: Path, group: str, key: str) -> None:
    profile = tmp_path / "groups.toml"
    profile.write_text(
        '[device]\nmodel = "x"\nserial_number = "S1"\nfirmware_version = "1"\n[[groups]]\nid = 1\n'
        + group
        + "\n",
        encoding="utf-8",
    )
    done = run_cli(
        *SERVE_WITHOUT_TAP,
        "--coap",
        "127.0.0.1:0",
        "--state",
        ":memory:",
        "--profile",
        str(profile),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "groups.toml" in done.stderr and key in done.stderr
    assert "Traceback" not in done.stderr and "a-password-longer" not in done.stderr
    assert "listening" not in done.stdout


async def test_secrets_never_reach_the_log_even_at_debug(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = spawn_server("--state", str(tmp_path / "s.db"), "-v", "-v")
    key = (
        bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75e") * 2 + b"\x01\x02\x03\x04" + (99).to_bytes(4, "big")
    )
    context = await aiocoap.Context.create_client_context()
    try:
        assert (
            dotted(await call(context, server.port, "POST", "/group/65534/password", b"Sup3rSecret!"))
            == "2.04"
        )
        assert dotted(await call(context, server.port, "POST", "/group/65535/password-key", key)) == "2.04"
        assert (
            dotted(await call(context, server.port, "POST", "/group/65535/password", b"x" * 17 + b"Leak"))
            == "4.00"
        )
    finally:
        await context.shutdown()
    assert server.stop() == 0
    log = server.stderr()
    assert "DEBUG" in log, "the test must run with debug logging"
    for secret in ("Sup3rSecret", "5ec7e75e", "\\x5e\\xc7", "Leak", "^\\xc7\\xe7"):
        assert secret not in log, secret
