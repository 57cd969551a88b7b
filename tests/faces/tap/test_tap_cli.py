"""``tap-emulator serve`` with the Tap face: --tcp/--ws endpoints, port 0, off, busy ports and --trace."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 20.0
GET_FIRMWARE = bytes.fromhex("a2ca000007010003ffff0003")


def _serve(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tap_emulator",
            "serve",
            "--state",
            ":memory:",
            "--coap",
            "off",
            "--http",
            "off",
            *args,
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _read_lines(process: subprocess.Popen[str], count: int) -> list[str]:
    """The first ``count`` stdout lines, read in a thread so a silent server fails in TIMEOUT seconds."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for _ in range(count):
            lines.put(stdout.readline().strip())

    threading.Thread(target=read, daemon=True).start()
    return [lines.get(timeout=TIMEOUT) for _ in range(count)]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_serve_announces_tcp_and_ws_and_traces_requests(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    process = _serve("--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--trace", cwd=tmp_path)
    processes.append(process)
    tcp_line, ws_line = _read_lines(process, 2)
    assert tcp_line.startswith("listening tcp 127.0.0.1:") and ws_line.startswith("listening ws 127.0.0.1:")
    port = int(tcp_line.rsplit(":", 1)[1])
    assert port > 0 and int(ws_line.rsplit(":", 1)[1]) > 0
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(GET_FIRMWARE)
        assert conn.recv(100) == bytes.fromhex("45312e3131382e309000")
        login = (
            bytes.fromhex("a2da000027020400ffff0000")
            + b"admin".ljust(16, b"\0")
            + b"Sup3rS3cret".ljust(16, b"\0")
        )
        conn.sendall(login)
        assert conn.recv(100) == b"\x85\x90\x00"  # SCRAM profile: plain login is not the mechanism
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0
    events = [
        json.loads(line.split("tap_emulator.trace: ", 1)[1])
        for line in stderr.splitlines()
        if "tap_emulator.trace: " in line
    ]
    shapes = [
        (e["face"], e["method"], e["path"], e["request_bytes"], e["status"], e["response_bytes"])
        for e in events
    ]
    assert ("tcp", "GET", "/3//3", 0, "2.05", 7) in shapes
    assert ("tcp", "POST", "/1024//0", 32, "4.05", 0) in shapes
    assert "Sup3rS3cret" not in stderr and b"Sup3rS3cret".hex() not in stderr


def test_off_disables_the_tap_endpoints(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    process = _serve("--tcp", "off", "--ws", "127.0.0.1:0", cwd=tmp_path)
    processes.append(process)
    [line] = _read_lines(process, 1)
    assert line.startswith("listening ws ")
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=TIMEOUT)
    assert "listening tcp" not in stdout


@pytest.mark.parametrize(("flag", "name"), [("--tcp", "TCP"), ("--ws", "WebSocket")])
def test_busy_port_is_a_clear_error_and_a_failing_exit(tmp_path: Path, flag: str, name: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        other = "--ws" if flag == "--tcp" else "--tcp"
        process = _serve(
            "--coap", "127.0.0.1:0", flag, f"127.0.0.1:{port}", other, "127.0.0.1:0", cwd=tmp_path
        )
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1
    assert f"cannot listen for Tap {name} on 127.0.0.1:{port}: Address already in use" in stderr
    assert "Traceback" not in stderr
    # No endpoint is announced for a start that failed, not even the ones bound before the busy one.
    assert "listening" not in stdout


def test_bad_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    process = _serve("--tcp", "127.0.0.1:99999", cwd=tmp_path)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2
    assert "port must be a number" in stderr


def test_sigterm_with_connected_clients_stops_cleanly(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    process = _serve("--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", cwd=tmp_path)
    processes.append(process)
    tcp_line, ws_line = _read_lines(process, 2)
    tcp_port = int(tcp_line.rsplit(":", 1)[1])
    ws_port = int(ws_line.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=TIMEOUT) as tcp:
        tcp.sendall(GET_FIRMWARE)
        assert tcp.recv(64).startswith(b"\x45")
        with socket.create_connection(("127.0.0.1", ws_port), timeout=TIMEOUT) as ws:
            # An open WebSocket handshake in progress and an idle TCP session are both still connected.
            ws.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert "Exception" not in stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-connections", "0", "must be positive"),
        ("--max-connections-per-peer", "x", "is not a number"),
        ("--frame-timeout", "-1", "must be positive"),
        ("--idle-timeout", "soon", "is not a number"),
    ],
)
def test_bad_connection_limits_are_usage_errors(tmp_path: Path, flag: str, value: str, message: str) -> None:
    process = _serve("--tcp", "127.0.0.1:0", flag, value, cwd=tmp_path)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2
    assert message in stderr and "Traceback" not in stderr


def test_connection_limit_flags_reach_the_tap_face(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    process = _serve(
        "--tcp", "127.0.0.1:0", "--ws", "off", "--max-connections-per-peer", "1", "--frame-timeout", "0.5",
        cwd=tmp_path,
    )  # fmt: skip
    processes.append(process)
    [line] = _read_lines(process, 1)
    port = int(line.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as first:
        first.sendall(GET_FIRMWARE)
        assert first.recv(100).startswith(b"\x45")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as second:
            assert second.recv(100) == b""  # refused: one connection per peer
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) as other:
            other.settimeout(5.0)  # less than the default frame timeout (10 s)
            other.sendall(GET_FIRMWARE)
            assert other.recv(100).startswith(b"\x45")  # another peer is admitted
            other.sendall(GET_FIRMWARE[:5])
            assert other.recv(100) == b""  # a frame not completed within 0.5 s closes it
        first.sendall(GET_FIRMWARE)
        assert first.recv(100).startswith(b"\x45")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0
    assert "refusing connections from 127.0.0.1" in stderr
