"""Hand-written CoAP framing for the load generators (RFC 7252 section 3), kept minimal and fast.

A generator must never be the bottleneck, so a request is a precomputed prefix and suffix around the
two fields that change per request (message id and token), and a response is parsed only as far as
its code and token. aiocoap is deliberately not used here: it is what is being measured. Options are
encoded by the project's CoAP codec (``tap_emulator.codec.coap``).
"""

from __future__ import annotations

import struct

from tap_emulator.codec.coap import encode_options, uint_bytes

VERSION = 1
CON = 0
NON = 1
ACK = 2
RST = 3

GET = 0x01
POST = 0x02
PUT = 0x03

OPTION_URI_PATH = 11
OPTION_CONTENT_FORMAT = 12

TOKEN_LENGTH = 8
_MID = struct.Struct(">H")
_TOKEN = struct.Struct(">Q")


def uri_path_options(path: str) -> list[tuple[int, bytes]]:
    return [(OPTION_URI_PATH, segment.encode("utf-8")) for segment in path.strip("/").split("/")]


def uint_option(number: int, value: int) -> tuple[int, bytes]:
    return number, uint_bytes(value)


class RequestTemplate:
    """One request shape; ``build(mid, token)`` fills in the two per-request fields."""

    def __init__(
        self,
        code: int,
        path: str,
        payload: bytes = b"",
        *,
        content_format: int | None = None,
        mtype: int = CON,
    ) -> None:
        options = uri_path_options(path)
        if content_format is not None:
            options.append(uint_option(OPTION_CONTENT_FORMAT, content_format))
        self.first_byte = bytes([VERSION << 6 | mtype << 4 | TOKEN_LENGTH, code])
        self.tail = encode_options(options) + (b"\xff" + payload if payload else b"")

    def build(self, mid: int, token: bytes) -> bytes:
        return self.first_byte + _MID.pack(mid & 0xFFFF) + token + self.tail


def token_of(seq: int) -> bytes:
    return _TOKEN.pack(seq)


def parse_response(datagram: bytes) -> tuple[int, int, bytes] | None:
    """``(mtype, code, token)`` of a datagram, or None if it is not a well-formed CoAP header."""
    if len(datagram) < 4 or datagram[0] >> 6 != VERSION:
        return None
    tkl = datagram[0] & 0x0F
    if tkl > 8 or len(datagram) < 4 + tkl:
        return None
    return (datagram[0] >> 4) & 0x03, datagram[1], datagram[4 : 4 + tkl]


def response_payload(datagram: bytes) -> bytes:
    """The payload of a well-formed message (everything after the 0xFF marker), b"" if none."""
    tkl = datagram[0] & 0x0F
    index = 4 + tkl
    while index < len(datagram):
        byte = datagram[index]
        if byte == 0xFF:
            return datagram[index + 1 :]
        delta, length = byte >> 4, byte & 0x0F
        index += 1
        index += {13: 1, 14: 2}.get(delta, 0)
        if length == 13:
            length = datagram[index] + 13
            index += 1
        elif length == 14:
            length = int.from_bytes(datagram[index : index + 2], "big") + 269
            index += 2
        index += length
    return b""


def code_text(code: int) -> str:
    return f"{code >> 5}.{code & 0x1F:02d}"
