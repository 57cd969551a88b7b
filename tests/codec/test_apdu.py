"""Tests for the APDU codec: every SDK vector, the refusal rules, the Lc stream framing and fuzzing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator.codec.apdu import (
    NFC_SELECT,
    NFC_SELECT_ANSWER,
    ApduStreamDecoder,
    FrameError,
    Method,
    TapRequest,
    TapStatus,
    decode_inner_request,
    decode_request,
    decode_response,
    encode_inner_request,
    encode_request,
    encode_response,
    is_nfc_select,
    status_from_coap,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

USERNAME_ADMIN = b"admin" + bytes(11)
SCRAM_KEY_ADMIN = bytes.fromhex(
    "1b0469eeca2aa2e7a310a55369602047d218daa51ecfaef7d5394d4f104251f301020304"
)  # spec B.3: admin, salt 01020304, It 5000

# What each SDK call in apdu.txt means, written from the SDK call itself (spec C.3, E), not from the bytes.
EXPECTED_REQUESTS: dict[str, tuple[Method, str, bytes]] = {
    "group.getName(56)": (Method.GET, "/1025/56/0", b""),
    'group.putName(56,"abc")': (Method.PUT, "/1025/56/0", b"abc"),
    'group.changePassword(56,"secret")': (Method.POST, "/1025/56/2", b"secret"),
    "group.changePasswordKey(56, 00..27 (40B))": (Method.POST, "/1025/56/2", bytes(range(40))),
    "group.getSessionLifetime(56)": (Method.GET, "/1025/56/4", b""),
    "group.putSessionLifetime(56,3600)": (Method.PUT, "/1025/56/4", (3600).to_bytes(2, "big")),
    "group.getAlias(56)": (Method.GET, "/1025/56/5", b""),
    "group.putAlias(56,0x1234)": (Method.PUT, "/1025/56/5", b"\x12\x34"),
    "group.create(56)": (Method.POST, "/1025/56/65535", b""),
    "group.getName(0xFFFF)": (Method.GET, "/1025//0", b""),  # admin id == empty instance on the wire
    "group.getName(56) -> 0x84 NOT_FOUND": (Method.GET, "/1025/56/0", b""),
    "interface.getCurrentGroupId()": (Method.GET, "/1024//7", b""),
    "interface.getSecurityOptions() 0x0010": (Method.GET, "/1024//6", b""),
    "interface.getSecurityOptions() 0x0008": (Method.GET, "/1024//6", b""),
    "interface.login(admin/admin)": (Method.POST, "/1024//0", USERNAME_ADMIN * 2),
    "interface.loginWithHash(admin/hash(admin))": (
        Method.POST,
        "/1024//0",
        USERNAME_ADMIN + bytes.fromhex("0155affc023aff6882f56a4e0d9c5466"),
    ),
    "interface.logout()": (Method.POST, "/1024//1", b""),
    "interface.keepAlive()": (Method.GET, "/1024//4", b""),
    "scram.getHashIteration()": (Method.GET, "/1024//42", b""),
    "scram.login({admin, nonce 0x01020304})": (Method.GET, "/1024//40", USERNAME_ADMIN + b"\x01\x02\x03\x04"),
    "scram.loginProof(16B)": (Method.GET, "/1024//41", b"\xaa" * 16),
    "scram.initialize()": (Method.GET, "/1024//47", b""),
    "scram.setInitializationVector(16B)": (Method.GET, "/1024//45", b"\x22" * 16),
    "device.getFirmwareVersion()": (Method.GET, "/3//3", b""),
    "device.getSerialNumber()": (Method.GET, "/3//2", b""),
    "changePasswordKey(56, scram key admin/01020304/5000)": (Method.POST, "/1025/56/2", SCRAM_KEY_ADMIN),
    'changePasswordKey(0xFFFE, hash("supervisor"))': (
        Method.POST,
        "/1025/65534/2",
        bytes.fromhex("99c243d5f82eb712c281d5ffe7d12097"),
    ),
    "getName(0)": (Method.GET, "/1025/0/0", b""),
    "getSessionLifetime(0xFFFF)": (Method.GET, "/1025//4", b""),
}

_WITH_RESPONSE = re.compile(
    r"^(?P<name>.+?)\s+REQ (?P<request>[0-9a-f]+)\s+RESP (?P<response>[0-9a-f]+)"
    r"\s+-> status=0x(?P<status>[0-9a-f]{2}) body=(?P<body>.*)$"
)
_REQUEST_ONLY = re.compile(r"^(?P<name>.+?)\s+(?P<request>[0-9a-f]+)$")


@dataclass(frozen=True)
class Vector:
    name: str
    request: bytes
    response: bytes | None
    status: int | None
    body: str | None


def _load_vectors() -> list[Vector]:
    vectors = []
    for line in (VECTORS / "apdu.txt").read_text().splitlines():
        if not line.strip():
            continue
        if match := _WITH_RESPONSE.match(line):
            vectors.append(
                Vector(
                    match["name"],
                    bytes.fromhex(match["request"]),
                    bytes.fromhex(match["response"]),
                    int(match["status"], 16),
                    match["body"],
                )
            )
        elif match := _REQUEST_ONLY.match(line):
            vectors.append(Vector(match["name"], bytes.fromhex(match["request"]), None, None, None))
        else:
            raise AssertionError(f"unparsed vector line: {line!r}")
    return vectors


APDU_VECTORS = _load_vectors()
WITH_RESPONSES = [vector for vector in APDU_VECTORS if vector.response is not None]


def _expected_data(body: str, data_size: int) -> bytes:
    """The response data that the SDK's decoded value (the annotation after "body=") stands for."""
    value = json.loads(body)
    if isinstance(value, str):
        if value.startswith("ERR "):  # an error status carries no data
            return b""
        return bytes.fromhex(value[2:]) if value.startswith("0x") else value.encode("ascii")
    if isinstance(value, int):
        return value.to_bytes(data_size, "big")
    if "serverNonce" in value:
        nonce: int = value["serverNonce"]
        iterations: int = value["iterationNumber"]
        salt = bytes(value["salt"][str(index)] for index in range(4))
        return nonce.to_bytes(4, "big") + salt + iterations.to_bytes(4, "big")
    flags = [  # security options, bit 0 first (spec B.1)
        "disableResourceFactoryReset",
        "disableLoginWithUID",
        "disableHardwareFactoryReset",
        "hashPassword",
        "scramActivated",
    ]
    return sum(1 << bit for bit, name in enumerate(flags) if value[name]).to_bytes(2, "big")


