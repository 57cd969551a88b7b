"""Tests for the MQTT relay codec: the SDK's own vectors both ways, round trips, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.codec.mqtt_relay import (
    MAX_FRAME,
    MAX_MESSAGE,
    RelayError,
    RelayMessage,
    decode,
    encode,
    relay_key,
    relay_topics,
    serial_of_topic,
)
from tap_emulator.codec.secure_frame import crc32_mpeg2

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "mqtt-relay.txt"


def _lines(kind: str) -> list[list[str]]:
    rows = [line.split() for line in VECTORS.read_text().splitlines() if line and not line.startswith("#")]
    return [row[1:] for row in rows if row[0] == kind]


FRAMES = _lines("frame")
TOPICS = _lines("topic")


def test_the_vector_file_has_both_kinds() -> None:
    assert len(FRAMES) >= 4 and len(TOPICS) >= 3


@pytest.mark.parametrize("row", FRAMES, ids=lambda row: f"{row[0]}-{row[1]}")
def test_frames_encode_and_decode_as_the_sdk_does(row: list[str]) -> None:
    sender, reference, frame_hex, payload = row
    message = RelayMessage(int(sender), int(reference), bytes.fromhex("" if frame_hex == "-" else frame_hex))
    assert encode(message) == payload.encode()
    assert decode(payload.encode()) == message
    assert decode(payload.lower().encode()) == message  # hex digits in either case


@pytest.mark.parametrize("row", TOPICS, ids=lambda row: row[1])
def test_topics_are_the_sdks(row: list[str]) -> None:
    net_key, serial, command, answer = row
    topics = relay_topics(serial, relay_key("" if net_key == "-" else net_key, serial))
    assert (topics.command, topics.answer) == (command, answer)
    assert serial_of_topic(command) == (serial, command.split("/")[2])
    assert serial_of_topic(answer) is None


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "IOTIZE_DEV/_DEV/K/COMMAND",
        "IOTIZE_DEV/SN/K/COMMAND",
        "X/SN_DEV/K/COMMAND",
        "IOTIZE_DEV/SN_DEV//COMMAND",
    ],
)
def test_other_topics_name_no_device(topic: str) -> None:
    assert serial_of_topic(topic) is None


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF), st.binary(max_size=MAX_FRAME))
def test_round_trip(sender: int, reference: int, frame: bytes) -> None:
    payload = encode(RelayMessage(sender, reference, frame))
    assert len(payload) <= MAX_MESSAGE
    assert (len(payload) // 2 - 4) % 4 == 0  # everything before the CRC is whole words
    assert decode(payload) == RelayMessage(sender, reference, frame)


@given(st.binary(max_size=40), st.integers(0, 200), st.integers(0, 7))
def test_a_flipped_bit_is_refused(frame: bytes, position: int, bit: int) -> None:
    raw = bytearray(bytes.fromhex(encode(RelayMessage(1, 1, frame)).decode()))
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(RelayError):
        decode(raw.hex().encode())


@given(st.binary(max_size=MAX_MESSAGE + 8))
def test_arbitrary_bytes_decode_or_raise_relay_error(data: bytes) -> None:
    try:
        message = decode(data)
    except RelayError:
        return
    assert decode(encode(message)) == message


def _with_crc(body: bytes) -> bytes:
    return (body + crc32_mpeg2(body).to_bytes(4, "big")).hex().encode()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"0", "even number"),
        (b"zz" * 10, "even number"),
        (b"00" * 7, "too short"),
        (_with_crc(bytes.fromhex("00000002") + bytes(8)), "shorter than the ids"),
        (_with_crc(bytes.fromhex("00000007000000010001AA")), "makes a message"),  # padding missing
        (_with_crc(bytes.fromhex("000000FF000000010001") + bytes(2)), "makes a message"),
        (bytes.fromhex(encode(RelayMessage(1, 1, b"")).decode())[:-1].hex().encode() + b"00", "CRC"),
        (b"00" * (MAX_MESSAGE // 2 + 1), "exceeds"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(RelayError, match=why):
        decode(payload)


def test_ids_out_of_range_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode(RelayMessage(1 << 32, 1, b""))
    with pytest.raises(ValueError):
        encode(RelayMessage(1, 1 << 16, b""))
