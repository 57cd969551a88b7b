"""``tap-emulator serve`` under a connection flood and a lowered file limit, and what its log shows.

Each test starts a real server process whose RLIMIT_NOFILE is lowered in the child, floods it with idle
connections from many loopback addresses (127.0.1.x), then checks that a legitimate client on another
address (127.0.0.2) is answered over TCP, WebSocket and CoAP within a second (the bound issue 9 sets),
that the server never holds more descriptors than its limit allows, and that the log stays a few lines
without a traceback. The last test checks that -vv does not put login secrets in the log.
"""

from __future__ import annotations

import asyncio
import os
import queue
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import aiocoap
import pytest
from tap_support import INTERFACE, ScramClient, get, plain_login
from websockets.asyncio.client import ClientConnection, connect

from tap_emulator.faces.tap import TapSession
from tap_emulator.security import derive_scram_keys, hash_login_password

REPO = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
LEGITIMATE = "127.0.0.2"
TIMEOUT = 20.0
# A starved face does not answer a legitimate client at all while the flood lasts; this bound only
# tells "answered during the flood" from "hung", it is no speed claim (a loaded machine is slow).
ANSWER_BOUND = 10.0
MAX_LOG_LINES = 20
GET_FIRMWARE = bytes.fromhex("a2ca000007010003ffff0003")
FIRMWARE_ANSWER = bytes.fromhex("45312e3131382e309000")
PASSWORD = "Sup3rS3cret"
FLOOD_SECONDS = 20.0  # at most, for opening the whole flood