def test_every_vector_line_is_parsed_and_known() -> None:
    lines = [line for line in (VECTORS / "apdu.txt").read_text().splitlines() if line.strip()]
    assert len(APDU_VECTORS) == len(lines) == 29
    assert {vector.name for vector in APDU_VECTORS} == set(EXPECTED_REQUESTS)


@pytest.mark.parametrize("vector", APDU_VECTORS, ids=lambda vector: vector.name)
def test_vector_request_decodes_to_the_sdk_call(vector: Vector) -> None:
    method, path, payload = EXPECTED_REQUESTS[vector.name]
    request = decode_request(vector.request)
    assert (request.method, request.path, request.payload) == (method, path, payload)
    assert type(request.payload) is bytes
    assert encode_request(request) == vector.request
    assert decode_inner_request(vector.request[5:]) == request
    assert encode_inner_request(request) == vector.request[5:]


@pytest.mark.parametrize("vector", WITH_RESPONSES, ids=lambda vector: vector.name)
def test_vector_response_encodes_to_the_listed_bytes(vector: Vector) -> None:
    assert vector.response is not None and vector.status is not None and vector.body is not None
    data = _expected_data(vector.body, len(vector.response) - 3)
    assert encode_response(vector.status, data) == vector.response
    assert decode_response(vector.response) == (vector.status, data)


def test_real_tap_capture_from_the_ble_plugin_readme() -> None:
    request = decode_request(bytes.fromhex("A2CA000007010003FFFF0002"))
    assert (request.method, request.object_id, request.instance_id, request.resource_id) == (
        Method.GET,
        3,
        None,
        2,
    )
    assert encode_response(TapStatus.CONTENT, b"IoTzPr00410000109B") == bytes.fromhex(
        "45496F547A5072303034313030303031303942" + "9000"
    )


def test_request_fields_and_path() -> None:
    request = decode_request(bytes.fromhex("a2da00000a03040100380000616263"))
    assert request == TapRequest(Method.PUT, 1025, 56, 0, b"abc")
    assert request.path == "/1025/56/0"
    assert TapRequest(Method.GET, 1024, None, 7, b"").path == "/1024//7"


