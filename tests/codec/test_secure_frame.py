"""Tests for the encrypted-channel codec: the B.5 vector both ways, CRC, wrapping, counters, IV switch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator.codec.apdu import (
    Method,
    TapRequest,
    decode_inner_request,
    decode_request,
    encode_inner_request,
    encode_request,
    encode_response,
)
from tap_emulator.codec.secure_frame import (
    ZERO_IV,
    FrameCipher,
    SecureChannel,
    SecureFrameError,
    crc32_mpeg2,
    decrypt_frame,
    encrypt_frame,
    unwrap,
    wrap,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

# Spec B.5: the session key of SCRAM vector 0, and the response ciphertext (not in encrypted-frame.txt).
SESSION_KEY = bytes.fromhex("a87aeab4225a065f47505e88b9d3ae77")
RESPONSE_CIPHERTEXT = bytes.fromhex("659b41622dba61f3d988e2b51c6972e0")


_VECTOR_LINE = re.compile(r"^(?P<label>.+?)\s+(?P<value>[0-9a-f]+)(?: -> (?P<decoded>[0-9a-f]+) -> .*)?$")


def _load_frame_vector() -> dict[str, bytes]:
    """Label -> bytes; the response line also yields "decoded response payload"."""
    fields = {}
    for line in (VECTORS / "encrypted-frame.txt").read_text().splitlines():
        if not line.strip():
            continue
        match = _VECTOR_LINE.match(line)
        assert match is not None, f"unparsed vector line: {line!r}"
        fields[match["label"]] = bytes.fromhex(match["value"])
        if match["decoded"]:
            fields[match["label"] + " payload"] = bytes.fromhex(match["decoded"])
    return fields


FRAME_VECTOR = _load_frame_vector()
INNER_REQUEST = FRAME_VECTOR["inner request"]
WRAPPED_REQUEST = FRAME_VECTOR["wrapped (plaintext)"]
REQUEST_CIPHERTEXT = FRAME_VECTOR["ciphertext"]
REQUEST_ON_THE_WIRE = FRAME_VECTOR["APDU on the wire"]
WRAPPED_RESPONSE = FRAME_VECTOR["decoded response"]
APDU_RESPONSE = FRAME_VECTOR["decoded response payload"]

KEEP_ALIVE = encode_inner_request(TapRequest(Method.GET, 1024, None, 4))


def _crc_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32/MPEG-2, straight from its definition."""
    register = 0xFFFFFFFF
    for byte in data:
        register ^= byte << 24
        for _ in range(8):
            register = (register << 1) ^ (0x04C11DB7 if register & 0x80000000 else 0)
            register &= 0xFFFFFFFF
    return register


# ---- CRC and wrapping ------------------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7
    assert crc32_mpeg2(b"") == 0xFFFFFFFF
    assert crc32_mpeg2(WRAPPED_REQUEST[:-4]) == int.from_bytes(WRAPPED_REQUEST[-4:], "big")


@given(st.binary(max_size=300))
def test_crc_matches_the_bitwise_definition(data: bytes) -> None:
    assert crc32_mpeg2(data) == _crc_reference(data)


def test_vector_wrapping_both_directions() -> None:
    assert wrap(0, INNER_REQUEST) == WRAPPED_REQUEST
    assert unwrap(WRAPPED_REQUEST) == (0, INNER_REQUEST)
    assert wrap(0, APDU_RESPONSE) == WRAPPED_RESPONSE
    assert unwrap(WRAPPED_RESPONSE) == (0, APDU_RESPONSE)


@pytest.mark.parametrize("length", range(41))
def test_wrap_pads_with_the_fewest_zero_bytes(length: int) -> None:
    payload = bytes(range(1, length + 1))
    frame = wrap(0x1234, payload)
    assert len(frame) % 16 == 0 and len(frame) - 16 < 8 + length <= len(frame)
    assert frame[:4] == b"\x12\x34" + length.to_bytes(2, "big")
    assert frame[4 + length : -4] == bytes(len(frame) - 8 - length)
    assert unwrap(frame) == (0x1234, payload)


