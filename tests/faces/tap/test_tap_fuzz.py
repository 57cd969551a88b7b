"""Hypothesis against the Tap face: random and mutated frames never crash a session or the server.

Three layers: the sans-IO session (any bytes in, a well-formed response out), the encrypted channel
(mutated ciphertexts are refused and the channel keeps working), and a live TCP server that keeps
serving a second connection while a fuzzed one sends garbage.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tap_support import INTERFACE, Device, ScramClient, device_profile, get, make_device, plain_login

from tap_emulator.codec.apdu import NFC_SELECT
from tap_emulator.codec.secure_frame import encrypt_frame
from tap_emulator.config import SecurityMode
from tap_emulator.faces.tap import TapServer, start_tcp_server

HOST = "127.0.0.1"
TIMEOUT = 5.0

VALID_FRAMES = [
    bytes.fromhex("a2ca000007010003ffff0003"),
    bytes.fromhex("a2ca000007010400ffff0007"),
    bytes.fromhex("a2ca00000701040100380000"),
    bytes.fromhex("a2da00000a03040100380000616263"),
    bytes.fromhex("a2da0000070204010038ffff"),
    bytes.fromhex("a2ca00001b010400ffff002861646d696e000000000000000000000001020304"),
    bytes.fromhex("a2ca000017010400ffff0029" + "aa" * 16),
    bytes.fromhex("a2ca000017010400ffff003031d84c54bc60a0816f73cf6d8846a951"),
    plain_login("admin", "admin"),
    NFC_SELECT,
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "lc"]))
        if kind == "flip" and frame:
            index = draw(st.integers(0, len(frame) - 1))
            frame[index] ^= draw(st.integers(1, 255))
        elif kind == "cut" and frame:
            del frame[draw(st.integers(0, len(frame) - 1)) :]
        elif kind == "insert":
            frame[draw(st.integers(0, len(frame))) : 0] = draw(st.binary(min_size=1, max_size=8))
        elif len(frame) > 4:
            frame[4] = draw(st.integers(0, 255))
    return bytes(frame)


frames = st.one_of(st.binary(max_size=300), mutated_frames())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def scram_device(loop: asyncio.AbstractEventLoop) -> Iterator[Device]:
    dev = make_device(device_profile(SecurityMode.SCRAM, max_failed_logins=0))
    yield dev
    dev.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(frames, min_size=1, max_size=5))
def test_session_answers_any_bytes_with_a_response_frame(
    loop: asyncio.AbstractEventLoop, scram_device: Device, data: list[bytes]
) -> None:
    session = scram_device.session("fuzz")
    for frame in data:
        response = loop.run_until_complete(session.handle_frame(frame))
        assert response.endswith(b"\x90\x00")
        assert response == b"\x90\x00" or len(response) >= 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.integers(0, 63),
    flip=st.integers(1, 255),
    extra=st.binary(max_size=20),
    cut=st.integers(0, 64),
)
def test_mutated_ciphertexts_are_refused_and_the_channel_survives(
    loop: asyncio.AbstractEventLoop, scram_device: Device, position: int, flip: int, extra: bytes, cut: int
) -> None:
    client = ScramClient(scram_device.session("fuzz-enc"))
    assert loop.run_until_complete(client.login("admin", "admin"))[0] == 0x45
    good = loop.run_until_complete(client.call(get(INTERFACE, None, 7)))
    assert good == (0x45, b"\xff\xff")
    assert client.key is not None
    ciphertext = bytearray(
        encrypt_frame(client.key, bytes(16), client.counter, get(INTERFACE, None, 2)[5:] + extra)
    )
    ciphertext[position % len(ciphertext)] ^= flip
    mutated = bytes(ciphertext[: max(cut, 1)] if cut < len(ciphertext) else ciphertext)
    status, _ = loop.run_until_complete(client.send(get(INTERFACE, None, 48, mutated)))
    assert status == 0x80
    client.counter += 1
    assert loop.run_until_complete(client.call(get(INTERFACE, None, 7))) == (0x45, b"\xff\xff")


class _ServerThread:
    """A Tap TCP server on its own event loop, so blocking Hypothesis examples can talk to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: TapServer | None = None
        self.device: Device | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.device = make_device(device_profile(max_failed_logins=0))
        self.server = self.loop.run_until_complete(start_tcp_server(self.device.face, HOST, 0))
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> int:
        self.thread.start()
        assert self.ready.wait(TIMEOUT)
        assert self.server is not None
        return self.server.address[1]

    def stop(self) -> None:
        assert self.server is not None and self.device is not None
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.device.close()
        self.loop.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[int]:
    server = _ServerThread()
    port = server.start()
    yield port
    server.stop()


def _recv_answer(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\x90\x00"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@pytest.fixture(scope="module")
def witness(live_server: int) -> Iterator[socket.socket]:
    """A well-behaved client logged in as admin on its own connection for the whole fuzz run."""
    sock = socket.create_connection((HOST, live_server), timeout=TIMEOUT)
    sock.sendall(plain_login("admin", "admin"))
    assert _recv_answer(sock) == b"\x44\x90\x00"
    yield sock
    sock.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(frames, min_size=1, max_size=6))
def test_live_tcp_fuzzing_leaves_other_connections_served(
    live_server: int, witness: socket.socket, chunks: list[bytes]
) -> None:
    with socket.create_connection((HOST, live_server), timeout=TIMEOUT) as fuzzed:
        try:
            for chunk in chunks:
                fuzzed.sendall(chunk)
        except OSError:
            pass  # the server may close a stream whose framing is lost
        fuzzed.settimeout(0.02)
        try:
            while fuzzed.recv(4096):
                pass
        except (TimeoutError, OSError):
            pass
    witness.sendall(get(INTERFACE, None, 7))
    assert _recv_answer(witness) == b"\x45\xff\xff\x90\x00"
