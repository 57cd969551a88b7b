"""Variable types as the SDK encodes them: the type byte of ``/1029/{v}/1`` and the bytes of a value.

Read from ``@iotize/tap`` 2.7.0 (``service/impl/variable``: ``VariableType.Data`` and ``.Domain``,
``writeVariableType``; ``data``: ``typeConfig`` and the converters): the type byte is
``domain << 6 | data type``; numbers are big-endian, FLOAT32 is IEEE single precision, BOOLEAN is one
byte (bit 0), ASCII one byte per character. Sans-IO, shared by the profile parser, the variable handler
and ``source_write``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

__all__ = [
    "DATA_TYPES",
    "DOMAINS",
    "DataType",
    "data_type_of",
    "decode_number",
    "encode_number",
    "split_type_byte",
    "type_byte",
]


@dataclass(frozen=True, slots=True)
class DataType:
    name: str
    code: int
    size: int  # bytes per element
    low: int | None = None  # integer range (None: float)
    high: int | None = None


def _int_type(name: str, code: int, size: int, signed: bool) -> DataType:
    bits = 8 * size
    return DataType(
        name, code, size, -(1 << (bits - 1)) if signed else 0, (1 << (bits - 1 if signed else bits)) - 1
    )


DATA_TYPES: dict[str, DataType] = {
    t.name: t
    for t in (
        DataType("BOOLEAN", 0, 1, 0, 1),
        _int_type("INT8", 1, 1, True),
        _int_type("INT16", 2, 2, True),
        _int_type("INT32", 3, 4, True),
        DataType("ASCII", 8, 1, 0, 0xFF),
        DataType("FLOAT32", 19, 4),
        _int_type("UINT8", 33, 1, False),
        _int_type("UINT16", 34, 2, False),
        _int_type("UINT32", 35, 4, False),
    )
}
_BY_CODE = {t.code: t for t in DATA_TYPES.values()}
DOMAINS: dict[str, int] = {"TARGET": 0, "GPIO": 1, "IN_TAP_STATIC": 2, "IN_TAP_VOLATIL": 3}


def type_byte(domain: int, data_type: DataType) -> int:
    return (domain & 0x03) << 6 | data_type.code


def split_type_byte(value: int) -> tuple[int, DataType | None]:
    """(domain, data type) of a type byte; the data type is None for a code the SDK does not define."""
    return value >> 6, _BY_CODE.get(value & 0x3F)


def data_type_of(value: int) -> DataType | None:
    return split_type_byte(value)[1]


def encode_number(data_type: DataType, value: float) -> bytes:
    """One element of ``data_type`` holding ``value``: integers rounded half-even and clamped to the
    type's range (NaN is 0), FLOAT32 as the nearest single (out of range: +-infinity)."""
    if data_type.low is None or data_type.high is None:
        try:
            return struct.pack(">f", value)
        except OverflowError:
            return struct.pack(">f", math.copysign(math.inf, value))
    if math.isnan(value):
        number = 0
    elif math.isinf(value):
        number = data_type.high if value > 0 else data_type.low
    else:
        number = min(max(round(value), data_type.low), data_type.high)
    return number.to_bytes(data_type.size, "big", signed=data_type.low < 0)


def decode_number(data_type: DataType, data: bytes) -> float | int:
    """The number one element of ``data_type`` holds (``data`` is ``data_type.size`` bytes)."""
    if data_type.low is None:
        value: float = struct.unpack(">f", data)[0]
        return value
    return int.from_bytes(data, "big", signed=data_type.low < 0)