def test_wrap_limits() -> None:
    for counter in (-1, 0x10000):
        with pytest.raises(ValueError, match="16 bits"):
            wrap(counter, b"")
    assert unwrap(wrap(0xFFFF, bytes(0xFFFF))) == (0xFFFF, bytes(0xFFFF))
    with pytest.raises(ValueError, match="65535"):
        wrap(0, bytes(0x10000))


def _with_crc(body: bytes) -> bytes:
    return body + crc32_mpeg2(body).to_bytes(4, "big")


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (b"", "AES blocks"),
        (WRAPPED_REQUEST[:-1], "AES blocks"),
        (WRAPPED_REQUEST + b"\x00", "AES blocks"),
        (_with_crc(bytes.fromhex("00000009010400ffff000700")), "length field 9"),  # longer than the frame
        (_with_crc(b"\x00\x00\x00\x08" + bytes(24)), "length field 8"),  # a whole block of padding
        (WRAPPED_REQUEST[:-1] + bytes([WRAPPED_REQUEST[-1] ^ 1]), "CRC"),
        (WRAPPED_REQUEST[:5] + b"\x05" + WRAPPED_REQUEST[6:], "CRC"),
        (b"\x00\x01" + WRAPPED_REQUEST[2:], "CRC"),  # the counter is covered too
    ],
)
def test_unwrap_refusals(plaintext: bytes, reason: str) -> None:
    with pytest.raises(SecureFrameError, match=reason):
        unwrap(plaintext)


def test_unwrap_accepts_nonzero_padding_covered_by_the_crc() -> None:
    assert unwrap(_with_crc(bytes.fromhex("00000007010400ffff0007ee"))) == (0, INNER_REQUEST)


# ---- the B.5 vector through the channel ------------------------------------------------------------


def test_vector_request_direction() -> None:
    # Client side, as the SDK builds it.
    ciphertext = encrypt_frame(SESSION_KEY, ZERO_IV, 0, INNER_REQUEST)
    assert ciphertext == REQUEST_CIPHERTEXT
    assert encode_request(TapRequest(Method.GET, 1024, None, 48, ciphertext)) == REQUEST_ON_THE_WIRE
    # Tap side.
    outer = decode_request(REQUEST_ON_THE_WIRE)
    assert outer.path == "/1024//48"
    channel = SecureChannel(SESSION_KEY)
    inner = channel.open_request(outer.payload)
    assert inner == INNER_REQUEST
    assert decode_inner_request(inner) == TapRequest(Method.GET, 1024, None, 7)
    assert channel.frames == 1


def test_vector_response_direction() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.open_request(REQUEST_CIPHERTEXT)
    sealed = channel.seal_response(encode_response(0x45, b"\x00\x38"))
    assert sealed == RESPONSE_CIPHERTEXT
    assert decrypt_frame(SESSION_KEY, ZERO_IV, sealed) == (0, APDU_RESPONSE)


# ---- counters --------------------------------------------------------------------------------------


def _request(counter: int, iv: bytes = ZERO_IV, inner: bytes = KEEP_ALIVE) -> bytes:
    return encrypt_frame(SESSION_KEY, iv, counter, inner)


@pytest.mark.parametrize("first", [0, 1, 500])
def test_first_frame_may_carry_any_counter(first: int) -> None:
    channel = SecureChannel(SESSION_KEY)
    assert channel.open_request(_request(first)) == KEEP_ALIVE


def test_counter_must_increase() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.open_request(_request(5))
    for stale in (5, 4, 0):
        with pytest.raises(SecureFrameError, match=f"counter {stale} does not increase past 5"):
            channel.open_request(_request(stale))
    assert channel.frames == 1
    channel.open_request(_request(9))  # gaps are fine
    with pytest.raises(SecureFrameError, match="past 9"):
        channel.open_request(_request(6))
    assert channel.frames == 2