@pytest.fixture(autouse=True)
def enough_descriptors_here() -> Iterator[None]:
    """The flood's client ends live in this process: make room for them (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard file limit ({hard}) leaves no room for a 2,000-connection flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Served:
    """A ``serve`` subprocess with its announced ports and a stderr file."""

    def __init__(self, args: list[str], file_limit: int, log: Path) -> None:
        def lower_file_limit() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, hard))

        self.log = log
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tap_emulator",
                    "serve",
                    "--state",
                    ":memory:",
                    "--http",
                    "off",
                    *args,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                preexec_fn=lower_file_limit,
            )
        self.ports: dict[str, int] = {}
        for line in self._lines(sum(1 for a in args if a in ("--coap", "--tcp", "--ws")) - args.count("off")):
            kind = line.split()[1]
            self.ports[kind] = int(line.rsplit(":", 1)[1])

    def _lines(self, count: int) -> list[str]:
        assert self.process.stdout is not None
        stdout = self.process.stdout
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for _ in range(count):
                lines.put(stdout.readline().strip())

        threading.Thread(target=read, daemon=True).start()
        try:
            got = [lines.get(timeout=TIMEOUT) for _ in range(count)]
        except queue.Empty:
            raise AssertionError(f"server did not start: {self.stderr()!r}") from None
        assert all(line.startswith("listening ") for line in got), (got, self.stderr())
        return got

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.communicate(timeout=TIMEOUT)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, file_limit: int) -> Served:
        served = Served(list(args), file_limit, tmp_path / f"server-{len(started)}.stderr")
        started.append(served)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.communicate(timeout=TIMEOUT)


def flood(port: int, count: int, sources: int = 80, batch: int = 100) -> tuple[list[socket.socket], int]:
    """``count`` connections that never send a byte, from 127.0.1.1 .. 127.0.1.{sources}.

    Opened a batch at a time, each batch waited for (a bounded wait), so the connections do reach the
    server instead of being dropped at its listen backlog. Returns the sockets and how many connected.
    """
    sockets: list[socket.socket] = []
    connected = 0
    deadline = time.monotonic() + FLOOD_SECONDS
    for first in range(0, count, batch):
        pending: set[socket.socket] = set()
        with selectors.DefaultSelector() as selector:
            for i in range(first, min(first + batch, count)):
                sock = socket.socket()
                sock.setblocking(False)
                sock.bind((f"127.0.1.{1 + i % sources}", 0))
                sock.connect_ex((HOST, port))
                sockets.append(sock)
                pending.add(sock)
                selector.register(sock, selectors.EVENT_WRITE)
            while pending and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(timeout=min(left, 0.5)):
                    sock = cast(socket.socket, key.fileobj)
                    selector.unregister(sock)
                    pending.discard(sock)
                    connected += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return sockets, connected


async def timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    await asyncio.wait_for(call(), TIMEOUT)  # type: ignore[arg-type]
    return time.monotonic() - started


async def tcp_client(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(LEGITIMATE, 0))
    try:
        writer.write(GET_FIRMWARE)
        assert await reader.readexactly(len(FIRMWARE_ANSWER)) == FIRMWARE_ANSWER
    finally:
        writer.close()


async def ws_client(port: int) -> None:
    async with connect(f"ws://{HOST}:{port}", local_addr=(LEGITIMATE, 0)) as conn:
        await conn.send(GET_FIRMWARE)
        assert await conn.recv() == FIRMWARE_ANSWER


async def coap_get(port: int) -> None:
    context = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{HOST}:{port}/group/65535/name")
        response = await context.request(request).response
        assert response.code == aiocoap.CONTENT and response.payload == b"admin"
    finally:
        await context.shutdown()


def assert_quiet_log(text: str) -> None:
    lines = text.splitlines()
    assert len(lines) <= MAX_LOG_LINES, text[-3000:]
    assert "Traceback" not in text and "out of system resource" not in text


async def test_2000_idle_connections_under_a_1024_file_limit(serve: Callable[..., Served]) -> None:
    served = serve("--coap", f"{HOST}:0", "--tcp", f"{HOST}:0", "--ws", f"{HOST}:0", file_limit=1024)
    tcp_idle, tcp_connected = flood(served.ports["tcp"], 1000)
    ws_idle, ws_connected = flood(served.ports["ws"], 1000)
    idle = tcp_idle + ws_idle
    try:
        assert tcp_connected + ws_connected >= 1900  # the flood did reach the server
        assert await timed(lambda: tcp_client(served.ports["tcp"])) < ANSWER_BOUND
        assert await timed(lambda: ws_client(served.ports["ws"])) < ANSWER_BOUND
        assert await timed(lambda: coap_get(served.ports["coap"])) < ANSWER_BOUND
        # 256 per face, fitted to the limit: the server never came near its 1,024 descriptors.
        assert served.descriptors() < 1024 - 64
    finally:
        for sock in idle:
            sock.close()
    assert served.stop() == 0
    assert_quiet_log(served.stderr())


async def test_out_of_descriptors_backs_off_with_one_warning(serve: Callable[..., Served]) -> None:
    # Caps set past what the file limit allows, so accept() does run out of descriptors.
    served = serve(
        "--coap", f"{HOST}:0", "--tcp", f"{HOST}:0", "--ws", "off",
        "--max-connections", "1000", "--max-connections-per-peer", "1000",
        file_limit=200,
    )  # fmt: skip
    idle, connected = flood(served.ports["tcp"], 600)
    try:
        assert connected >= 500
        assert await timed(lambda: tcp_client(served.ports["tcp"])) < ANSWER_BOUND
        assert await timed(lambda: coap_get(served.ports["coap"])) < ANSWER_BOUND
    finally:
        for sock in idle:
            sock.close()
    await asyncio.sleep(0.2)
    assert await timed(lambda: tcp_client(served.ports["tcp"])) < ANSWER_BOUND  # and once it is over
    assert served.stop() == 0
    log = served.stderr()
    assert "--max-connections 1000 per face exceeds what the file limit (200)" in log
    assert log.count("out of file descriptors") == 1, log[-3000:]
    assert_quiet_log(log)


class _WebSocketSession:
    """Gives `ScramClient` a WebSocket to talk through instead of an in-process session."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def handle_frame(self, frame: bytes) -> bytes:
        await self.conn.send(frame)
        answer = await self.conn.recv()
        assert isinstance(answer, bytes)
        return answer