def test_repr_never_shows_the_payload() -> None:
    secret = bytes.fromhex("0155affc023aff6882f56a4e0d9c5466")
    request = TapRequest(Method.POST, 1024, None, 0, USERNAME_ADMIN + secret)
    text = repr(request)
    assert text == "TapRequest(POST /1024//0, 32 payload bytes)"
    assert secret.hex() not in text and "admin" not in text and "\\x" not in text


# ---- refusals --------------------------------------------------------------------------------------

GET_NAME = bytes.fromhex("a2ca00000701040100380000")
PUT_NAME = bytes.fromhex("a2da00000a03040100380000616263")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "too short"),
        (GET_NAME[:-1], "too short"),
        (b"\xa3" + GET_NAME[1:], "CLA"),
        (NFC_SELECT, "CLA 0x00"),
        (NFC_SELECT + b"\x90\x00", "CLA"),
        (GET_NAME[:2] + b"\x01" + GET_NAME[3:], "P1 and P2"),
        (GET_NAME[:3] + b"\x01" + GET_NAME[4:], "P1 and P2"),
        (GET_NAME + b"\x00", "Lc"),  # a trailing Le byte is not accepted
        (PUT_NAME[:-1], "Lc"),
        (PUT_NAME[:4] + b"\x09" + PUT_NAME[5:], "Lc"),
        (GET_NAME[:5] + b"\x00" + GET_NAME[6:], "unknown method"),
        (GET_NAME[:5] + b"\x04" + GET_NAME[6:], "unknown method"),
        (GET_NAME[:5] + b"\xff" + GET_NAME[6:], "unknown method"),
        (b"\xa2\xda" + GET_NAME[2:], "does not match method GET"),
        (b"\xa2\xca" + PUT_NAME[2:], "does not match method PUT"),
        (bytes.fromhex("a2ca0000070204010038ffff"), "does not match method POST"),
        (b"\xa2\xb0" + GET_NAME[2:], "INS 0xB0"),
    ],
)
def test_malformed_request_is_refused(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_request(frame)


def test_refusal_message_never_quotes_the_payload() -> None:
    login = bytes.fromhex("a2da000027020400ffff0000") + USERNAME_ADMIN + b"s3cr3tpassword!!"
    for broken in (login + b"\x00", b"\xa2\xca" + login[2:], login[:5] + b"\x09" + login[6:]):
        with pytest.raises(FrameError) as caught:
            decode_request(broken)
        assert "s3cr3t" not in str(caught.value) and "733363" not in str(caught.value)


@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        (b"", "too short"),
        (b"\x01\x04\x00\xff\xff\x00", "too short"),
        (b"\x05\x04\x00\xff\xff\x00\x07", "method"),
    ],
)
def test_malformed_inner_request_is_refused(inner: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_inner_request(inner)


def test_inner_request_keeps_the_get_with_body_of_scram_login() -> None:
    request = decode_inner_request(bytes.fromhex("010400ffff0028") + USERNAME_ADMIN + b"\x01\x02\x03\x04")
    assert request == TapRequest(Method.GET, 1024, None, 40, USERNAME_ADMIN + b"\x01\x02\x03\x04")


def test_encode_request_limits() -> None:
    largest = TapRequest(Method.PUT, 1025, 1, 0, bytes(248))
    frame = encode_request(largest)
    assert frame[4] == 255 and len(frame) == 260
    assert decode_request(frame) == largest
    with pytest.raises(ValueError, match="exceeds 248"):
        encode_request(TapRequest(Method.PUT, 1025, 1, 0, bytes(249)))
    for bad in (
        TapRequest(Method.GET, 0x10000, 1, 0),
        TapRequest(Method.GET, 1025, -1, 0),
        TapRequest(Method.GET, 1025, 1, 0x10000),
    ):
        with pytest.raises(ValueError, match="16 bits"):
            encode_request(bad)
        with pytest.raises(ValueError, match="16 bits"):
            encode_inner_request(bad)


def test_instance_0xffff_is_the_empty_instance_on_the_wire() -> None:
    admin = encode_request(TapRequest(Method.GET, 1025, 0xFFFF, 0))
    assert (
        admin
        == encode_request(TapRequest(Method.GET, 1025, None, 0))
        == bytes.fromhex("a2ca000007010401ffff0000")
    )
    assert decode_request(admin).instance_id is None


def test_response_refusals() -> None:
    for frame, reason in ((b"", "too short"), (b"\x90\x00", "too short"), (b"\x45\x00\x90", "90 00")):
        with pytest.raises(FrameError, match=reason):
            decode_response(frame)
    assert decode_response(b"\x84\x90\x00") == (TapStatus.NOT_FOUND, b"")
    with pytest.raises(ValueError):
        encode_response(0x100)
    with pytest.raises(ValueError):
        encode_response(-1)


# ---- status codes ----------------------------------------------------------------------------------


def test_status_bytes_equal_coap_codes() -> None:
    shared = [name for name in TapStatus.__members__ if name in Code.__members__]
    assert len(shared) == 12
    for name in shared:
        assert TapStatus[name] == Code[name] == status_from_coap(Code[name])


def test_status_table_of_the_spec() -> None:
    values = {status.name: status.value for status in TapStatus}
    assert (values["OK"], values["PENDING"], values["BUSY"], values["RESOURCE_LOCKED"]) == (0, 1, 0x46, 0x87)
    assert (values["NVM_ERROR"], values["NVM_FULL"], values["DEVICE_UNAVAILABLE"]) == (0xA4, 0xA7, 0xA8)
    assert (values["UNABLE_TO_CONNECT_TO_TARGET"], values["TARGET_POWER_FAILURE"]) == (0xA5, 0xA6)
    assert [status for status in TapStatus if status.name.startswith("TARGET_PROTOCOL_")] == list(
        range(0xB0, 0xBC)
    )


@pytest.mark.parametrize("code", [-1, 0x00, 0x01, 0x02, 0x20, 0x60, 0xC0, 0xE0, 0x100])
def test_status_from_coap_refuses_non_response_codes(code: int) -> None:
    with pytest.raises(ValueError, match="not a CoAP response code"):
        status_from_coap(code)


# ---- NFC SELECT --------------------------------------------------------------------------------------


def test_nfc_select_forms() -> None:
    sdk_frame = bytes.fromhex("00A4040007F0024C774D324D9000")
    assert is_nfc_select(sdk_frame)
    assert is_nfc_select(sdk_frame[:-2])
    assert NFC_SELECT_ANSWER == b"\x90\x00"
    assert not is_nfc_select(sdk_frame[:-1])
    assert not is_nfc_select(sdk_frame + b"\x00")
    assert not is_nfc_select(bytes.fromhex("00A4040007A0000002471001"))  # another application
    assert not is_nfc_select(GET_NAME)


# ---- stream framing --------------------------------------------------------------------------------


def test_stream_waits_for_a_whole_frame() -> None:
    decoder = ApduStreamDecoder()
    assert decoder.feed(PUT_NAME[:4]) == []
    assert decoder.feed(PUT_NAME[4:-1]) == []
    assert decoder.feed(PUT_NAME[-1:] + GET_NAME) == [PUT_NAME, GET_NAME]
    assert decoder.feed(b"") == []


def test_stream_consumes_the_sdk_select_trailer() -> None:
    select = NFC_SELECT + b"\x90\x00"
    decoder = ApduStreamDecoder()
    assert decoder.feed(select + GET_NAME) == [NFC_SELECT, GET_NAME]
    # The trailer split from its SELECT, byte by byte.
    assert decoder.feed(NFC_SELECT) == [NFC_SELECT]
    assert decoder.feed(b"\x90") == []
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(GET_NAME) == [GET_NAME]
    # A SELECT without the trailer is followed directly by the next frame.
    assert decoder.feed(NFC_SELECT + GET_NAME + NFC_SELECT) == [NFC_SELECT, GET_NAME, NFC_SELECT]
    assert decoder.feed(NFC_SELECT) == [NFC_SELECT]


def test_stream_trailer_is_only_skipped_after_a_select() -> None:
    with pytest.raises(FrameError, match="CLA 0x90"):
        ApduStreamDecoder().feed(GET_NAME + b"\x90\x00")
    with pytest.raises(FrameError, match="CLA 0x90"):
        ApduStreamDecoder().feed(NFC_SELECT + b"\x90\x01")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x55", "CLA 0x55"),
        (b"\xa2\x00", "INS"),
        (b"\xa2\xca\x01", "P1 and P2"),
        (b"\xa2\xca\x00\x01", "P1 and P2"),
        (b"\xa2\xca\x00\x00\x06", "Lc 6"),
        (b"\x00\xb0", "only SELECT"),
        (b"\x00\xa4\x00", "only SELECT"),
        (b"\x00\xa4\x04\x00\x00", "empty AID"),
        (GET_NAME + b"GET", "CLA 0x47"),
    ],
)
def test_stream_refuses_a_header_as_soon_as_it_cannot_be_valid(data: bytes, reason: str) -> None:
    decoder = ApduStreamDecoder()
    with pytest.raises(FrameError, match=reason):
        decoder.feed(data)
    with pytest.raises(FrameError, match="already lost"):
        decoder.feed(GET_NAME)


