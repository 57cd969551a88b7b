"""OMA-TLV (content format 11542, LwM2M TS 1.1 Transport section 7.4.3), sans-IO.

LwM2M servers (Leshan, Wakaama, lwm2m-node-lib) read and write instances in TLV; it is the one
LwM2M format with no general-purpose library in Python, so the framing lives here, with the value
encodings of section 7.4.3.2 (integers in the shortest of 1, 2, 4 or 8 bytes, two's complement,
big-endian; floats of 4 or 8 bytes; booleans of one byte; strings in UTF-8). Bytes in, nodes out:
no sockets, no clock.

Header byte: bits 7-6 the type, bit 5 the identifier width (0: 8 bits, 1: 16 bits), bits 4-3 the
length width (0: the length is in bits 2-0; 1, 2, 3: that many bytes follow the identifier).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_DEPTH",
    "TlvError",
    "TlvNode",
    "TlvType",
    "decode",
    "decode_bool",
    "decode_float",
    "decode_int",
    "encode",
    "encode_bool",
    "encode_float",
    "encode_int",
]

# Object instance > multiple resource > resource instance: the deepest nesting LwM2M defines.
MAX_DEPTH = 3
_MAX_LENGTH = 0xFFFFFF  # 24-bit length field


class TlvType(enum.IntEnum):
    OBJECT_INSTANCE = 0
    RESOURCE_INSTANCE = 1
    MULTIPLE_RESOURCE = 2
    RESOURCE_VALUE = 3


_CONTAINERS = frozenset({TlvType.OBJECT_INSTANCE, TlvType.MULTIPLE_RESOURCE})


@dataclass(frozen=True, slots=True)
class TlvNode:
    type: TlvType
    id: int
    value: bytes | tuple[TlvNode, ...]  # bytes for values, children for containers


class TlvError(ValueError):
    """Malformed TLV: truncated, a length past the end, a container where a value belongs, too deep."""


def _encode_node(node: TlvNode) -> bytes:
    if not 0 <= node.id <= 0xFFFF:
        raise TlvError(f"identifier {node.id} is out of 0..65535")
    if node.type in _CONTAINERS:
        if not isinstance(node.value, tuple):
            raise TlvError(f"a {node.type.name} holds child nodes, not bytes")
        body = b"".join(_encode_node(child) for child in node.value)
    else:
        if not isinstance(node.value, bytes):
            raise TlvError(f"a {node.type.name} holds bytes, not child nodes")
        body = node.value
    length = len(body)
    if length > _MAX_LENGTH:
        raise TlvError(f"a value of {length} bytes does not fit a 24-bit length")
    header = int(node.type) << 6
    ident = node.id.to_bytes(1 if node.id <= 0xFF else 2, "big")
    if node.id > 0xFF:
        header |= 0x20
    if length <= 7:
        header |= length
        size = b""
    else:
        width = 1 if length <= 0xFF else 2 if length <= 0xFFFF else 3
        header |= width << 3
        size = length.to_bytes(width, "big")
    return bytes([header]) + ident + size + body


def encode(nodes: Iterable[TlvNode]) -> bytes:
    """The TLV bytes of ``nodes`` in order; TlvError for an id or length the format cannot carry."""
    return b"".join(_encode_node(node) for node in nodes)


def _decode(data: bytes, start: int, end: int, depth: int) -> tuple[TlvNode, ...]:
    if depth > MAX_DEPTH:
        raise TlvError("TLV nested deeper than LwM2M allows")
    nodes: list[TlvNode] = []
    pos = start
    while pos < end:
        header = data[pos]
        pos += 1
        kind = TlvType(header >> 6)
        id_width = 2 if header & 0x20 else 1
        length_width = (header >> 3) & 0x03
        if pos + id_width + length_width > end:
            raise TlvError("TLV header is truncated")
        ident = int.from_bytes(data[pos : pos + id_width], "big")
        pos += id_width
        if length_width:
            length = int.from_bytes(data[pos : pos + length_width], "big")
            pos += length_width
        else:
            length = header & 0x07
        if pos + length > end:
            raise TlvError(f"TLV value of {length} bytes runs past the end")
        if kind in _CONTAINERS:
            children = _decode(data, pos, pos + length, depth + 1)
            allowed = (
                {TlvType.RESOURCE_INSTANCE}
                if kind is TlvType.MULTIPLE_RESOURCE
                else {TlvType.RESOURCE_VALUE, TlvType.MULTIPLE_RESOURCE}
            )
            if any(child.type not in allowed for child in children):
                raise TlvError(f"a {kind.name} holds a node it may not hold")
            nodes.append(TlvNode(kind, ident, children))
        else:
            nodes.append(TlvNode(kind, ident, bytes(data[pos : pos + length])))
        pos += length
    return tuple(nodes)


def decode(data: bytes) -> tuple[TlvNode, ...]:
    """The nodes of a TLV payload; TlvError on any malformed input (never another exception)."""
    return _decode(bytes(data), 0, len(data), 1)


# ------------------------------------------------------------------------------------- values


def encode_int(value: int) -> bytes:
    """An integer in the shortest of 1, 2, 4 or 8 bytes (two's complement)."""
    for width in (1, 2, 4, 8):
        bound = 1 << (8 * width - 1)
        if -bound <= value < bound:
            return value.to_bytes(width, "big", signed=True)
    raise TlvError(f"integer {value} does not fit 64 bits")


def decode_int(data: bytes) -> int:
    if len(data) not in (1, 2, 4, 8):
        raise TlvError(f"an integer takes 1, 2, 4 or 8 bytes, not {len(data)}")
    return int.from_bytes(data, "big", signed=True)


def encode_float(value: float) -> bytes:
    single = struct.pack(">f", value)
    return single if struct.unpack(">f", single)[0] == value else struct.pack(">d", value)


def decode_float(data: bytes) -> float:
    if len(data) == 4:
        return float(struct.unpack(">f", data)[0])
    if len(data) == 8:
        return float(struct.unpack(">d", data)[0])
    raise TlvError(f"a float takes 4 or 8 bytes, not {len(data)}")


def encode_bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def decode_bool(data: bytes) -> bool:
    if data not in (b"\x00", b"\x01"):
        raise TlvError("a boolean is one byte, 0 or 1")
    return data == b"\x01"
