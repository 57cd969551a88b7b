"""The CoAP message codec: RFC 7252 vectors, every message format error, and agreement with aiocoap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator.codec.coap import (
    ACK,
    CON,
    NON,
    CoapFormatError,
    CoapMessage,
    decode,
    encode,
    encode_options,
    encode_tail,
    encode_with_tail,
    is_critical,
    uint_bytes,
    uint_value,
)

# RFC 7252 appendix A, figure 2 (CON GET, MID 0x7d34, token 0x20, Uri-Path "temperature") and its
# piggybacked answer (ACK 2.05, same MID and token, payload "22.3 C").
RFC_GET = bytes.fromhex("41017d3420") + bytes([0xBB]) + b"temperature"
RFC_CONTENT = bytes.fromhex("61457d3420ff") + b"22.3 C"

VECTORS = [
    (RFC_GET, CoapMessage(CON, 0x01, 0x7D34, b"\x20", ((11, b"temperature"),))),
    (RFC_CONTENT, CoapMessage(ACK, 0x45, 0x7D34, b"\x20", (), b"22.3 C")),
    # empty CON (a CoAP ping)
    (bytes.fromhex("40001234"), CoapMessage(CON, 0, 0x1234)),
    # NON PUT, 8-byte token, Uri-Path 1025/0/0, Content-Format 0 (zero-length uint), payload
    (
        bytes.fromhex("58030001") + b"tokentok" + b"\xb41025\x010\x010\x10\xffhi",
        CoapMessage(NON, 0x03, 1, b"tokentok", ((11, b"1025"), (11, b"0"), (11, b"0"), (12, b"")), b"hi"),
    ),
    # delta 13 (1-byte extension: Size1 60 after nothing), length 13 (a 20-byte Uri-Query)
    (
        bytes.fromhex("40010002") + bytes([0xD1, 60 - 13, 0x04]) + bytes([0x3D, 20 - 13]) + b"q" * 20,
        CoapMessage(CON, 0x01, 2, b"", ((60, b"\x04"), (63, b"q" * 20))),
    ),
    # delta 14 (2-byte extension: option 2049 = 269 + 1780), length 14 (300-byte value)
    (
        bytes.fromhex("40010003")
        + bytes([0xEE])
        + (2049 - 269).to_bytes(2, "big")
        + (300 - 269).to_bytes(2, "big")
        + b"v" * 300,
        CoapMessage(CON, 0x01, 3, b"", ((2049, b"v" * 300),)),
    ),
]


@pytest.mark.parametrize(("wire", "message"), VECTORS)
def test_vectors_decode_and_encode(wire: bytes, message: CoapMessage) -> None:
    assert decode(wire) == message
    assert encode(message) == wire


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x40\x01\x00", "datagram shorter than a CoAP header"),
        (b"\x81\x01\x00\x01\x00", "not CoAP version 1"),
        (bytes.fromhex("49010001") + b"123456789", "reserved token length 9"),
        (bytes.fromhex("40000001ff"), "an empty message with bytes after its header"),
        (bytes.fromhex("44010001") + b"ab", "token longer than the datagram"),
        (bytes.fromhex("40010001ff"), "payload marker without payload"),
        (bytes.fromhex("40010001d4"), "truncated option"),
        (bytes.fromhex("40010001e0ff"), "truncated option"),
        (bytes.fromhex("40010001f0"), "reserved option nibble 15"),
        (bytes.fromhex("40010001bf"), "reserved option nibble 15"),
        (bytes.fromhex("40010001b4") + b"abc", "option longer than the datagram"),
    ],
)
def test_format_errors_are_named(wire: bytes, reason: str) -> None:
    with pytest.raises(CoapFormatError, match=f"^{reason}$"):
        decode(wire)


def test_option_accessors_uint_and_criticality() -> None:
    message = decode(RFC_GET[:5] + bytes([0xB1]) + b"a" + bytes([0x01]) + b"b" + bytes([0x21, 0x2A]))
    assert message.values(11) == [b"a", b"b"]
    assert message.option(11) == b"a"
    assert message.option(13) == b"\x2a"
    assert message.option(17) is None
    assert uint_value(b"") == 0 and uint_value(b"\x00\x2a") == 42
    assert uint_bytes(0) == b"" and uint_bytes(255) == b"\xff" and uint_bytes(256) == b"\x01\x00"
    assert is_critical(11) and not is_critical(12)


def test_encode_sorts_stably_and_refuses_what_does_not_fit() -> None:
    assert encode_options([(12, b""), (11, b"x"), (11, b"y")]) == b"\xb1x\x01y\x10"
    with pytest.raises(ValueError, match="token"):
        encode(CoapMessage(CON, 1, 1, b"123456789"))
    with pytest.raises(ValueError, match="range"):
        encode(CoapMessage(CON, 1, 0x10000))
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode_options([(70000, b"")])


options = st.lists(st.tuples(st.integers(0, 3000), st.binary(max_size=300)), max_size=8).map(
    lambda items: tuple(sorted(items, key=lambda item: item[0]))
)
messages = st.builds(
    CoapMessage,
    mtype=st.integers(0, 3),
    code=st.integers(1, 0xFF),
    mid=st.integers(0, 0xFFFF),
    token=st.binary(max_size=8),
    options=options,
    payload=st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(message: CoapMessage) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(0, 3), st.integers(0, 0xFFFF), st.binary(max_size=8))
def test_a_tail_goes_out_again_under_another_header(
    message: CoapMessage, mtype: int, mid: int, token: bytes
) -> None:
    """What the fast path's kept replies rely on: the tail does not depend on the header."""
    tail = encode_tail(message.options, message.payload)
    assert encode_with_tail(message.mtype, message.code, message.mid, message.token, tail) == encode(message)
    again = CoapMessage(mtype, message.code, mid, token, message.options, message.payload)
    assert encode_with_tail(mtype, message.code, mid, token, tail) == encode(again)


