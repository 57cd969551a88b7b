"""OMA-TLV codec: the Device object example of LwM2M TS 1.0 section 6.4.3.1, round trips, and malformed
input that must raise TlvError (never another exception)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.codec.tlv import (
    TlvError,
    TlvNode,
    TlvType,
    decode,
    decode_bool,
    decode_float,
    decode_int,
    encode,
    encode_bool,
    encode_float,
    encode_int,
)

# The spec's Read of /3/0 in TLV (TS 1.0, 6.4.3.1 "Single Object Instance Request Example").
DEVICE_EXAMPLE = bytes.fromhex(
    "C800144F70656E204D6F62696C6520416C6C69616E6365"
    "C801164C69676874776569676874204D324D20436C69656E74"
    "C80209333435303030313233"
    "C303312E30"
    "8606410001410105"
    "88070842000ED842011388"
    "870841007D42010384"
    "C10964"
    "C10A0F"
    "830B410000"
    "C40D5182428F"
    "C60E2B30323A3030"
    "C11055"
)

R, RI, MR = TlvType.RESOURCE_VALUE, TlvType.RESOURCE_INSTANCE, TlvType.MULTIPLE_RESOURCE


def test_the_specification_device_example_decodes_and_encodes_back() -> None:
    nodes = decode(DEVICE_EXAMPLE)
    assert nodes[0] == TlvNode(R, 0, b"Open Mobile Alliance")
    assert nodes[1] == TlvNode(R, 1, b"Lightweight M2M Client")
    assert nodes[2] == TlvNode(R, 2, b"345000123")
    assert nodes[3] == TlvNode(R, 3, b"1.0")
    assert nodes[4] == TlvNode(MR, 6, (TlvNode(RI, 0, b"\x01"), TlvNode(RI, 1, b"\x05")))
    assert [decode_int(n.value) for n in nodes[5].value if isinstance(n, TlvNode)] == [3800, 5000]  # type: ignore[arg-type]
    assert [decode_int(n.value) for n in nodes[6].value if isinstance(n, TlvNode)] == [125, 900]  # type: ignore[arg-type]
    assert decode_int(nodes[7].value) == 100  # type: ignore[arg-type]
    assert nodes[9] == TlvNode(MR, 11, (TlvNode(RI, 0, b"\x00"),))
    assert decode_int(nodes[10].value) == 0x5182428F  # type: ignore[arg-type]
    assert nodes[11] == TlvNode(R, 14, b"+02:00") and nodes[12] == TlvNode(R, 16, b"U")
    assert encode(nodes) == DEVICE_EXAMPLE


def test_sixteen_bit_ids_and_long_lengths() -> None:
    # An instance of object 1025 with id 65535 holding a 300-byte value: 16-bit id, 16-bit length.
    inner = TlvNode(R, 0, b"x" * 300)
    outer = TlvNode(TlvType.OBJECT_INSTANCE, 65535, (inner,))
    data = encode([outer])
    # object instance, 16-bit id 65535, 16-bit length 304; then resource value, id 0, 16-bit length 300
    assert data[:5] == bytes([0x00 | 0x20 | 0x10, 0xFF, 0xFF, 0x01, 0x30])
    assert data[5:9] == bytes([0xD0, 0x00, 0x01, 0x2C])
    assert decode(data) == (outer,)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (127, "7F"),
        (-128, "80"),
        (128, "0080"),
        (-129, "FF7F"),
        (65535, "0000FFFF"),
        (2**31, "0000000080000000"),
        (-(2**63), "8000000000000000"),
    ],
)
def test_integers_take_the_shortest_width(value: int, wire: str) -> None:
    assert encode_int(value) == bytes.fromhex(wire)
    assert decode_int(bytes.fromhex(wire)) == value


def test_floats_and_booleans() -> None:
    assert encode_float(1.5) == bytes.fromhex("3FC00000")
    assert decode_float(encode_float(0.1)) == 0.1
    assert decode_bool(encode_bool(True)) is True
    with pytest.raises(TlvError):
        decode_bool(b"\x02")
    with pytest.raises(TlvError):
        decode_int(b"\x00\x00\x00")
    with pytest.raises(TlvError):
        encode_int(2**63)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc8",  # header only
        b"\xc8\x00",  # 8-bit length missing
        b"\xc3\x00ab",  # value shorter than its length
        b"\x08\x00\x03\x00\x00\x00",  # an object instance holding an object instance
        b"\x86\x06\x03\xc1\x00\x01",  # a multiple resource holding a resource value
    ],
)
def test_malformed_input_raises_tlv_error(data: bytes) -> None:
    with pytest.raises(TlvError):
        decode(data)


def test_a_value_node_with_children_is_refused_on_encode() -> None:
    with pytest.raises(TlvError):
        encode([TlvNode(R, 0, (TlvNode(R, 1, b""),))])
    with pytest.raises(TlvError):
        encode([TlvNode(R, 70000, b"")])


values = st.builds(TlvNode, st.just(R), st.integers(0, 0xFFFF), st.binary(max_size=300))
multiple = st.builds(
    TlvNode,
    st.just(MR),
    st.integers(0, 0xFFFF),
    st.lists(st.builds(TlvNode, st.just(RI), st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=4).map(
        tuple
    ),
)
instances = st.builds(
    TlvNode,
    st.just(TlvType.OBJECT_INSTANCE),
    st.integers(0, 0xFFFF),
    st.lists(values | multiple, max_size=5).map(tuple),
)


@given(st.lists(instances | values | multiple, max_size=4))
def test_round_trip(nodes: list[TlvNode]) -> None:
    assert decode(encode(nodes)) == tuple(nodes)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_tlv_error(data: bytes) -> None:
    with contextlib.suppress(TlvError):
        decode(data)