def test_a_refused_frame_changes_nothing() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.open_request(_request(3))
    corrupted = bytearray(_request(4))
    corrupted[-1] ^= 0x40  # garbles the (single) block: length or CRC check fails
    with pytest.raises(SecureFrameError):
        channel.open_request(bytes(corrupted))
    assert channel.frames == 1
    assert decrypt_frame(SESSION_KEY, ZERO_IV, channel.seal_response(b"\x45\x90\x00"))[0] == 3
    channel.open_request(_request(4))
    assert channel.frames == 2


def test_response_carries_the_counter_of_its_request() -> None:
    channel = SecureChannel(SESSION_KEY)
    for counter in (0, 1, 7, 300):
        channel.open_request(_request(counter))
        response = encode_response(0x45, counter.to_bytes(2, "big"))
        assert decrypt_frame(SESSION_KEY, ZERO_IV, channel.seal_response(response)) == (counter, response)


def test_session_ends_after_the_last_counter() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.open_request(_request(0xFFFF))
    with pytest.raises(SecureFrameError, match="does not increase"):
        channel.open_request(_request(0))


def test_seal_without_an_opened_request_is_a_caller_error() -> None:
    with pytest.raises(RuntimeError, match="no opened request"):
        SecureChannel(SESSION_KEY).seal_response(b"\x45\x90\x00")


@pytest.mark.parametrize("ciphertext", [b"", bytes(15), bytes(17), bytes(33)])
def test_unaligned_ciphertext_is_refused(ciphertext: bytes) -> None:
    channel = SecureChannel(SESSION_KEY)
    with pytest.raises(SecureFrameError, match="AES blocks"):
        channel.open_request(ciphertext)
    with pytest.raises(SecureFrameError, match="AES blocks"):
        decrypt_frame(SESSION_KEY, ZERO_IV, ciphertext)


def test_a_frame_under_another_key_is_refused() -> None:
    other_key = bytes(range(16))
    with pytest.raises(SecureFrameError):
        SecureChannel(SESSION_KEY).open_request(encrypt_frame(other_key, ZERO_IV, 0, KEEP_ALIVE))


# ---- IV refresh through /1024//45 ------------------------------------------------------------------

CLIENT_IV = bytes.fromhex("22" * 16)
TAP_IV = bytes.fromhex("33" * 16)
SET_IV = encode_inner_request(TapRequest(Method.GET, 1024, None, 45, CLIENT_IV))


@pytest.mark.parametrize("stage_before_sealing", [True, False])
def test_iv_refresh_after_100_frames(stage_before_sealing: bool) -> None:
    channel = SecureChannel(SESSION_KEY)
    for counter in range(100):
        assert channel.open_request(_request(counter)) == KEEP_ALIVE
        sealed = channel.seal_response(encode_response(0x45, b"\x00\x00\x00\x05"))
        assert decrypt_frame(SESSION_KEY, ZERO_IV, sealed)[0] == counter

    # The /1024//45 request and its answer both use the old (zero) IVs.
    request = decode_inner_request(channel.open_request(_request(100, inner=SET_IV)))
    assert (request.path, request.payload) == ("/1024//45", CLIENT_IV)
    answer = encode_response(0x45, TAP_IV)
    if stage_before_sealing:
        channel.set_ivs(request.payload, TAP_IV)
        sealed = channel.seal_response(answer)
    else:
        sealed = channel.seal_response(answer)
        channel.set_ivs(request.payload, TAP_IV)
    assert decrypt_frame(SESSION_KEY, ZERO_IV, sealed) == (100, answer)

    # From the next request on: requests under the client's IV, responses under the Tap's.
    for counter in range(101, 106):
        assert channel.open_request(_request(counter, CLIENT_IV)) == KEEP_ALIVE
        response = encode_response(0x45, b"\x00\x00\x00\x05")
        assert decrypt_frame(SESSION_KEY, TAP_IV, channel.seal_response(response)) == (counter, response)
    assert channel.frames == 106


def test_after_the_switch_old_iv_frames_are_refused() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.open_request(_request(0, inner=SET_IV))
    channel.set_ivs(CLIENT_IV, TAP_IV)
    with pytest.raises(SecureFrameError):
        channel.open_request(_request(1))  # still under the zero IV
    channel.open_request(_request(1, CLIENT_IV))


