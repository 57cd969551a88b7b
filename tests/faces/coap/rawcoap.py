"""A minimal CoAP (RFC 7252) message encoder/decoder for tests that must see message types on the wire.

aiocoap hides whether a notification arrived CON or NON and answers malformed input politely; the
Observe and fuzzing tests need the raw datagrams, so they build and read them with this (over the
project's CoAP codec, ``tap_emulator.codec.coap``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tap_emulator.codec import coap
from tap_emulator.codec.coap import encode_options

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4
OBSERVE, URI_PATH, CONTENT_FORMAT, ACCEPT = 6, 11, 12, 17


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes = b"",
    options: list[tuple[int, bytes]] | None = None,
    payload: bytes = b"",
) -> bytes:
    out = bytearray([0x40 | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF])
    out += token + encode_options(options or [])
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def request(
    code: int, path: str, mid: int, token: bytes = b"", *, observe: bool = False, mtype: int = CON
) -> bytes:
    options = [(URI_PATH, segment.encode()) for segment in path.strip("/").split("/")]
    if observe:
        options.append((OBSERVE, b""))
    return encode(mtype, code, mid, token, options)


@dataclass
class Message:
    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    @property
    def dotted_code(self) -> str:
        return f"{self.code >> 5}.{self.code & 0x1F:02d}"

    def option(self, number: int) -> bytes | None:
        for n, value in self.options:
            if n == number:
                return value
        return None


def decode(data: bytes) -> Message:
    parsed = coap.decode(data)
    return Message(parsed.mtype, parsed.code, parsed.mid, parsed.token, list(parsed.options), parsed.payload)


class RawClient(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 whose received datagrams are queued, decoded on demand."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received.put_nowait(data)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(cls, remote_addr=("127.0.0.1", port))
        return protocol

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def receive(self, timeout: float = 5.0) -> Message:
        return decode(await asyncio.wait_for(self.received.get(), timeout))

    async def response(self, timeout: float = 5.0) -> Message:
        """The response to a CON request, piggybacked or separate: a slow answer (a durable write on a
        loaded machine) gets aiocoap's empty ACK first and then a CON response, which is acknowledged."""
        while True:
            reply = await self.receive(timeout)
            if reply.mtype == ACK and reply.code == 0:
                continue
            if reply.mtype == CON:
                self.send(encode(ACK, 0, reply.mid))
            return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
