"""Sans-IO codec for the APDU frames the IoTize Tap SDK exchanges with a Tap (spec C.1-C.4).

The Tap face (TCP and WebSocket servers) and the benchmarks build on this module, so it only turns bytes
into values and back: no sockets, no clock, no logging. Every malformed input raises `FrameError` and
nothing else, so a face can answer with an error status (or close a TCP stream whose framing is lost)
instead of crashing.

Wire formats:

- request: ``A2 | INS | 00 | 00 | Lc | method | obj u16be | inst u16be | res u16be | payload`` with
  ``Lc = 7 + len(payload)``; an empty instance (``/1024//7``) travels as 0xFFFF;
- inner request (carried encrypted inside ``/1024//48``): the same without the 5-byte header;
- response: ``status | data | 90 00``;
- the NFC pairing SELECT ``00 A4 04 00 07 F0024C774D324D`` (the SDK appends ``90 00``), answered by
  ``90 00`` alone.

Choices where the spec is silent (strict unless a real client could send the frame):

- INS must match the method: 0xCA for GET, 0xDA for POST and PUT, as every SDK frame does. A frame
  that disagrees is refused with `FrameError`, so the face answers it with an error status.
- P1 and P2 must be zero and Lc must equal the frame length minus 5: no trailing Le byte is accepted,
  because the SDK never sends one and a stray byte would desynchronise the Lc-framed TCP stream.
- On a stream, the two bytes ``90 00`` that the SDK appends to its SELECT are consumed with it (they
  can never start a valid frame, since requests start with 0xA2 or 0x00), so exactly one answer is
  written per SELECT; see `ApduStreamDecoder`.
- Error messages are short diagnostics and never quote the payload, which may hold a password or a key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, NoReturn

__all__ = [
    "EXPECT_ANYTHING",
    "EXPECT_SUCCESS",
    "NFC_SELECT",
    "NFC_SELECT_ANSWER",
    "ApduStreamDecoder",
    "FrameError",
    "Method",
    "MultiRequestItem",
    "TapRequest",
    "TapStatus",
    "decode_inner_request",
    "decode_multi_request",
    "decode_multi_response",
    "decode_request",
    "decode_response",
    "encode_inner_request",
    "encode_multi_request",
    "encode_multi_response_item",
    "encode_request",
    "encode_response",
    "is_nfc_select",
    "status_from_coap",
]


class FrameError(ValueError):
    """A frame that cannot be decoded; the message is a short diagnostic without payload bytes."""


class Method(IntEnum):
    """Method byte of a Tap request; the SDK has no DELETE."""

    GET = 1
    POST = 2
    PUT = 3


class TapStatus(IntEnum):
    """Status byte of a Tap response (spec C.2).

    Where a CoAP equivalent exists the byte equals the CoAP code byte ``class << 5 | detail``
    (CONTENT 0x45 is CoAP 2.05). Success means bit 7 clear.
    """

    OK = 0x00  # used by the SDK mocks
    PENDING = 0x01  # Swift SDK only
    CREATED = 0x41
    DELETED = 0x42
    CHANGED = 0x44
    CONTENT = 0x45
    BUSY = 0x46
    BAD_REQUEST = 0x80
    UNAUTHORIZED = 0x81
    NOT_FOUND = 0x84
    METHOD_NOT_ALLOWED = 0x85
    NOT_ACCEPTABLE = 0x86
    RESOURCE_LOCKED = 0x87
    INTERNAL_SERVER_ERROR = 0xA0
    NOT_IMPLEMENTED = 0xA1
    SERVICE_UNAVAILABLE = 0xA3
    NVM_ERROR = 0xA4
    UNABLE_TO_CONNECT_TO_TARGET = 0xA5
    TARGET_POWER_FAILURE = 0xA6
    NVM_FULL = 0xA7
    DEVICE_UNAVAILABLE = 0xA8
    # The spec names the range 0xB0-0xBB "TARGET_PROTOCOL_*" without the suffixes; they are numbered here.
    TARGET_PROTOCOL_B0 = 0xB0
    TARGET_PROTOCOL_B1 = 0xB1
    TARGET_PROTOCOL_B2 = 0xB2
    TARGET_PROTOCOL_B3 = 0xB3
    TARGET_PROTOCOL_B4 = 0xB4
    TARGET_PROTOCOL_B5 = 0xB5
    TARGET_PROTOCOL_B6 = 0xB6
    TARGET_PROTOCOL_B7 = 0xB7
    TARGET_PROTOCOL_B8 = 0xB8
    TARGET_PROTOCOL_B9 = 0xB9
    TARGET_PROTOCOL_BA = 0xBA
    TARGET_PROTOCOL_BB = 0xBB


_COAP_RESPONSE_CLASSES: Final = frozenset((2, 4, 5))


def status_from_coap(code: int) -> int:
    """Return the Tap status byte for a CoAP response code byte: the same number, once checked.

    Raises ValueError unless ``code`` is a CoAP response code (class 2, 4 or 5, detail 0-31).
    """
    if not 0 <= code <= 0xFF or code >> 5 not in _COAP_RESPONSE_CLASSES:
        raise ValueError(f"not a CoAP response code: {code!r}")
    return code


CLA_TAP: Final = 0xA2
INS_READ: Final = 0xCA  # GET
INS_WRITE: Final = 0xDA  # POST and PUT
NO_INSTANCE: Final = 0xFFFF
HEADER_SIZE: Final = 5  # CLA INS P1 P2 Lc
INNER_HEADER_SIZE: Final = 7  # method obj inst res
MAX_PAYLOAD: Final = 0xFF - INNER_HEADER_SIZE  # Lc is a single byte
STATUS_WORD_OK: Final = b"\x90\x00"

NFC_SELECT: Final = bytes.fromhex("00A4040007F0024C774D324D")
"""The SELECT of the Tap's LwM2M application, as sent by ``tap.nfcPairing()`` (before its ``90 00``)."""
NFC_SELECT_ANSWER: Final = STATUS_WORD_OK
_NFC_SELECT_WITH_TRAILER: Final = NFC_SELECT + STATUS_WORD_OK
_SELECT_HEADER: Final = bytes.fromhex("00A40400")  # ISO 7816 SELECT by name: CLA INS P1 P2