def test_counter_check_restarts_under_new_ivs() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.open_request(_request(40, inner=SET_IV))
    channel.set_ivs(CLIENT_IV, TAP_IV)
    channel.open_request(_request(0, CLIENT_IV))  # a client that resets its counter with its IVs
    with pytest.raises(SecureFrameError, match="does not increase past 0"):
        channel.open_request(_request(0, CLIENT_IV))


def test_ivs_staged_in_clear_apply_to_the_first_request() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.set_ivs(CLIENT_IV, TAP_IV)
    channel.open_request(_request(0, CLIENT_IV))
    assert decrypt_frame(SESSION_KEY, TAP_IV, channel.seal_response(b"\x44\x90\x00")) == (0, b"\x44\x90\x00")


# ---- key hygiene and argument checks ---------------------------------------------------------------


def test_key_material_never_appears_in_reprs_or_messages() -> None:
    channel = SecureChannel(SESSION_KEY)
    channel.set_ivs(CLIENT_IV, TAP_IV)
    channel.open_request(_request(0, CLIENT_IV))
    texts = [repr(channel), str(channel)]
    for call in (
        lambda: SecureChannel(SESSION_KEY[:15]),
        lambda: channel.set_ivs(CLIENT_IV[:15], TAP_IV),
        lambda: channel.open_request(_request(0, CLIENT_IV)),
        lambda: channel.open_request(REQUEST_CIPHERTEXT),
        lambda: encrypt_frame(SESSION_KEY + b"\x00", ZERO_IV, 0, b""),
        lambda: decrypt_frame(SESSION_KEY, TAP_IV + b"\x00", REQUEST_CIPHERTEXT),
    ):
        with pytest.raises(ValueError) as caught:
            call()
        texts.append(str(caught.value))
    assert repr(channel) == "SecureChannel(frames=1, last_counter=0)"
    for text in texts:
        for secret in (SESSION_KEY, CLIENT_IV, TAP_IV, SESSION_KEY[:15], CLIENT_IV[:15]):
            assert secret.hex() not in text.lower() and repr(secret) not in text


@pytest.mark.parametrize("size", [0, 15, 17, 24, 32])
def test_wrong_key_or_iv_size(size: int) -> None:
    with pytest.raises(ValueError, match="session key must be 16 bytes"):
        SecureChannel(bytes(size))
    with pytest.raises(ValueError, match="IV must be 16 bytes"):
        SecureChannel(SESSION_KEY).set_ivs(bytes(size), ZERO_IV)
    with pytest.raises(ValueError, match="IV must be 16 bytes"):
        SecureChannel(SESSION_KEY).set_ivs(ZERO_IV, bytes(size))


# ---- fuzzing ---------------------------------------------------------------------------------------