def test_stream_passes_content_errors_on_for_an_error_response() -> None:
    mismatched = b"\xa2\xda" + GET_NAME[2:]
    other_select = bytes.fromhex("00A4040007A0000002471001")
    assert ApduStreamDecoder().feed(mismatched + other_select) == [mismatched, other_select]


# ---- properties and fuzzing ------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
requests = st.builds(
    TapRequest,
    method=st.sampled_from(Method),
    object_id=u16,
    instance_id=st.none() | st.integers(0, 0xFFFE),
    resource_id=u16,
    payload=st.binary(max_size=248),
)


@given(requests)
def test_request_round_trip(request: TapRequest) -> None:
    frame = encode_request(request)
    assert frame[4] == len(frame) - 5
    assert decode_request(frame) == request
    assert decode_inner_request(encode_inner_request(request)) == request


@given(st.integers(0, 0xFF), st.binary(max_size=300))
def test_response_round_trip(status: int, data: bytes) -> None:
    assert decode_response(encode_response(status, data)) == (status, data)


@st.composite
def mutated(draw: st.DrawFn, frames: list[bytes]) -> bytes:
    """A valid frame with a few random edits: byte changes, cuts, insertions."""
    frame = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(("replace", "delete", "insert", "truncate", "extend")))
        position = draw(st.integers(0, len(frame)))
        if edit == "replace" and position < len(frame):
            frame[position] = draw(st.integers(0, 255))
        elif edit == "delete" and position < len(frame):
            del frame[position]
        elif edit == "insert":
            frame.insert(position, draw(st.integers(0, 255)))
        elif edit == "truncate":
            del frame[position:]
        else:
            frame += draw(st.binary(min_size=1, max_size=8))
    return bytes(frame)