# Indexed by the method byte; None marks bytes that are not a method.
_METHODS: Final[tuple[Method | None, ...]] = (None, Method.GET, Method.POST, Method.PUT) + (None,) * 252
_INS_FOR_METHOD: Final = {Method.GET: INS_READ, Method.POST: INS_WRITE, Method.PUT: INS_WRITE}

_REQUEST_HEADER: Final = struct.Struct(">BBBBBBHHH")
_INNER_HEADER: Final = struct.Struct(">BHHH")


@dataclass(frozen=True, slots=True, repr=False)
class TapRequest:
    """One decoded Tap request.

    ``instance_id`` is None for an empty instance, which is 0xFFFF on the wire. The admin group id
    0xFFFF is byte-for-byte the same, so ``/1025/65535/0`` decodes to ``/1025//0``: the tree decides
    what an empty instance means for each object.
    """

    method: Method
    object_id: int
    instance_id: int | None
    resource_id: int
    # The payload can carry a password, a password key or a SCRAM proof: keep it out of reprs.
    payload: bytes = field(default=b"", repr=False)

    @property
    def path(self) -> str:
        """LwM2M-style path as the SDK writes it: ``/1025/56/0``, ``/1024//7``."""
        instance = "" if self.instance_id is None else str(self.instance_id)
        return f"/{self.object_id}/{instance}/{self.resource_id}"

    def __repr__(self) -> str:
        return f"TapRequest({self.method.name} {self.path}, {len(self.payload)} payload bytes)"


def decode_request(apdu: bytes) -> TapRequest:
    """Decode a complete request APDU; raise FrameError on anything malformed."""
    size = len(apdu)
    if size < HEADER_SIZE + INNER_HEADER_SIZE:
        raise FrameError(f"request too short ({size} bytes)")
    cla, ins, p1, p2, lc, method_byte, object_id, instance, resource_id = _REQUEST_HEADER.unpack_from(apdu)
    if cla != CLA_TAP:
        raise FrameError(f"unexpected CLA 0x{cla:02X}")
    if p1 or p2:
        raise FrameError("P1 and P2 must be zero")
    if lc != size - HEADER_SIZE:
        raise FrameError(f"Lc {lc} does not match the {size - HEADER_SIZE} bytes after the header")
    method = _METHODS[method_byte]
    if method is None:
        raise FrameError(f"unknown method 0x{method_byte:02X}")
    if ins != _INS_FOR_METHOD[method]:
        raise FrameError(f"INS 0x{ins:02X} does not match method {method.name}")
    return TapRequest(
        method,
        object_id,
        None if instance == NO_INSTANCE else instance,
        resource_id,
        bytes(apdu[HEADER_SIZE + INNER_HEADER_SIZE :]),
    )


