"""HTTP-face benchmarks: the native device list and a seed face's list vs a bare FastAPI endpoint.

The subject is a ``tap-emulator serve`` with only its HTTP face (and its device syncing into a SQLite
store); the baseline is ``python -m bench.servers fastapi`` answering, at the same paths, the very
JSON the emulator answered (fetched once before measuring), so the ratio is the cost of the store
reads, the core and the face's mapping. The generator keeps 16 keep-alive connections with one
request outstanding each, on raw non-blocking sockets in this process, and reports its CPU share.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import LoadResult
from bench.procs import Server, emulator_server, start_server
from bench.results import MetricResult, Target
from bench.runner import Run, Settings, interleave, measured, median, summary

CONNECTIONS = 16
NATIVE_DEVICES = "/api/v1/devices"
SEED_LIST = "/user/groups"  # IoTize: the user's groups, one page
SEED_GROUPS = 20
IOTIZE_TOKEN = "iotize-alice"  # the default cloud configuration's user
TIMEOUT = 5.0


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    sent_at: float = 0.0


def _request(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response_length(buffer: bytearray) -> tuple[int, int] | None:
    """(status, total length) of the first complete response in ``buffer``, or None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in head[1:] if line.lower().startswith("content-length:")
    )
    total = end + 4 + length
    return (status, total) if len(buffer) >= total else None


def http_load(
    address: tuple[str, int], request: bytes, *, seconds: float, warmup: float, connections: int = CONNECTIONS
) -> LoadResult:
    """Closed loop: each connection sends the next request once the previous answer is in."""
    selector = selectors.DefaultSelector()
    open_connections = []
    for _ in range(connections):
        sock = socket.create_connection(address, timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        connection = _Connection(sock)
        selector.register(sock, selectors.EVENT_READ, connection)
        open_connections.append(connection)
    clock = time.perf_counter
    start = clock()
    measure_from, end = start + warmup, start + warmup + seconds
    completed = errors = 0
    latencies: list[float] = []
    cpu_at_measure: float | None = None
    try:
        for connection in open_connections:
            connection.sent_at = clock()
            connection.sock.send(request)
        while (now := clock()) < end:
            if cpu_at_measure is None and now >= measure_from:
                cpu_at_measure = time.process_time()
                completed = errors = 0
                latencies.clear()
            for key, _ in selector.select(min(end - now, TIMEOUT)):
                connection = key.data
                chunk = connection.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed a keep-alive connection")
                connection.buffer += chunk
                while (parsed := _response_length(connection.buffer)) is not None:
                    status, total = parsed
                    del connection.buffer[:total]
                    arrived = clock()
                    if arrived >= measure_from:
                        completed += 1
                        errors += status != 200
                        latencies.append(arrived - connection.sent_at)
                    connection.sent_at = arrived
                    connection.sock.send(request)
        measured_seconds = clock() - measure_from
        cpu = time.process_time() - (cpu_at_measure or time.process_time())
    finally:
        for connection in open_connections:
            selector.unregister(connection.sock)
            connection.sock.close()
        selector.close()
    return LoadResult(completed, errors, 0, 0, measured_seconds, cpu, latencies)


def _fetch(
    address: tuple[str, int], path: str, headers: dict[str, str], method: str = "GET", body: bytes = b""
) -> bytes:
    import http.client

    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        connection.request(
            method, path, body=body or None, headers={**headers, "Content-Type": "application/json"}
        )
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return data
    finally:
        connection.close()


def _wait_for_device(address: tuple[str, int]) -> bytes:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = _fetch(address, NATIVE_DEVICES, {})
        if b'"serial"' in body:
            return body
        time.sleep(0.05)
    raise RuntimeError("the device never appeared in the native API")


def http_lists(settings: Settings) -> list[MetricResult]:
    native = MetricResult(
        "http_native_devices_ratio",
        f"GET {NATIVE_DEVICES} over {CONNECTIONS} keep-alive connections vs a bare FastAPI endpoint "
        "answering the same JSON",
        "req/s",
        Target(">=", 0.5),
    )
    seed = MetricResult(
        "http_seed_list_ratio",
        f"IoTize GET {SEED_LIST} ({SEED_GROUPS} groups) vs a bare FastAPI endpoint answering the same JSON",
        "req/s",
        Target(">=", 0.25),
    )
    work = settings.work / "http"
    work.mkdir(parents=True, exist_ok=True)
    args = emulator_server(
        "--http", "127.0.0.1:0", "--state", str(work / "device.sqlite3"),
        "--store", f"sqlite:///{work / 'store.sqlite3'}", coap=False,
    )  # fmt: skip
    subject = start_server("emulator-http", args, expect={"http"}, cwd=settings.work)
    baseline: Server | None = None
    try:
        address = subject.endpoints["http"]
        auth = {"Authorization": IOTIZE_TOKEN}
        for index in range(SEED_GROUPS):
            _fetch(address, "/group", auth, "POST", f'{{"name": "bench group {index}"}}'.encode())
        bodies = {NATIVE_DEVICES: _wait_for_device(address), SEED_LIST: _fetch(address, SEED_LIST, auth)}
        routes = []
        for index, (path, body) in enumerate(bodies.items()):
            file = work / f"body-{index}.json"
            file.write_bytes(body)
            routes += ["--route", f"{path}={file}"]
        baseline = start_server(
            "bare-fastapi", ["-m", "bench.servers", "fastapi", *routes], expect={"http"}, cwd=settings.work
        )
        for metric, path, headers in ((native, NATIVE_DEVICES, {}), (seed, SEED_LIST, auth)):
            request = _request(path, headers)
            sides: dict[str, Callable[[], Run]] = {}
            for name, server in (("bare", baseline), ("emulator", subject)):
                sides[name] = _driver(server, request, settings)
            runs = interleave(settings.rounds, sides)
            metric.settle(
                median([r.result.rate for r in runs["emulator"]]),
                median([r.result.rate for r in runs["bare"]]),
            )
            metric.details = {"emulator": summary(runs["emulator"]), "baseline": summary(runs["bare"])}
    finally:
        subject.stop()
        if baseline is not None:
            baseline.stop()
    return [native, seed]


def _driver(server: Server, request: bytes, settings: Settings) -> Callable[[], Run]:
    address = server.endpoints["http"]
    return lambda: measured(
        server, lambda: http_load(address, request, seconds=settings.seconds, warmup=settings.warmup)
    )


__all__ = ["http_lists", "http_load"]