VECTOR_REQUESTS = [vector.request for vector in APDU_VECTORS]
VECTOR_RESPONSES = [vector.response for vector in WITH_RESPONSES if vector.response is not None]


@settings(max_examples=500)
@given(st.binary(max_size=300) | mutated(VECTOR_REQUESTS))
def test_fuzz_decode_request_raises_only_frame_error(frame: bytes) -> None:
    try:
        request = decode_request(frame)
    except FrameError:
        return
    assert encode_request(request) == frame  # whatever is accepted is a canonical frame


@settings(max_examples=300)
@given(st.binary(max_size=300) | mutated([request[5:] for request in VECTOR_REQUESTS]))
def test_fuzz_decode_inner_request_raises_only_frame_error(inner: bytes) -> None:
    try:
        request = decode_inner_request(inner)
    except FrameError:
        return
    assert encode_inner_request(request) == inner


@settings(max_examples=300)
@given(st.binary(max_size=64) | mutated(VECTOR_RESPONSES))
def test_fuzz_decode_response_raises_only_frame_error(frame: bytes) -> None:
    try:
        status, data = decode_response(frame)
    except FrameError:
        return
    assert encode_response(status, data) == frame


@given(
    st.lists(
        requests.map(encode_request)
        | st.sampled_from([NFC_SELECT, NFC_SELECT + b"\x90\x00"])
        | st.sampled_from(VECTOR_REQUESTS),
        max_size=12,
    ),
    st.data(),
)
def test_random_splits_of_a_stream_give_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = ApduStreamDecoder()
    received: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += decoder.feed(stream[start:end])
    expected = [NFC_SELECT if frame == NFC_SELECT + b"\x90\x00" else frame for frame in frames]
    assert received == expected


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40) | mutated(VECTOR_REQUESTS), max_size=6))
def test_fuzz_stream_raises_only_frame_error(chunks: list[bytes]) -> None:
    decoder = ApduStreamDecoder()
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert 5 <= len(frame) == 5 + frame[4]
    except FrameError:
        pass