def decode_inner_request(inner: bytes) -> TapRequest:
    """Decode the header-less request carried (encrypted) inside ``/1024//48``."""
    if len(inner) < INNER_HEADER_SIZE:
        raise FrameError(f"inner request too short ({len(inner)} bytes)")
    method_byte, object_id, instance, resource_id = _INNER_HEADER.unpack_from(inner)
    method = _METHODS[method_byte]
    if method is None:
        raise FrameError(f"unknown method 0x{method_byte:02X}")
    return TapRequest(
        method,
        object_id,
        None if instance == NO_INSTANCE else instance,
        resource_id,
        bytes(inner[INNER_HEADER_SIZE:]),
    )


def _pack_inner_header(req: TapRequest) -> bytes:
    instance = NO_INSTANCE if req.instance_id is None else req.instance_id
    if not (0 <= req.object_id <= 0xFFFF and 0 <= instance <= 0xFFFF and 0 <= req.resource_id <= 0xFFFF):
        raise ValueError("object, instance and resource ids must fit in 16 bits")
    return _INNER_HEADER.pack(req.method, req.object_id, instance, req.resource_id)


def encode_inner_request(req: TapRequest) -> bytes:
    """Encode ``method | obj | inst | res | payload``; raise ValueError on ids out of range."""
    return _pack_inner_header(req) + req.payload


def encode_request(req: TapRequest) -> bytes:
    """Encode a request APDU as the SDK does; raise ValueError if it cannot fit in one frame."""
    if len(req.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(req.payload)} bytes exceeds {MAX_PAYLOAD}")
    header = bytes((CLA_TAP, _INS_FOR_METHOD[req.method], 0, 0, INNER_HEADER_SIZE + len(req.payload)))
    return header + _pack_inner_header(req) + req.payload


def encode_response(status: int, data: bytes = b"") -> bytes:
    """Encode ``status | data | 90 00``; raise ValueError if status is not a byte."""
    return bytes((status,)) + data + STATUS_WORD_OK


def decode_response(frame: bytes) -> tuple[int, bytes]:
    """Decode ``status | data | 90 00`` into (status, data); raise FrameError otherwise."""
    if len(frame) < 3:
        raise FrameError(f"response too short ({len(frame)} bytes)")
    if frame[-2:] != STATUS_WORD_OK:
        raise FrameError("response does not end with status word 90 00")
    return frame[0], bytes(frame[1:-2])


# ------------------------------------------------------------------ multi-request frames (/1024//89)

EXPECT_SUCCESS: Final = 0x7F  # the SDK's MultiRequestFrame.ExpectedResponseStatus.SUCCESS
EXPECT_ANYTHING: Final = 0xFF  # ... .ANYTHING (its default)
_ITEM_LENGTH: Final = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class MultiRequestItem:
    """One request of a multi-request frame and the status it expects (`meets`)."""

    request: TapRequest
    expected_status: int

    def meets(self, status: int) -> bool:
        """ANYTHING accepts every answer, SUCCESS every success (< 0x80), any other byte only itself."""
        if self.expected_status == EXPECT_ANYTHING:
            return True
        if self.expected_status == EXPECT_SUCCESS:
            return status < 0x80
        return status == self.expected_status


def decode_multi_request(payload: bytes) -> list[MultiRequestItem]:
    """Split ``(length u16 | method obj inst res payload | expected status u8)*`` (the SDK's
    MultiRequestFrame); raise FrameError on anything malformed, before any request is served."""
    items: list[MultiRequestItem] = []
    offset, size = 0, len(payload)
    while offset < size:
        if size - offset < _ITEM_LENGTH.size:
            raise FrameError("multi-request item truncated in its length")
        (length,) = _ITEM_LENGTH.unpack_from(payload, offset)
        start = offset + _ITEM_LENGTH.size
        end = start + length
        if end + 1 > size:
            raise FrameError(f"multi-request item of {length} bytes overruns the frame")
        items.append(MultiRequestItem(decode_inner_request(payload[start:end]), payload[end]))
        offset = end + 1
    return items


def encode_multi_request(items: list[MultiRequestItem]) -> bytes:
    """The SDK's encoding of a multi-request frame (for tests and benchmarks playing the client)."""
    out = bytearray()
    for item in items:
        inner = encode_inner_request(item.request)
        out += _ITEM_LENGTH.pack(len(inner)) + inner + bytes((item.expected_status,))
    return bytes(out)