@st.composite
def mutated_ciphertexts(draw: st.DrawFn) -> bytes:
    """A valid request ciphertext with at least one change: bit flips, cuts or extra bytes."""
    inner = draw(st.binary(min_size=7, max_size=64))
    frame = bytearray(_request(draw(st.integers(0, 0xFFFF)), inner=inner))
    original = bytes(frame)
    edit = draw(st.sampled_from(("flip", "truncate", "extend")))
    if edit == "flip":
        for _ in range(draw(st.integers(1, 3))):
            frame[draw(st.integers(0, len(frame) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif edit == "truncate":
        del frame[draw(st.integers(0, len(frame) - 1)) :]
    else:
        frame += draw(st.binary(min_size=1, max_size=32))
    if bytes(frame) == original:  # two flips of the same bit cancel out
        frame[0] ^= 0x80
    return bytes(frame)


@settings(max_examples=300)
@given(mutated_ciphertexts())
def test_fuzz_mutated_frames_are_refused(ciphertext: bytes) -> None:
    channel = SecureChannel(SESSION_KEY)
    with pytest.raises(SecureFrameError):
        channel.open_request(ciphertext)
    assert channel.frames == 0


@settings(max_examples=300)
@given(st.binary(max_size=128))
def test_fuzz_open_request_raises_only_secure_frame_error(ciphertext: bytes) -> None:
    channel = SecureChannel(SESSION_KEY)
    try:
        inner = channel.open_request(ciphertext)
    except SecureFrameError:
        assert channel.frames == 0
    else:  # a random frame passing the CRC: only a 2**-32 chance per aligned input
        assert channel.frames == 1 and len(inner) <= len(ciphertext) - 8


@settings(max_examples=300)
@given(st.binary(max_size=128))
def test_fuzz_unwrap_raises_only_secure_frame_error(plaintext: bytes) -> None:
    try:
        counter, payload = unwrap(plaintext)
    except SecureFrameError:
        return
    assert wrap(counter, payload)[: 4 + len(payload)] == plaintext[: 4 + len(payload)]


@given(st.integers(0, 0xFFFF), st.binary(max_size=300), st.binary(min_size=16, max_size=16))
def test_encrypt_decrypt_round_trip(counter: int, payload: bytes, iv: bytes) -> None:
    assert decrypt_frame(SESSION_KEY, iv, encrypt_frame(SESSION_KEY, iv, counter, payload)) == (
        counter,
        payload,
    )


# ---- FrameCipher: long-lived contexts, same bytes as fresh ones ------------------------------------


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.binary(max_size=80),
            st.sampled_from((ZERO_IV, CLIENT_IV, TAP_IV, bytes(range(16)))),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_frame_cipher_matches_a_fresh_context_for_every_frame(
    frames: list[tuple[int, bytes, bytes]],
) -> None:
    # One cipher for a whole sequence of frames: each must come out as if its context were new,
    # whatever IV the frame before it used and whatever its own length.
    cipher = FrameCipher(SESSION_KEY)
    for counter, payload, iv in frames:
        ciphertext = cipher.encrypt_frame(iv, counter, payload)
        assert ciphertext == encrypt_frame(SESSION_KEY, iv, counter, payload)
        assert cipher.decrypt_frame(iv, ciphertext) == (counter, payload)


def test_frame_cipher_both_ways_on_the_vector_after_other_frames() -> None:
    cipher = FrameCipher(SESSION_KEY)
    cipher.encrypt_blocks(CLIENT_IV, bytes(32))
    assert cipher.encrypt_frame(ZERO_IV, 0, INNER_REQUEST) == REQUEST_CIPHERTEXT
    cipher.decrypt_blocks(TAP_IV, bytes(48))  # moves the context's chaining
    assert cipher.decrypt_frame(ZERO_IV, REQUEST_CIPHERTEXT) == (0, INNER_REQUEST)
    assert cipher.decrypt_frame(ZERO_IV, RESPONSE_CIPHERTEXT) == (0, APDU_RESPONSE)


def test_frame_cipher_a_refused_frame_does_not_disturb_the_next() -> None:
    cipher = FrameCipher(SESSION_KEY)
    with pytest.raises(SecureFrameError):
        cipher.decrypt_frame(ZERO_IV, bytes(32))
    with pytest.raises(SecureFrameError, match="AES blocks"):
        cipher.decrypt_frame(ZERO_IV, bytes(20))
    assert cipher.decrypt_frame(ZERO_IV, REQUEST_CIPHERTEXT) == (0, INNER_REQUEST)


def test_frame_cipher_checks_sizes_and_keeps_the_key_out_of_its_repr() -> None:
    with pytest.raises(ValueError, match="session key must be 16 bytes"):
        FrameCipher(SESSION_KEY[:15])
    cipher = FrameCipher(SESSION_KEY)
    with pytest.raises(ValueError, match="IV must be 16 bytes"):
        cipher.encrypt_frame(ZERO_IV[:15], 0, b"")
    with pytest.raises(ValueError, match="IV must be 16 bytes"):
        cipher.decrypt_frame(ZERO_IV + b"\x00", REQUEST_CIPHERTEXT)
    with pytest.raises(ValueError, match="IV must be 16 bytes"):
        cipher.decrypt_blocks(ZERO_IV[:8], REQUEST_CIPHERTEXT)
    assert repr(cipher) == "FrameCipher()"
