"""Tap-face benchmarks: getName over 16 TCP connections, in clear and through the encrypted channel, and
a bundle-values read (``GET /1028/1/1``: target memory, access list, OMA-TLV) against getName.

The generator plays the SDK's role with the project's own sans-IO codecs (APDU frames, SCRAM proof,
encrypted frames), on plain blocking sockets with one request outstanding per connection, as the SDK
does. Baselines: a plain asyncio TCP server answering the same bytes (``python -m bench.servers
echo``) for ``tap_tcp_ratio``; the same emulator in clear for ``tap_encrypted_ratio``; getName on the
same emulator (demo profile) for ``tap_bundle_values_ratio``.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import LoadResult
from bench.procs import Server, emulator_server, start_server
from bench.results import MetricResult, Target
from bench.runner import Run, Settings, interleave, measured, median, summary
from bench.servers import ECHO_RESPONSE
from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.codec.secure_frame import FrameCipher, wrap
from tap_emulator.security import client_proof, derive_scram_keys, hash_login_password, session_key

CONNECTIONS = 16
GROUP_OBJECT, INTERFACE_OBJECT, BUNDLE_OBJECT = 1025, 1024, 1028
BUNDLE_VALUES = 1  # resource of the bundle object
ANONYMOUS = 0
LOGIN_NAME, LOGIN_PASSWORD = "admin", "admin"  # the default profile's admin group
ZERO_IV = bytes(16)
CONTENT = 0x45
STATUS_WORD = b"\x90\x00"

GET_NAME = encode_request(TapRequest(Method.GET, GROUP_OBJECT, ANONYMOUS, 0))  # group.getName(0)
GET_NAME_INNER = GET_NAME[5:]
# bundle.getValues(1) of the demo profile: three variables anonymous may read.
GET_BUNDLE_VALUES = encode_request(
    TapRequest(Method.GET, BUNDLE_OBJECT, 1, BUNDLE_VALUES)
)  # what the encrypted channel carries: the request without its APDU header


def _interface_get(resource: int, payload: bytes = b"") -> bytes:
    return encode_request(TapRequest(Method.GET, INTERFACE_OBJECT, None, resource, payload))


def _tunnel_prefix() -> bytes:
    """The bytes of ``GET /1024//48`` before its payload, for an encrypted getName (fixed length).

    The payload is the APDU's tail, so each request is this prefix + a fresh ciphertext: the generator
    encodes the outer request once, not once per request.
    """
    size = len(wrap(0, GET_NAME_INNER))
    prefix = _interface_get(48, bytes(size))[:-size]
    if _interface_get(48, b"\xff" * size) != prefix + b"\xff" * size:
        raise RuntimeError("the APDU encoding no longer ends with the payload")
    return prefix


ENCRYPTED_GET_NAME_PREFIX = _tunnel_prefix()


def _exchange(sock: socket.socket, frame: bytes) -> tuple[int, bytes]:
    sock.sendall(frame)
    data = b""
    while not (len(data) >= 3 and data.endswith(STATUS_WORD)):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return decode_response(data)


@dataclass
class _Connection:
    """One SDK-like connection: builds the next request, checks a complete response."""

    sock: socket.socket
    # One long-lived cipher per session key: building AES contexts per frame would make the generator,
    # sharing the cores with the server, the bottleneck of the encrypted run.
    cipher: FrameCipher | None = field(default=None, repr=False)
    counter: int = 0
    buffer: bytes = b""
    plain_request: bytes = GET_NAME  # what a connection in clear sends

    def request(self) -> bytes:
        if self.cipher is None:
            return self.plain_request
        ciphertext = self.cipher.encrypt_frame(ZERO_IV, self.counter, GET_NAME_INNER)
        self.counter += 1
        return ENCRYPTED_GET_NAME_PREFIX + ciphertext

    def complete(self) -> bool:
        data = self.buffer
        if len(data) < 3 or not data.endswith(STATUS_WORD):
            return False
        # An encrypted answer is status + AES blocks + 90 00: a partial read cannot pass for one.
        return self.cipher is None or (len(data) - 3) % 16 == 0

    def succeeded(self) -> bool:
        status, body = decode_response(self.buffer)
        if self.cipher is None or status != CONTENT:
            return status == CONTENT
        _counter, plain = self.cipher.decrypt_frame(ZERO_IV, body)
        return decode_response(plain)[0] == CONTENT

    def login(self) -> None:
        """SCRAM login as the SDK does it; afterwards requests go through the encrypted channel."""
        client_nonce = int.from_bytes(os.urandom(4), "big")
        status, body = _exchange(
            self.sock,
            _interface_get(40, LOGIN_NAME.encode().ljust(16, b"\0") + client_nonce.to_bytes(4, "big")),
        )
        if status != CONTENT:
            raise RuntimeError(f"SCRAM login step 1 answered 0x{status:02X}")
        server_nonce = int.from_bytes(body[:4], "big")
        salt, iterations = body[4:8], int.from_bytes(body[8:12], "big")
        keys = derive_scram_keys(hash_login_password(LOGIN_PASSWORD), salt, iterations)
        status, _proof = _exchange(
            self.sock, _interface_get(41, client_proof(keys, client_nonce, server_nonce))
        )
        if status != CONTENT:
            raise RuntimeError(f"SCRAM login step 2 answered 0x{status:02X}")
        self.cipher = FrameCipher(session_key(keys, client_nonce, server_nonce))


def _connect(address: tuple[str, int], *, encrypted: bool, request: bytes = GET_NAME) -> list[_Connection]:
    connections = []
    for _ in range(CONNECTIONS):
        sock = socket.create_connection(address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock, plain_request=request)
        if encrypted:
            connection.login()
        connections.append(connection)
    return connections


def tcp_load(connections: list[_Connection], *, seconds: float, warmup: float) -> LoadResult:
    """One request outstanding per connection for ``warmup + seconds``; the last ``seconds`` count."""
    selector = selectors.DefaultSelector()
    sent_at: dict[int, float] = {}
    clock = time.perf_counter
    for connection in connections:
        connection.sock.setblocking(False)
        selector.register(connection.sock, selectors.EVENT_READ, connection)
    latencies: list[float] = []
    completed = errors = 0
    start = clock()
    measure_from, end = start + warmup, start + warmup + seconds
    cpu_at_measure: float | None = None
    try:
        for connection in connections:
            connection.buffer = b""
            sent_at[connection.sock.fileno()] = clock()
            connection.sock.sendall(connection.request())
        while True:
            now = clock()
            if cpu_at_measure is None and now >= measure_from:
                cpu_at_measure = time.process_time()
                completed = errors = 0
                latencies.clear()
            if now >= end:
                break
            for key, _ in selector.select(min(end - now, 0.5)):
                connection = key.data
                chunk = connection.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed a connection")
                connection.buffer += chunk
                if not connection.complete():
                    continue
                arrived = clock()
                if arrived >= measure_from:
                    latencies.append(arrived - sent_at[connection.sock.fileno()])
                    completed += 1
                    if not connection.succeeded():
                        errors += 1
                connection.buffer = b""
                sent_at[connection.sock.fileno()] = arrived
                connection.sock.sendall(connection.request())
        measured_seconds = clock() - measure_from
        cpu = time.process_time() - (cpu_at_measure if cpu_at_measure is not None else 0.0)
        # Collect the answers still in flight so every connection is idle and in step for the next run.
        deadline = clock() + 2.0
        waiting = {c.sock.fileno() for c in connections if not c.complete()}
        while waiting and clock() < deadline:
            for key, _ in selector.select(0.1):
                connection = key.data
                connection.buffer += connection.sock.recv(65536)
                if connection.complete():
                    waiting.discard(connection.sock.fileno())
    finally:
        for connection in connections:
            selector.unregister(connection.sock)
            connection.sock.setblocking(True)
        selector.close()
    return LoadResult(completed, errors, 0, 0, measured_seconds, cpu, latencies)


def _driver(settings: Settings, server: Server, connections: list[_Connection]) -> Callable[[], Run]:
    return lambda: measured(
        server, lambda: tcp_load(connections, seconds=settings.seconds, warmup=settings.warmup)
    )


def _close(connections: list[_Connection]) -> None:
    for connection in connections:
        connection.sock.close()


def _start_tap_emulator(settings: Settings, name: str, *extra: str) -> Server:
    return start_server(
        name,
        emulator_server("--state", ":memory:", *extra, coap=False, tap=True),
        expect={"tcp"},
        cwd=settings.work,
    )


def tap_tcp(settings: Settings) -> MetricResult:
    metric = MetricResult(
        "tap_tcp_ratio",
        f"Tap face getName req/s over {CONNECTIONS} TCP connections vs a plain asyncio TCP server "
        "answering the same bytes",
        "req/s",
        Target(">=", 0.5),
    )
    emulator = _start_tap_emulator(settings, "emulator-tap")
    echo = start_server("echo-tcp", ["-m", "bench.servers", "echo"], expect={"tcp"}, cwd=settings.work)
    emulator_connections = echo_connections = []
    try:
        emulator_connections = _connect(emulator.endpoints["tcp"], encrypted=False)
        echo_connections = _connect(echo.endpoints["tcp"], encrypted=False)
        # The echo server must send what the emulator sends, or the comparison is not like for like.
        answer = _exchange(emulator_connections[0].sock, GET_NAME)
        if answer != decode_response(ECHO_RESPONSE):
            raise RuntimeError(f"the emulator answered getName with {answer!r}, the echo server does not")
        runs = interleave(
            settings.rounds,
            {
                "echo": _driver(settings, echo, echo_connections),
                "emulator": _driver(settings, emulator, emulator_connections),
            },
        )
    finally:
        _close(emulator_connections)
        _close(echo_connections)
        echo.stop()
        emulator.stop()
    metric.settle(
        median([r.result.rate for r in runs["emulator"]]), median([r.result.rate for r in runs["echo"]])
    )
    metric.details = {"emulator": summary(runs["emulator"]), "baseline": summary(runs["echo"])}
    return metric


def tap_encrypted(settings: Settings) -> MetricResult:
    metric = MetricResult(
        "tap_encrypted_ratio",
        f"getName req/s over {CONNECTIONS} TCP connections with a SCRAM session and the encrypted channel "
        "vs the same emulator in clear",
        "req/s",
        Target(">=", 0.6),
    )
    emulator = _start_tap_emulator(settings, "emulator-tap-encrypted")
    plain: list[_Connection] = []
    encrypted: list[_Connection] = []
    try:
        plain = _connect(emulator.endpoints["tcp"], encrypted=False)
        encrypted = _connect(emulator.endpoints["tcp"], encrypted=True)
        runs = interleave(
            settings.rounds,
            {
                "plain": _driver(settings, emulator, plain),
                "encrypted": _driver(settings, emulator, encrypted),
            },
        )
    finally:
        _close(plain)
        _close(encrypted)
        emulator.stop()
    metric.settle(
        median([r.result.rate for r in runs["encrypted"]]), median([r.result.rate for r in runs["plain"]])
    )
    metric.details = {"encrypted": summary(runs["encrypted"]), "baseline": summary(runs["plain"])}
    return metric


def tap_bundle_values(settings: Settings) -> MetricResult:
    metric = MetricResult(
        "tap_bundle_values_ratio",
        f"bundle.getValues (3 variables, OMA-TLV) req/s over {CONNECTIONS} TCP connections vs getName on "
        "the same emulator",
        "req/s",
        Target(">=", 0.7),
    )
    emulator = _start_tap_emulator(settings, "emulator-tap-bundle", "--profile", "demo")
    names: list[_Connection] = []
    bundles: list[_Connection] = []
    try:
        names = _connect(emulator.endpoints["tcp"], encrypted=False)
        bundles = _connect(emulator.endpoints["tcp"], encrypted=False, request=GET_BUNDLE_VALUES)
        status, body = _exchange(bundles[0].sock, GET_BUNDLE_VALUES)
        if status != CONTENT or not body:
            raise RuntimeError(f"bundle.getValues(1) answered 0x{status:02X}: is the demo profile loaded?")
        runs = interleave(
            settings.rounds,
            {"getName": _driver(settings, emulator, names), "bundle": _driver(settings, emulator, bundles)},
        )
    finally:
        _close(names)
        _close(bundles)
        emulator.stop()
    metric.settle(
        median([r.result.rate for r in runs["bundle"]]), median([r.result.rate for r in runs["getName"]])
    )
    metric.details = {"bundle": summary(runs["bundle"]), "baseline": summary(runs["getName"])}
    return metric
