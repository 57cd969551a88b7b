"""A first look at every CoAP datagram, before aiocoap parses it: message format errors and bad text.

aiocoap 0.4.17 reads a token length of 9 to 15 as a longer token (RFC 7252 section 3 reserves them: a
message format error), and a string option that is not UTF-8 escapes its datagram handler as a
UnicodeDecodeError with a traceback in the log (issue 9, defect 7). Both are decided here, sans-IO, from
the bytes alone: a datagram either passes to aiocoap unchanged, is dropped, or gets a reply built here
(an RST rejecting a malformed CON, RFC 7252 section 4.2; a 4.00 for a request whose Uri-Path or
Uri-Query is not UTF-8). Each verdict names its reason in a few words, for one rate-limited log line.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Action", "Verdict", "screen"]

CON, NON, ACK, RST = 0, 1, 2, 3
BAD_REQUEST = 0x80
PAYLOAD_MARKER = 0xFF
MAX_TOKEN_LENGTH = 8

# Options whose format is "string" (UTF-8, RFC 7252 section 3.2 and 5.10).
STRING_OPTIONS = {
    3: "Uri-Host",
    8: "Location-Path",
    11: "Uri-Path",
    15: "Uri-Query",
    20: "Location-Query",
    35: "Proxy-Uri",
    39: "Proxy-Scheme",
}


class Action(enum.Enum):
    PASS = "pass"  # hand the datagram to aiocoap as it is
    DROP = "drop"  # ignore it
    REPLY = "reply"  # send ``reply`` back to the sender instead


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str = ""
    reply: bytes = b""


_PASS = Verdict(Action.PASS)


class _FormatError(Exception):
    pass


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            raise _FormatError("truncated option")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise _FormatError("truncated option")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise _FormatError("reserved option nibble 15")


def _bad_text_option(data: bytes, start: int) -> str | None:
    """Walk the options; the name of the first string option that is not UTF-8, else None.

    Raises _FormatError for a malformed option area (RFC 7252 section 3.1).
    """
    pos, number, end = start, 0, len(data)
    while pos < end:
        byte = data[pos]
        if byte == PAYLOAD_MARKER:
            if pos + 1 == end:
                raise _FormatError("payload marker without payload")
            return None
        delta, length, pos = byte >> 4, byte & 0x0F, pos + 1
        if delta >= 13:
            delta, pos = _extended(delta, data, pos)
        if length >= 13:
            length, pos = _extended(length, data, pos)
        number += delta
        if pos + length > end:
            raise _FormatError("option longer than the datagram")
        name = STRING_OPTIONS.get(number)
        if name is not None:
            try:
                data[pos : pos + length].decode("utf-8")
            except UnicodeDecodeError:
                return name
        pos += length
    return None


def _rst(mid: bytes) -> bytes:
    return bytes([0x40 | RST << 4, 0]) + mid


def screen(datagram: bytes, next_mid: Callable[[], int]) -> Verdict:
    """What to do with one received datagram; ``next_mid`` gives a message id for a NON reply."""
    if len(datagram) < 4:
        return Verdict(Action.DROP, "datagram shorter than a CoAP header")
    first, code, mid = datagram[0], datagram[1], datagram[2:4]
    if first >> 6 != 1:
        return Verdict(Action.DROP, "not CoAP version 1")  # silently ignored (RFC 7252 section 3)
    mtype, token_length = (first >> 4) & 0x03, first & 0x0F
    try:
        if token_length > MAX_TOKEN_LENGTH:
            raise _FormatError(f"reserved token length {token_length}")
        if code == 0 and len(datagram) > 4:
            raise _FormatError("an empty message with bytes after its header")
        if 4 + token_length > len(datagram):
            raise _FormatError("token longer than the datagram")
        bad_option = _bad_text_option(datagram, 4 + token_length)
    except _FormatError as exc:
        if mtype == CON:
            return Verdict(Action.REPLY, f"message format error ({exc})", _rst(mid))
        return Verdict(Action.DROP, f"message format error ({exc})")
    if bad_option is None:
        return _PASS
    reason = f"{bad_option} is not valid UTF-8"
    is_request = code >> 5 == 0 and code != 0
    if not is_request:
        if mtype == CON:
            return Verdict(Action.REPLY, reason, _rst(mid))
        return Verdict(Action.DROP, reason)
    if mtype not in (CON, NON):
        return Verdict(Action.DROP, reason)
    reply_type, reply_mid = (ACK, mid) if mtype == CON else (NON, (next_mid() & 0xFFFF).to_bytes(2, "big"))
    token = datagram[4 : 4 + token_length]
    header = bytes([0x40 | reply_type << 4 | token_length, BAD_REQUEST]) + reply_mid + token
    return Verdict(Action.REPLY, reason, header + bytes([PAYLOAD_MARKER]) + reason.encode("ascii"))
