"""Test doubles for the Tap face: a fake clock and random source, a device factory and a client.

The client plays the SDK's side with the project's own sans-IO codecs (APDU, encrypted frames, SCRAM
proofs), so session tests exchange exactly the bytes a real SDK would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol, Self

from websockets.asyncio.client import ClientConnection, connect

from tap_emulator.app import open_device
from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.codec.secure_frame import ZERO_IV, decrypt_frame, encrypt_frame
from tap_emulator.config import Profile, SecurityMode, load_profile
from tap_emulator.faces.tap import TapFace, TapSession
from tap_emulator.model import Operation
from tap_emulator.security import client_proof, derive_scram_keys, hash_login_password, session_key
from tap_emulator.security.lockout import LoginLimiter
from tap_emulator.trace import Trace
from tap_emulator.tree import MAINTENANCE, DeviceTree, Request

ADMIN = 0xFFFF
SUPERVISOR = 0xFFFE
INTERFACE = 1024
GROUP = 1025
DEVICE = 3


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRandom:
    """Returns queued byte strings first, then a deterministic counter pattern."""

    def __init__(self) -> None:
        self.queued: deque[bytes] = deque()
        self._counter = 0

    def queue(self, *chunks: bytes) -> None:
        self.queued.extend(chunks)

    def __call__(self, size: int) -> bytes:
        if self.queued:
            chunk = self.queued.popleft()
            assert len(chunk) == size, f"queued {len(chunk)} bytes, {size} wanted"
            return chunk
        out = bytearray()
        while len(out) < size:
            self._counter += 1
            out += self._counter.to_bytes(4, "big")
        return bytes(out[:size])


def device_profile(
    mode: SecurityMode = SecurityMode.NONE,
    *,
    serial: str = "TN0123",
    max_failed_logins: int = 3,
    lockout_seconds: float = 60.0,
    lifetime_unit_seconds: float = 1.0,
    scram_handshake_seconds: float = 30.0,
    **lockout: Any,
) -> Profile:
    """The default profile with a serial, a security mode and login limits of the test's choosing;
    ``lockout`` takes the other `LockoutPolicy` fields (``account_max_failed_logins=...``)."""
    base = load_profile("default").with_security_mode(mode)
    policy = dataclasses.replace(
        base.security.lockout,
        max_failed_logins=max_failed_logins,
        lockout_seconds=lockout_seconds,
        **lockout,
    )
    return dataclasses.replace(
        base,
        device=dataclasses.replace(base.device, serial_number=serial),
        security=dataclasses.replace(
            base.security,
            lockout=policy,
            session_lifetime_unit_seconds=lifetime_unit_seconds,
            scram_handshake_seconds=scram_handshake_seconds,
        ),
    )


async def _inline(fn):  # type: ignore[no-untyped-def]
    return fn()


@dataclasses.dataclass
class Device:
    tree: DeviceTree
    face: TapFace
    clock: FakeClock
    random: FakeRandom

    def session(self, peer: str = "test", address: str | None = None) -> TapSession:
        return self.face.open_session(peer, address)

    async def maintenance(
        self, operation: Operation, obj: int, inst: int | None, res: int, value: object = None
    ) -> int:
        response = await self.tree.handle(Request(operation, obj, inst, res, value, caller=MAINTENANCE))
        return int(response.status)

    def close(self) -> None:
        self.tree.state.close()


def make_device(profile: Profile | None = None, *, trace: bool = False) -> Device:
    profile = profile or device_profile()
    clock = FakeClock()
    random = FakeRandom()
    tree = open_device(profile, ":memory:", random_bytes=random, clock_ms=lambda: int(clock.now * 1000))
    face = TapFace(
        tree,
        limiter=LoginLimiter(profile.security.lockout),
        clock=clock,
        random_bytes=random,
        lifetime_unit_seconds=profile.security.session_lifetime_unit_seconds,
        handshake_seconds=profile.security.scram_handshake_seconds,
        trace=Trace(to_log=True) if trace else None,
        offload=_inline,
    )
    return Device(tree, face, clock, random)


def frame(method: Method, obj: int, inst: int | None, res: int, payload: bytes = b"") -> bytes:
    return encode_request(TapRequest(method, obj, inst, res, payload))


def get(obj: int, inst: int | None, res: int, payload: bytes = b"") -> bytes:
    return frame(Method.GET, obj, inst, res, payload)


def put(obj: int, inst: int | None, res: int, payload: bytes = b"") -> bytes:
    return frame(Method.PUT, obj, inst, res, payload)


def post(obj: int, inst: int | None, res: int, payload: bytes = b"") -> bytes:
    return frame(Method.POST, obj, inst, res, payload)


def name16(name: str) -> bytes:
    return name.encode("latin-1").ljust(16, b"\0")[:16]


def login_frame(name: str, secret: bytes) -> bytes:
    return post(INTERFACE, None, 0, name16(name) + secret)


def plain_login(name: str, password: str) -> bytes:
    return login_frame(name, name16(password))


def hash_login(name: str, password: str) -> bytes:
    return login_frame(name, hash_login_password(password))


class FrameLink(Protocol):
    """Anything that answers a request frame with a response frame: a session, or a socket to one."""

    async def handle_frame(self, frame: bytes) -> bytes: ...


LINK_TIMEOUT = 5.0


class TcpLink:
    """A real TCP connection to a Tap server, from a chosen loopback source address (a distinct peer)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> Self:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), LINK_TIMEOUT
        )
        return cls(reader, writer)

    async def handle_frame(self, frame: bytes) -> bytes:
        self.writer.write(frame)
        await self.writer.drain()
        data = b""
        # Every answer ends in 90 00 and is written in one piece.
        while not (len(data) >= 3 and data.endswith(b"\x90\x00")) and data != b"\x90\x00":
            chunk = await asyncio.wait_for(self.reader.read(4096), LINK_TIMEOUT)
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), LINK_TIMEOUT)


