"""The datagram screen (sans-IO): vectors for each verdict, and the property the CoAP face relies on,
that aiocoap's parser accepts every datagram the screen lets through (so aiocoap never logs one)."""

from __future__ import annotations

import itertools

from aiocoap.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator.codec.coap_screen import Action, screen

_mids = itertools.count(0x100)


def next_mid() -> int:
    return next(_mids)


GET_NAME = bytes([0x41, 0x01, 0x12, 0x34, 0xAA, 0xB4]) + b"1025" + bytes([0x01]) + b"0" + bytes([0x01]) + b"0"


def test_a_well_formed_request_passes() -> None:
    assert screen(GET_NAME, next_mid).action is Action.PASS
    assert screen(GET_NAME + b"\xffpayload", next_mid).action is Action.PASS


def test_short_and_foreign_datagrams_are_dropped() -> None:
    assert screen(b"\x40\x01", next_mid).action is Action.DROP
    assert screen(bytes([0x81]) + GET_NAME[1:], next_mid).action is Action.DROP  # version 2


def test_a_reserved_token_length_resets_a_con_and_drops_a_non() -> None:
    for token_length in range(9, 16):
        con = bytes([0x40 | token_length, 0x01, 0xBE, 0xEF]) + bytes(token_length)
        verdict = screen(con, next_mid)
        assert (verdict.action, verdict.reply) == (Action.REPLY, bytes([0x70, 0x00, 0xBE, 0xEF]))
        assert f"token length {token_length}" in verdict.reason
        non = bytes([0x50 | token_length]) + con[1:]
        assert screen(non, next_mid).action is Action.DROP


def test_malformed_options_are_format_errors() -> None:
    header = bytes([0x40, 0x01, 0x00, 0x07])
    cases = {
        "reserved option nibble 15": header + bytes([0xF1, 0x00]),
        "option longer than the datagram": header + bytes([0xB4]) + b"10",
        "truncated option": header + bytes([0xD0]),
        "payload marker without payload": header + b"\xff",
        "an empty message with bytes after its header": bytes([0x40, 0x00, 0x00, 0x07, 0x00]),
    }
    for reason, datagram in cases.items():
        verdict = screen(datagram, next_mid)
        assert verdict.action is Action.REPLY and verdict.reply == bytes([0x70, 0, 0, 7]), reason
        assert reason in verdict.reason


def test_a_request_with_a_path_that_is_not_utf8_gets_a_4_00() -> None:
    con = bytes([0x42, 0x01, 0x01, 0x02, 0x0A, 0x0B, 0xB2, 0xC3, 0x28])
    verdict = screen(con, next_mid)
    assert verdict.action is Action.REPLY
    assert verdict.reply == bytes([0x62, 0x80, 0x01, 0x02, 0x0A, 0x0B, 0xFF]) + b"Uri-Path is not valid UTF-8"
    non = bytes([0x52]) + con[1:]
    reply = screen(non, lambda: 0x4242).reply
    assert reply[:7] == bytes([0x52, 0x80, 0x42, 0x42, 0x0A, 0x0B, 0xFF])
    query = bytes([0x40, 0x01, 0x00, 0x09, 0xD1, 0x02, 0xFF])  # extended delta 13 + 2 = 15
    assert b"Uri-Query is not valid UTF-8" in screen(query, next_mid).reply


def test_a_response_that_is_not_utf8_is_reset_not_answered() -> None:
    con_response = bytes([0x40, 0x45, 0x00, 0x03, 0x82, 0xFF, 0xFE])  # 2.05 with Location-Path 0xFFFE
    assert screen(con_response, next_mid).reply == bytes([0x70, 0, 0, 3])


@settings(max_examples=3000, deadline=None)
@given(
    st.integers(0, 15),
    st.integers(0, 255),
    st.binary(max_size=8),
    st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=20)), max_size=6),
    st.binary(max_size=40),
)
def test_aiocoap_parses_whatever_the_screen_passes(
    token_length: int, code: int, token: bytes, options: list[tuple[int, bytes]], tail: bytes
) -> None:
    from tap_emulator.codec.coap import encode_options

    datagram = bytes([0x40 | token_length, code, 0, 1]) + token + encode_options(options) + tail
    if screen(datagram, next_mid).action is not Action.PASS:
        return
    Message.decode(datagram)  # neither UnparsableMessage (a log line per datagram) nor anything else
