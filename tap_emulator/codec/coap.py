"""The project's one CoAP message codec (RFC 7252 section 3): datagram bytes to a message and back, sans-IO.

aiocoap has its own, but it builds an option object per option and copies them on the way through its
pipeline (coap-notes.md: most of a request's cost). The datagram screen (``coap_screen``) and the
CoAP fast path (``faces.coap.fast_path``) need the message as plain values, and need to know exactly
why a datagram is malformed, so both parse here. Options stay as ``(number, value bytes)`` pairs in the
order they appear on the wire (ascending, as the delta encoding implies); ``encode`` sorts them
stably, so repeated options keep their relative order.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ACK",
    "CON",
    "NON",
    "PAYLOAD_MARKER",
    "RST",
    "CoapFormatError",
    "CoapMessage",
    "decode",
    "encode",
    "encode_options",
    "encode_parts",
    "encode_tail",
    "encode_with_tail",
    "is_critical",
    "uint_bytes",
    "uint_value",
]

VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3
PAYLOAD_MARKER = 0xFF
MAX_TOKEN_LENGTH = 8
# A two-byte extended delta or length reaches 269 + 0xFFFF (RFC 7252 section 3.1).
MAX_OPTION_FIELD = 269 + 0xFFFF


class CoapFormatError(ValueError):
    """A message format error (RFC 7252 sections 3 and 4.2); the text says which, in a few words."""


@dataclass(frozen=True, slots=True)
class CoapMessage:
    mtype: int  # CON, NON, ACK or RST
    code: int  # class << 5 | detail, as on the wire
    mid: int
    token: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes = b""

    def option(self, number: int) -> bytes | None:
        """The value of the first occurrence of option ``number``, or None."""
        for candidate, value in self.options:
            if candidate == number:
                return value
        return None

    def values(self, number: int) -> list[bytes]:
        """Every value of a repeatable option, in order."""
        return [value for candidate, value in self.options if candidate == number]


def is_critical(number: int) -> bool:
    """Odd option numbers are critical (RFC 7252 section 5.4.1)."""
    return number & 1 == 1


def uint_value(value: bytes) -> int:
    """A uint option's value (RFC 7252 section 3.2): big-endian, leading zeros allowed."""
    return int.from_bytes(value, "big")


def uint_bytes(value: int) -> bytes:
    """The shortest encoding of a uint option value (zero is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            raise CoapFormatError("truncated option")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise CoapFormatError("truncated option")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise CoapFormatError("reserved option nibble 15")


def decode(datagram: bytes) -> CoapMessage:
    """Parse one datagram; CoapFormatError for anything RFC 7252 calls a message format error."""
    if len(datagram) < 4:
        raise CoapFormatError("datagram shorter than a CoAP header")
    first = datagram[0]
    if first >> 6 != VERSION:
        raise CoapFormatError("not CoAP version 1")
    token_length = first & 0x0F
    if token_length > MAX_TOKEN_LENGTH:
        raise CoapFormatError(f"reserved token length {token_length}")
    code = datagram[1]
    end = len(datagram)
    if code == 0 and end > 4:
        raise CoapFormatError("an empty message with bytes after its header")
    pos = 4 + token_length
    if pos > end:
        raise CoapFormatError("token longer than the datagram")
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while pos < end:
        byte = datagram[pos]
        if byte == PAYLOAD_MARKER:
            if pos + 1 == end:
                raise CoapFormatError("payload marker without payload")
            payload = datagram[pos + 1 :]
            break
        delta, length, pos = byte >> 4, byte & 0x0F, pos + 1
        if delta >= 13:
            delta, pos = _extended(delta, datagram, pos)
        if length >= 13:
            length, pos = _extended(length, datagram, pos)
        if pos + length > end:
            raise CoapFormatError("option longer than the datagram")
        number += delta
        options.append((number, datagram[pos : pos + length]))
        pos += length
    return CoapMessage(
        (first >> 4) & 0x03,
        code,
        int.from_bytes(datagram[2:4], "big"),
        datagram[4 : 4 + token_length],
        tuple(options),
        payload,
    )


_number_of = operator.itemgetter(0)


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    if value < MAX_OPTION_FIELD:
        return 14, (value - 269).to_bytes(2, "big")
    raise ValueError(f"option delta or length {value} cannot be encoded")


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options delta-encoded in ascending number order (a stable sort: repeats keep their order)."""
    out = bytearray()
    previous = 0
    for number, value in sorted(options, key=_number_of):
        delta, size = number - previous, len(value)
        if delta < 13 and size < 13:  # the common case: one header byte
            out.append(delta << 4 | size)
        else:
            delta, delta_ext = _nibble(delta)
            size, length_ext = _nibble(size)
            out.append(delta << 4 | size)
            out += delta_ext
            out += length_ext
        out += value
        previous = number
    return bytes(out)


def encode(message: CoapMessage) -> bytes:
    """The datagram for ``message``; ValueError for fields that do not fit the format."""
    return encode_parts(
        message.mtype, message.code, message.mid, message.token, message.options, message.payload
    )


def encode_parts(
    mtype: int, code: int, mid: int, token: bytes, options: Sequence[tuple[int, bytes]], payload: bytes
) -> bytes:
    """``encode`` without building a CoapMessage first (the fast path's replies)."""
    return encode_with_tail(mtype, code, mid, token, encode_tail(options, payload))


def encode_tail(options: Sequence[tuple[int, bytes]], payload: bytes) -> bytes:
    """What follows the token: the options, then the payload marker and payload if there is one. It
    does not depend on the header, so a reply rendered once can go out again under other message ids
    and tokens (``encode_with_tail``)."""
    body = encode_options(options) if options else b""
    return body + b"\xff" + payload if payload else body


def encode_with_tail(mtype: int, code: int, mid: int, token: bytes, tail: bytes) -> bytes:
    """The datagram of a header, a token and an encoded tail (``encode_tail``)."""
    if not 0 <= mtype <= 3 or not 0 <= code <= 0xFF or not 0 <= mid <= 0xFFFF:
        raise ValueError("type, code or message id out of range")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"a token has at most {MAX_TOKEN_LENGTH} bytes")
    return bytes((VERSION << 6 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF)) + token + tail
