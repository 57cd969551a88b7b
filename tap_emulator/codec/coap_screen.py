"""A first look at every CoAP datagram, before aiocoap parses it: message format errors and bad text.

aiocoap 0.4.17 reads a token length of 9 to 15 as a longer token (RFC 7252 section 3 reserves them: a
message format error), and a string option that is not UTF-8 escapes its datagram handler as a
UnicodeDecodeError with a traceback in the log (issue 9, defect 7). Both are decided here, sans-IO, from
the bytes alone (parsed by ``codec.coap``): a datagram either passes on unchanged (with its parse), is
dropped, or gets a reply built here (an RST rejecting a malformed CON, RFC 7252 section 4.2; a 4.00
for a request whose Uri-Path or Uri-Query is not UTF-8). Each verdict names its reason in a few words,
for one rate-limited log line.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from tap_emulator.codec.coap import ACK, CON, NON, PAYLOAD_MARKER, RST, CoapFormatError, CoapMessage, decode

__all__ = ["Action", "Verdict", "screen"]

BAD_REQUEST = 0x80

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
    message: CoapMessage | None = None  # the parsed datagram, on PASS (so it is parsed once)


def _bad_text_option(message: CoapMessage) -> str | None:
    """The name of the first string option that is not UTF-8, else None."""
    for number, value in message.options:
        name = STRING_OPTIONS.get(number)
        if name is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name
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
        message = decode(datagram)
        bad_option = _bad_text_option(message)
    except CoapFormatError as exc:
        if mtype == CON:
            return Verdict(Action.REPLY, f"message format error ({exc})", _rst(mid))
        return Verdict(Action.DROP, f"message format error ({exc})")
    if bad_option is None:
        return Verdict(Action.PASS, message=message)
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