class WsLink:
    """A real WebSocket connection to a Tap server, from a chosen loopback source address."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> WsLink:
        conn = await connect(f"ws://{host}:{port}", open_timeout=LINK_TIMEOUT, local_addr=(source, 0))
        return cls(conn)

    async def handle_frame(self, frame: bytes) -> bytes:
        await self.conn.send(frame)
        answer = await asyncio.wait_for(self.conn.recv(), LINK_TIMEOUT)
        assert isinstance(answer, bytes)
        return answer

    async def close(self) -> None:
        await self.conn.close()


class ScramClient:
    """The SDK's side of a SCRAM login and of the encrypted channel, for one session."""

    def __init__(self, session: FrameLink) -> None:
        self.session = session
        self.key: bytes | None = None
        self.counter = 0
        self.iv_encode = ZERO_IV
        self.iv_decode = ZERO_IV

    async def send(self, apdu: bytes) -> tuple[int, bytes]:
        return decode_response(await self.session.handle_frame(apdu))

    async def login(self, name: str, password: str, client_nonce: int = 0x01020304) -> tuple[int, bytes]:
        """Returns the status of the failing step, or (0x45, server proof)."""
        status, body = await self.call(
            get(INTERFACE, None, 40, name16(name) + client_nonce.to_bytes(4, "big"))
        )
        if status != 0x45:
            return status, body
        server_nonce = int.from_bytes(body[:4], "big")
        salt, iterations = body[4:8], int.from_bytes(body[8:12], "big")
        keys = derive_scram_keys(hash_login_password(password), salt, iterations)
        status, proof = await self.call(
            get(INTERFACE, None, 41, client_proof(keys, client_nonce, server_nonce))
        )
        if status == 0x45:
            self.key = session_key(keys, client_nonce, server_nonce)
            self.counter = 0
        return status, proof

    async def call(self, apdu: bytes) -> tuple[int, bytes]:
        """Send through the encrypted channel when a key is set, else in clear (as the SDK does)."""
        if self.key is None:
            return await self.send(apdu)
        inner = apdu[5:]
        ciphertext = encrypt_frame(self.key, self.iv_encode, self.counter, inner)
        self.counter += 1
        status, body = await self.send(get(INTERFACE, None, 48, ciphertext))
        if status != 0x45:
            return status, body
        _, plain = decrypt_frame(self.key, self.iv_decode, body)
        return decode_response(plain)

    async def refresh_ivs(self, client_iv: bytes) -> bytes:
        status, tap_iv = await self.call(get(INTERFACE, None, 45, client_iv))
        assert status == 0x45, hex(status)
        self.iv_encode, self.iv_decode = client_iv, tap_iv
        return tap_iv

    async def logout(self) -> int:
        status, _ = await self.call(post(INTERFACE, None, 1))
        self.key = None
        self.iv_encode = self.iv_decode = ZERO_IV
        return status


def hexes(frames: Iterable[bytes]) -> list[str]:
    return [f.hex() for f in frames]
