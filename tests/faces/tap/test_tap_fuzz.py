"""Hypothesis against the Tap face: random and mutated frames never crash a session or the server.

Four layers: the sans-IO session (any bytes in, a well-formed response out), the encrypted channel
(mutated ciphertexts are refused and the channel keeps working), the login limits (random login
traffic from several peers: every path consults the limiter, no peer gets more evaluations than
allowed, no traceback), and live TCP servers that keep serving another peer while a fuzzed one sends
garbage and wrong logins.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tap_support import (
    INTERFACE,
    Device,
    ScramClient,
    device_profile,
    get,
    hash_login,
    make_device,
    name16,
    plain_login,
)

from tap_emulator.codec.apdu import NFC_SELECT, decode_response
from tap_emulator.codec.secure_frame import encrypt_frame
from tap_emulator.config import Profile, SecurityMode
from tap_emulator.faces.tap import TapServer, start_tcp_server
from tap_emulator.security import hash_login_password

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


# ------------------------------------------------------------------------------ login limits

# Two connections of one peer (one can hold a handshake while the other fails), and another peer.
LOCKOUT_PEERS = ["10.0.0.1", "10.0.0.1", "10.0.0.2"]
LOCKOUT_NAMES = ["admin", "admin", "supervisor", "nobody"]
LOGIN_FRAME_KINDS = ["plain", "plain", "scram-start", "scram-start", "scram-proof", "scram-right", "mutated"]
login_ops = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 1, 1, 2]),
        st.sampled_from(LOGIN_FRAME_KINDS),
        st.sampled_from(LOCKOUT_NAMES),
        st.sampled_from(["admin", "supervisor", "wrong", "wrong", ""]),
        st.sampled_from([0.0, 0.0, 0.0, 0.0, 1.0, 25.0, 31.0, 61.0, 400.0]),
        mutated_frames(),
    ),
    min_size=1,
    max_size=40,
)


def _login_frame(kind: str, name: str, password: str, mode: SecurityMode, mutated: bytes) -> bytes:
    if kind == "mutated":
        return mutated
    if kind == "scram-start":
        return get(INTERFACE, None, 40, name16(name) + b"\x00\x00\x00\x07")
    if kind == "scram-proof":
        return get(INTERFACE, None, 41, hash_login_password(password or "x"))
    return hash_login(name, password) if mode is SecurityMode.HASH else plain_login(name, password)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from([SecurityMode.NONE, SecurityMode.HASH, SecurityMode.SCRAM]),
    warm_up=st.integers(0, 4),
    ops=login_ops,
)
# The refusal paths, every time: a proof of a handshake opened before the lockout, a new handshake
# and a right password while locked, and a handshake that expired.
@example(mode=SecurityMode.SCRAM, warm_up=3, ops=[(0, "scram-proof", "admin", "wrong", 0.0, b"")])
@example(mode=SecurityMode.SCRAM, warm_up=3, ops=[(1, "scram-start", "admin", "", 0.0, b"")])
@example(mode=SecurityMode.SCRAM, warm_up=0, ops=[(0, "scram-proof", "admin", "admin", 31.0, b"")])
@example(mode=SecurityMode.NONE, warm_up=3, ops=[(0, "plain", "admin", "admin", 0.0, b"")])
@example(mode=SecurityMode.HASH, warm_up=4, ops=[(2, "plain", "admin", "admin", 0.0, b"")])
def test_login_traffic_from_several_peers_respects_the_limits(
    loop: asyncio.AbstractEventLoop,
    caplog: pytest.LogCaptureFixture,
    mode: SecurityMode,
    warm_up: int,
    ops: list[tuple[int, str, str, str, float, bytes]],
) -> None:
    caplog.set_level(logging.DEBUG, logger="tap_emulator")
    device = make_device(device_profile(mode))
    try:
        limiter = device.face.limiter
        sessions = [device.session(f"fuzz {address}", address) for address in LOCKOUT_PEERS]
        evaluated: dict[str, list[float]] = defaultdict(list)  # per peer: times of wrong logins
        # Often start at or past the first peer's limit, with a handshake of its first connection
        # opened before: that is where the refusal paths are.
        wrong = "scram-right" if mode is SecurityMode.SCRAM else "plain"
        warm: list[tuple[int, str, str, str, float, bytes]] = [(0, "scram-start", "admin", "", 0.0, b"")]
        warm += [(1, wrong, "admin", "wrong", 0.0, b"")] * warm_up
        for index, kind, name, password, gap, mutated in warm + ops:
            device.clock.advance(gap)
            now = device.clock.now
            peer, session = LOCKOUT_PEERS[index], sessions[index]
            if kind == "scram-right":
                if mode is not SecurityMode.SCRAM:
                    continue
                waited = limiter.wait(peer, name, now) > 0
                status, _ = loop.run_until_complete(ScramClient(session).login(name, password))
                if waited:
                    assert status == 0xA3  # refused at /40, whatever the password
                elif name in ("admin", "supervisor") and password == name:
                    assert status == 0x45
                    evaluated[peer].clear()  # a success resets the peer
                else:
                    assert status == 0x81
                    evaluated[peer].append(now)
                continue
            frame = _login_frame(kind, name, password, mode, mutated)
            pending = getattr(session, "_handshake", None)
            checked = pending.account if kind == "scram-proof" and pending is not None else name
            waited = limiter.wait(peer, checked, now) > 0
            response = loop.run_until_complete(session.handle_frame(frame))
            assert response.endswith(b"\x90\x00")
            answer = decode_response(response)[0] if len(response) >= 3 else None
            if kind == "plain" and mode is not SecurityMode.SCRAM:
                if waited:
                    assert answer == 0xA3
                elif answer == 0x81:
                    evaluated[peer].append(now)
                else:
                    assert answer == 0x44
                    evaluated[peer].clear()
            elif kind == "scram-start" and mode is SecurityMode.SCRAM:
                assert answer == (0xA3 if waited else 0x45)
            elif kind == "scram-proof" and mode is SecurityMode.SCRAM and pending is not None:
                assert answer in (0x81, 0xA3)
                if now - pending.started > 30:
                    assert answer == 0x81  # expired: not evaluated, whatever the limits say
                elif waited:
                    assert answer == 0xA3
                elif answer == 0x81:
                    evaluated[peer].append(now)
            # No peer has more wrong logins evaluated than allowed within one lockout_seconds.
            recent = [t for t in evaluated[peer] if now - t < 60]
            assert len(recent) <= 3
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        device.close()


class _ServerThread:
    """A Tap TCP server on its own event loop, so blocking Hypothesis examples can talk to it."""

    def __init__(self, profile: Profile) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: TapServer | None = None
        self.device: Device | None = None
        self.profile = profile

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.device = make_device(self.profile)
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
    server = _ServerThread(device_profile(max_failed_logins=0))
    port = server.start()
    yield port
    server.stop()


@pytest.fixture(scope="module")
def limited_server() -> Iterator[int]:
    """A live server with the default login limits: fuzzers may lock themselves out, nobody else."""
    server = _ServerThread(device_profile())
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(
        st.one_of(
            frames,
            st.builds(
                plain_login,
                st.sampled_from(["admin", "nobody", "x"]),
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8),
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_live_fuzzing_with_wrong_logins_never_locks_out_another_peer(
    limited_server: int, caplog: pytest.LogCaptureFixture, chunks: list[bytes]
) -> None:
    with socket.create_connection(
        (HOST, limited_server), timeout=TIMEOUT, source_address=("127.0.0.2", 0)
    ) as fuzzed:
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
    with socket.create_connection((HOST, limited_server), timeout=TIMEOUT) as user:
        user.sendall(plain_login("admin", "admin"))
        assert _recv_answer(user) == b"\x44\x90\x00"
    assert not [r for r in caplog.records if r.exc_info]
