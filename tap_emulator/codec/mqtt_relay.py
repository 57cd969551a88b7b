"""Sans-IO codec of the IoTize MQTT relay: its topics and the envelope each Tap frame travels in.

Why it exists: `@iotize/device-com-mqtt.js` (2.0.1) reaches a Tap through a broker instead of a socket.
The app publishes each request frame on ``IOTIZE_DEV/{SN}_DEV/{K}/COMMAND`` and reads the answer on
``.../ANSWER``, where K hides the topic from anyone who knows only the serial: the uppercase hex of
PBKDF2-SHA256(net key + serial, "MQTTsubtopic", 5000 iterations, 16 bytes). Each message is the ASCII
(uppercase) hex of::

    length u32be | sender id u32be | reference id u16be | frame | zero padding | CRC-32/MPEG-2 u32be

where ``length`` counts sender id, reference id and frame, the padding makes everything before the CRC a
multiple of 4 bytes, and the CRC covers everything before it. The SDK sends sender id 1 and counts the
reference id up from 1; it does not check the CRC of answers, but the Tap side here checks requests'.

Bytes and strings in, values out; the key derivation is the only heavy step and is a plain function so
callers choose where it runs (a shared worker for a fleet). Vectors: ``tests/vectors/mqtt-relay.txt``.
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from tap_emulator.codec.secure_frame import crc32_mpeg2

__all__ = [
    "MAX_FRAME",
    "MAX_MESSAGE",
    "RelayError",
    "RelayMessage",
    "RelayTopics",
    "decode",
    "encode",
    "relay_key",
    "relay_topics",
    "serial_of_topic",
]

TOPIC_ROOT: Final = "IOTIZE_DEV"
SERIAL_SUFFIX: Final = "_DEV"
COMMAND: Final = "COMMAND"
ANSWER: Final = "ANSWER"
KEY_SALT: Final = b"MQTTsubtopic"
KEY_ITERATIONS: Final = 5000
KEY_BYTES: Final = 16

_HEAD: Final = struct.Struct(">IIH")  # length, sender id, reference id
_IDS_SIZE: Final = 6
_CRC_SIZE: Final = 4
# An encrypted Tap frame is the largest a session handles: an APDU is at most 5 + 255 bytes, its answer
# at most 255 + 2; a relay message carrying more is not one of the SDK's.
MAX_FRAME: Final = 512
MAX_MESSAGE: Final = 2 * (_HEAD.size + MAX_FRAME + 3 + _CRC_SIZE)  # in ASCII hex characters


class RelayError(ValueError):
    """A relay message refused: not hex, too short or too long, a length or padding that does not fit,
    or a CRC that does not match. The message is a short diagnostic without the payload."""


@dataclass(frozen=True, slots=True)
class RelayMessage:
    sender_id: int
    reference_id: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class RelayTopics:
    command: str  # the app publishes requests here; the Tap subscribes
    answer: str  # the Tap publishes answers here


def relay_key(net_key: str, serial: str) -> str:
    """K: the topic segment derived from the net key and the serial (about 5,000 SHA-256 rounds)."""
    derived = hashlib.pbkdf2_hmac("sha256", (net_key + serial).encode(), KEY_SALT, KEY_ITERATIONS, KEY_BYTES)
    return derived.hex().upper()


def relay_topics(serial: str, key: str) -> RelayTopics:
    base = f"{TOPIC_ROOT}/{serial}{SERIAL_SUFFIX}/{key}/"
    return RelayTopics(base + COMMAND, base + ANSWER)


def serial_of_topic(topic: str) -> tuple[str, str] | None:
    """``(serial, K)`` of a command topic, or None when ``topic`` is not one."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[3] != COMMAND:
        return None
    device, key = parts[1], parts[2]
    if not device.endswith(SERIAL_SUFFIX) or len(device) == len(SERIAL_SUFFIX) or not key:
        return None
    return device[: -len(SERIAL_SUFFIX)], key


def _padding(length: int) -> int:
    return -(length + 4) % 4


def encode(message: RelayMessage) -> bytes:
    """The ASCII hex payload of an MQTT publish carrying ``message``."""
    if not 0 <= message.sender_id <= 0xFFFFFFFF or not 0 <= message.reference_id <= 0xFFFF:
        raise ValueError("sender id must fit 32 bits and reference id 16 bits")
    length = _IDS_SIZE + len(message.frame)
    body = (
        _HEAD.pack(length, message.sender_id, message.reference_id) + message.frame + bytes(_padding(length))
    )
    return (body + crc32_mpeg2(body).to_bytes(_CRC_SIZE, "big")).hex().upper().encode("ascii")


def decode(payload: bytes) -> RelayMessage:
    """The message an MQTT publish carries; RelayError when it is not a well-formed relay message."""
    if len(payload) > MAX_MESSAGE:
        raise RelayError(f"message of {len(payload)} characters exceeds {MAX_MESSAGE}")
    try:
        data = binascii.unhexlify(payload)
    except (binascii.Error, ValueError):
        raise RelayError("not an even number of hex digits") from None
    if len(data) < _HEAD.size + _CRC_SIZE:
        raise RelayError(f"message of {len(data)} bytes is too short")
    length, sender_id, reference_id = _HEAD.unpack_from(data)
    if length < _IDS_SIZE:
        raise RelayError(f"length {length} is shorter than the ids")
    end = 4 + length
    expected = end + _padding(length) + _CRC_SIZE
    if len(data) != expected:
        raise RelayError(f"length {length} makes a message of {expected} bytes, not {len(data)}")
    body = data[:-_CRC_SIZE]
    if crc32_mpeg2(body) != int.from_bytes(data[-_CRC_SIZE:], "big"):
        raise RelayError("CRC mismatch")
    return RelayMessage(sender_id, reference_id, bytes(data[_HEAD.size : end]))
