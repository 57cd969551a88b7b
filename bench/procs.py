"""Server subprocesses for the benchmarks: start, wait for their ``listening`` lines, sample, stop.

Servers run in processes of their own so that a server and the generator driving it never share an
interpreter; their CPU time and resident memory are read from /proc (Linux), which needs no extra
dependency.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(RuntimeError):
    """A server did not start (its stderr tail is in the message)."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    endpoints: dict[str, tuple[str, int]] = field(default_factory=dict)
    stderr_path: Path | None = None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _stderr_tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-2000:]


def start_server(
    name: str,
    args: list[str],
    *,
    expect: set[str],
    cwd: Path,
    timeout: float = 30.0,
) -> Server:
    """Run ``python ARGS`` and wait for a ``listening WORDS HOST:PORT`` line for each name in expect.

    Each endpoint is stored under its words (``coap udp``, ``tcp``) and under the first word alone.
    """
    stderr_path = cwd / f"{name}.stderr"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    server = Server(name, process, stderr_path=stderr_path)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffered = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not expect <= set(server.endpoints):
            left = deadline - time.monotonic()
            if left <= 0 or process.poll() is not None:
                server.stop()
                raise ServerError(f"{name} did not start: {_stderr_tail(stderr_path)}")
            if not selector.select(min(left, 0.5)):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                continue
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for raw in lines:
                parts = raw.decode(errors="replace").split()
                if len(parts) >= 3 and parts[0] == "listening":
                    host, _, port = parts[-1].rpartition(":")
                    endpoint = (host.strip("[]"), int(port))
                    server.endpoints[" ".join(parts[1:-1])] = endpoint
                    server.endpoints.setdefault(parts[1], endpoint)
    # A face that fails after an earlier one announced itself makes the server exit: wait a moment.
    time.sleep(0.2)
    if process.poll() is not None:
        server.stop()
        raise ServerError(f"{name} exited after starting: {_stderr_tail(stderr_path)}")
    return server


def emulator_server(*extra: str, coap: bool = True, tap: bool = False) -> list[str]:
    """Arguments of ``tap-emulator serve`` on loopback, port 0, quiet, with only the faces asked for."""
    faces = [
        "--coap",
        "127.0.0.1:0" if coap else "off",
        "--tcp",
        "127.0.0.1:0" if tap else "off",
        "--ws",
        "off",
        "--http",
        "off",
    ]
    return ["-m", "tap_emulator", "serve", *faces, "-q", *extra]


LIBCOAP_SERVER = "coap-server-notls"  # Debian libcoap3-bin (4.3): the C peer of the CoAP benchmark
LIBCOAP_RESOURCE = "/example_data"  # the resource coap-server lets a PUT set


def start_libcoap_server(cwd: Path, payload: bytes, timeout: float = 10.0) -> Server:
    """libcoap's example ``coap-server`` on 127.0.0.1, its ``/example_data`` set to ``payload`` by a PUT
    (so it answers GETs with as many bytes as the emulator); the port is picked free just before."""
    import shutil
    import socket

    from bench.coap_wire import PUT, RequestTemplate, parse_response

    if shutil.which(LIBCOAP_SERVER) is None:
        raise ServerError(f"{LIBCOAP_SERVER} not found (Debian package libcoap3-bin)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stderr_path = cwd / "libcoap.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [LIBCOAP_SERVER, "-A", "127.0.0.1", "-p", str(port), "-v", "0"],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Server("libcoap", process, {"coap": ("127.0.0.1", port)}, stderr_path)
    put = RequestTemplate(PUT, LIBCOAP_RESOURCE, payload, content_format=0)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        mid = 0
        while time.monotonic() < deadline and process.poll() is None:
            mid += 1
            sock.sendto(put.build(mid, mid.to_bytes(8, "big")), ("127.0.0.1", port))
            try:
                parsed = parse_response(sock.recv(2048))
            except (TimeoutError, ConnectionRefusedError):
                continue
            if parsed is not None and parsed[1] >> 5 == 2:
                return server
    server.stop()
    raise ServerError(f"libcoap's coap-server did not take {LIBCOAP_RESOURCE}: {_stderr_tail(stderr_path)}")