def test_a_tail_vector_and_header_limits() -> None:
    tail = encode_tail([(4, b"\x01"), (12, b"")], b"22.3 C")
    assert tail == b"\x41\x01\x80\xff22.3 C"
    assert encode_with_tail(ACK, 0x45, 0x7D34, b"\x20", b"\xff22.3 C") == RFC_CONTENT
    assert encode_tail([], b"") == b""
    with pytest.raises(ValueError, match="token"):
        encode_with_tail(ACK, 0x45, 1, b"123456789", tail)
    with pytest.raises(ValueError, match="range"):
        encode_with_tail(4, 0x45, 1, b"", tail)


# Options whose values aiocoap keeps as given: text (UTF-8), minimal uints, opaque and unregistered ones.
_TEXT, _UINT, _OPAQUE = (3, 8, 11, 15, 20, 35, 39), (7, 12, 14, 17, 60), (1, 4, 2049, 2500, 3001)
typed_option = st.one_of(
    st.tuples(st.sampled_from(_TEXT), st.text(max_size=40).map(lambda text: text.encode("utf-8"))),
    st.tuples(st.sampled_from(_UINT), st.integers(0, 0xFFFFFFFF).map(uint_bytes)),
    st.tuples(st.sampled_from(_OPAQUE), st.binary(max_size=300)),
)
typed_messages = st.builds(
    CoapMessage,
    mtype=st.integers(0, 3),
    code=st.integers(1, 0xFF),
    mid=st.integers(0, 0xFFFF),
    token=st.binary(max_size=8),
    options=st.lists(typed_option, max_size=8).map(lambda items: tuple(sorted(items, key=lambda i: i[0]))),
    payload=st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None)
@given(typed_messages)
def test_agrees_with_aiocoap(message: CoapMessage) -> None:
    """aiocoap parses our bytes to the same fields, and its encoding of them is ours."""
    import aiocoap
    from aiocoap.message import Direction

    wire = encode(message)
    theirs = aiocoap.Message.decode(wire)
    assert (int(theirs.mtype), int(theirs.code), theirs.mid, theirs.token, theirs.payload) == (
        message.mtype,
        message.code,
        message.mid,
        message.token,
        message.payload,
    )
    assert [(int(o.number), o.encode()) for o in theirs.opt.option_list()] == list(message.options)
    theirs.direction = Direction.OUTGOING
    assert theirs.encode() == wire