async def test_vv_logs_no_login_secrets_from_websocket_frames(serve: Callable[..., Served]) -> None:
    served = serve("-vv", "--coap", "off", "--tcp", "off", "--ws", f"{HOST}:0", file_limit=1024)
    async with connect(f"ws://{HOST}:{served.ports['ws']}") as conn:
        await conn.send(plain_login("admin", PASSWORD))  # the SCRAM profile refuses it, after reading it
        assert await conn.recv() == b"\x85\x90\x00"
        client = ScramClient(cast(TapSession, _WebSocketSession(conn)))
        status, _ = await client.login("admin", "admin")
        assert status == 0x45 and client.key is not None
        assert (await client.call(get(INTERFACE, None, 7)))[0] == 0x45
        session_key = client.key
        # What the proof was derived from: the salt and iteration the server sent at step 1.
        await conn.send(get(INTERFACE, None, 40, b"admin".ljust(16, b"\0") + bytes(4)))
        step1 = await conn.recv()
        assert isinstance(step1, bytes)
    keys = derive_scram_keys(hash_login_password("admin"), step1[5:9], int.from_bytes(step1[9:13], "big"))
    assert served.stop() == 0
    log = served.stderr()
    assert "DEBUG" in log  # -vv was in force
    secrets = [
        PASSWORD.encode(),
        hash_login_password("admin"),
        keys.stored_key,
        keys.server_key,
        session_key,
    ]
    for secret in secrets:
        for form in (secret.decode("latin-1"), secret.hex(), " ".join(f"{b:02x}" for b in secret[:8])):
            assert form not in log
    assert "BINARY" not in log  # no frame dumps at all


async def test_vv_malformed_frames_cost_one_short_line_each_kind(serve: Callable[..., Served]) -> None:
    served = serve("-vv", "--coap", "off", "--tcp", f"{HOST}:0", "--ws", "off", file_limit=1024)
    port = served.ports["tcp"]
    reader, writer = await asyncio.open_connection(HOST, port)
    bad_content = bytes.fromhex("a2da000007010003ffff0003")  # INS and method disagree: 0x80, kept open
    for _ in range(300):
        writer.write(bad_content)
        assert await asyncio.wait_for(reader.readexactly(3), TIMEOUT) == b"\x80\x90\x00"
    writer.close()
    for _ in range(50):  # framing lost: each connection closed
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"\x13\x37garbage")
        assert await asyncio.wait_for(reader.read(10), TIMEOUT) == b""
        writer.close()
    assert served.stop() == 0
    log = served.stderr()
    assert 1 <= log.count("malformed frame") <= 2
    assert 1 <= log.count("framing lost") <= 2
    assert max(len(line) for line in log.splitlines()) < 300
    assert "Traceback" not in log


def test_out_of_descriptors_with_every_slot_busy_sheds_newcomers(serve: Callable[..., Served]) -> None:
    """Nothing to displace (every connection completed a frame): a newcomer is closed at once, not left
    hanging in the backlog, and the busy connections keep being served."""
    served = serve(
        "--coap", "off", "--tcp", f"{HOST}:0", "--ws", "off",
        "--max-connections", "1000", "--max-connections-per-peer", "1000",
        file_limit=128,
    )  # fmt: skip
    port = served.ports["tcp"]
    busy: list[socket.socket] = []
    shed = None
    try:
        for _ in range(200):
            conn = socket.create_connection((HOST, port), timeout=5.0)
            conn.sendall(GET_FIRMWARE)
            try:
                answer = conn.recv(100)
            except ConnectionError:
                answer = b""
            if answer != FIRMWARE_ANSWER:
                shed = conn
                break
            busy.append(conn)
        assert shed is not None, "the file limit was never reached"
        assert len(busy) >= 30
        for conn in busy[:5] + busy[-5:]:
            conn.sendall(GET_FIRMWARE)
            assert conn.recv(100) == FIRMWARE_ANSWER
        for conn in busy[-5:]:  # give back a few descriptors: accepting resumes
            conn.close()
        del busy[-5:]
        for _ in range(50):
            with socket.create_connection((HOST, port), timeout=5.0) as again:
                again.sendall(GET_FIRMWARE)
                try:
                    if again.recv(100) == FIRMWARE_ANSWER:
                        break
                except ConnectionError:
                    pass
            time.sleep(0.1)
        else:
            pytest.fail("accepting did not resume after descriptors were freed")
    finally:
        for conn in busy:
            conn.close()
        if shed is not None:
            shed.close()
    assert served.stop() == 0
    log = served.stderr()
    assert log.count("out of file descriptors") == 1, log[-3000:]
    assert_quiet_log(log)