def encode_multi_response_item(status: int, data: bytes) -> bytes:
    """``length u16 | status | data``, one answer of a multi-response frame (length counts the status)."""
    return _ITEM_LENGTH.pack(1 + len(data)) + bytes((status,)) + data


def decode_multi_response(body: bytes) -> list[tuple[int, bytes]]:
    """(status, data) of each answer; raise FrameError on a malformed body (the client's side)."""
    answers: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < _ITEM_LENGTH.size + 1:
            raise FrameError("multi-response item truncated")
        (length,) = _ITEM_LENGTH.unpack_from(body, offset)
        start = offset + _ITEM_LENGTH.size
        if length < 1 or start + length > len(body):
            raise FrameError(f"multi-response item of {length} bytes overruns the body")
        answers.append((body[start], bytes(body[start + 1 : start + length])))
        offset = start + length
    return answers


def is_nfc_select(frame: bytes) -> bool:
    """True for the SDK's NFC pairing SELECT, with or without its trailing ``90 00``.

    Its answer is `NFC_SELECT_ANSWER` (``90 00`` with no Tap status byte).
    """
    return frame in (NFC_SELECT, _NFC_SELECT_WITH_TRAILER)


class ApduStreamDecoder:
    """Splits a TCP byte stream into frames by the Lc byte (5-byte header + Lc bytes).

    A header is checked as soon as its bytes arrive. Two kinds of header can be valid: a Tap request
    (``A2 CA|DA 00 00 Lc`` with Lc >= 7) and an ISO SELECT by name (``00 A4 04 00 Lc`` with Lc >= 1).
    Anything else means the framing is lost: `feed` raises FrameError and the caller must close the
    connection; the decoder then stays failed, and frames completed earlier in the same `feed` call are
    dropped with the connection (the SDK waits for each answer before it sends the next request).

    Frames are returned whole and undecoded: content errors (method and INS disagreeing, an unknown
    SELECT AID) are left to `decode_request` and `is_nfc_select`, so the face can answer them.

    The SDK sends its SELECT followed by ``90 00``. Those two bytes right after a SELECT are consumed
    silently, so the face answers the SELECT once; a SELECT without them works as well.
    """

    __slots__ = ("_after_select", "_buffer", "_failed")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed = False
        self._after_select = False

    @property
    def pending(self) -> int:
        """Bytes received that do not complete a frame yet (a transport times them out)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append received bytes and return every frame they complete, in order."""
        if self._failed:
            raise FrameError("stream framing already lost")
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = 0
        end = len(buffer)
        while start < end:
            if self._after_select:
                if buffer[start] == 0x90:
                    if end - start < 2:
                        break  # wait for the second byte of the trailer
                    if buffer[start + 1] == 0x00:
                        start += 2
                self._after_select = False
                continue
            available = min(end - start, HEADER_SIZE)
            if buffer[start] == CLA_TAP:
                self._check_tap_header(buffer, start, available)
                is_select = False
            elif buffer[start] == _SELECT_HEADER[0]:
                self._check_select_header(buffer, start, available)
                is_select = True
            else:
                self._fail(f"unexpected CLA 0x{buffer[start]:02X}")
            if available < HEADER_SIZE:
                break
            frame_end = start + HEADER_SIZE + buffer[start + 4]
            if frame_end > end:
                break
            frames.append(bytes(buffer[start:frame_end]))
            start = frame_end
            self._after_select = is_select
        del buffer[:start]
        return frames

    def _check_tap_header(self, buffer: bytearray, start: int, available: int) -> None:
        if available >= 2 and buffer[start + 1] not in (INS_READ, INS_WRITE):
            self._fail(f"unexpected INS 0x{buffer[start + 1]:02X}")
        if (available >= 3 and buffer[start + 2]) or (available >= 4 and buffer[start + 3]):
            self._fail("P1 and P2 must be zero")
        if available >= 5 and buffer[start + 4] < INNER_HEADER_SIZE:
            self._fail(f"Lc {buffer[start + 4]} is shorter than a request header")

    def _check_select_header(self, buffer: bytearray, start: int, available: int) -> None:
        prefix = min(available, len(_SELECT_HEADER))
        if buffer[start : start + prefix] != _SELECT_HEADER[:prefix]:
            self._fail("unsupported ISO command (only SELECT by name is accepted)")
        if available >= 5 and buffer[start + 4] == 0:
            self._fail("SELECT with an empty AID")

    def _fail(self, reason: str) -> NoReturn:
        self._failed = True
        self._buffer.clear()
        raise FrameError(reason)
