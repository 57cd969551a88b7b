"""What the SDK configurator sends a Tap besides groups and data, served by a Tap session (bytes as the SDK
encodes them, tap-protocol.md and the SDK's fesm2015 converters):

- ``/1024//8`` config format version (uint16), ``/1024//9`` app name (ascii), ``/1024//10`` config
  version (x.y.z as u8 u8 u16) with ``POST /1024//10`` reload, and the 1-byte ``PUT /1024//6``;
- ``GET /1024//47`` in clear: a new session key, the channel keeping the session's rights;
- ``GET /1024//44`` in clear: one request under a one-off client IV, answered under a Tap IV;
- ``GET /1024//89``: multi-request frames.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tap_support import (
    ADMIN,
    GROUP,
    INTERFACE,
    Device,
    ScramClient,
    device_profile,
    get,
    make_device,
    plain_login,
    post,
    put,
)

from tap_emulator.codec.apdu import (
    EXPECT_ANYTHING,
    EXPECT_SUCCESS,
    Method,
    MultiRequestItem,
    TapRequest,
    decode_multi_response,
    decode_response,
    encode_multi_request,
)
from tap_emulator.codec.secure_frame import decrypt_frame, encrypt_frame
from tap_emulator.config import SecurityMode
from tap_emulator.faces.tap import TapSession

pytestmark = pytest.mark.timeout(30)

CONFIG_FORMAT, APP_NAME, CONFIG_VERSION, SECURITY, CURRENT_GROUP = 8, 9, 10, 6, 7
SEND_WITH_IV, IV, INITIALIZE, FRAME, MULTI = 44, 45, 47, 48, 89
NAME, LIFETIME = 0, 4
CONTENT, CHANGED, BAD_REQUEST, UNAUTHORIZED, NOT_FOUND = 0x45, 0x44, 0x80, 0x81, 0x84


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = make_device(device_profile(SecurityMode.NONE))
    try:
        yield dev
    finally:
        dev.close()


async def call(session: TapSession, frame: bytes) -> tuple[int, bytes]:
    return decode_response(await session.handle_frame(frame))


async def admin(device: Device) -> TapSession:
    session = device.session()
    assert (await call(session, plain_login("admin", "admin")))[0] == CHANGED
    return session


# ----------------------------------------------------------------------------------- config identity


async def test_config_format_app_name_and_config_version_read_back_as_the_sdk_encodes_them(
    device: Device,
) -> None:
    s = await admin(device)
    assert await call(s, get(INTERFACE, None, CONFIG_VERSION)) == (CONTENT, bytes(4))
    # putConfigVersion("255.255.65535") then ("1.2.3"): major(1) minor(1) patch(2).
    assert (await call(s, put(INTERFACE, None, CONFIG_VERSION, bytes.fromhex("ffffffff"))))[0] == CHANGED
    assert (await call(s, put(INTERFACE, None, CONFIG_VERSION, bytes.fromhex("01020003"))))[0] == CHANGED
    assert await call(s, get(INTERFACE, None, CONFIG_VERSION)) == (CONTENT, bytes.fromhex("01020003"))
    assert (await call(s, put(INTERFACE, None, APP_NAME, b"Sensor demo")))[0] == CHANGED
    assert await call(s, get(INTERFACE, None, APP_NAME)) == (CONTENT, b"Sensor demo")
    assert (await call(s, put(INTERFACE, None, CONFIG_FORMAT, bytes.fromhex("0002"))))[0] == CHANGED
    assert await call(s, get(INTERFACE, None, CONFIG_FORMAT)) == (CONTENT, bytes.fromhex("0002"))
    # The model's limits: at most 32 characters of printable ASCII.
    assert (await call(s, put(INTERFACE, None, APP_NAME, b"x" * 33)))[0] == BAD_REQUEST
    assert (await call(s, put(INTERFACE, None, APP_NAME, b"tab\there")))[0] == BAD_REQUEST
    # Durable: a fresh tree over the same state reads them back.
    device.tree.reload()
    assert await call(device.session(), get(INTERFACE, None, APP_NAME)) == (CONTENT, b"Sensor demo")


async def test_only_writers_change_the_configuration_and_reload_it(device: Device) -> None:
    anonymous = device.session()
    assert await call(anonymous, get(INTERFACE, None, APP_NAME)) == (CONTENT, b"")
    assert (await call(anonymous, put(INTERFACE, None, APP_NAME, b"x")))[0] == UNAUTHORIZED
    assert (await call(anonymous, post(INTERFACE, None, CONFIG_VERSION)))[0] == UNAUTHORIZED
    s = await admin(device)
    reloads: list[int] = []
    real_reload = device.tree.reload

    def counted_reload() -> None:
        reloads.append(1)
        real_reload()

    device.tree.reload = counted_reload  # type: ignore[method-assign]
    assert await call(s, post(INTERFACE, None, CONFIG_VERSION)) == (CHANGED, b"")
    assert reloads == [1]
    # POST takes no body; PUT needs one.
    assert (await call(s, post(INTERFACE, None, CONFIG_VERSION, bytes(4))))[0] == BAD_REQUEST
    assert (await call(s, put(INTERFACE, None, CONFIG_VERSION)))[0] == BAD_REQUEST
    assert reloads == [1]


async def test_the_configurator_one_byte_security_options_switch_to_scram(device: Device) -> None:
    s = await admin(device)
    assert (await call(s, put(INTERFACE, None, SECURITY, b"\x10")))[0] == CHANGED
    assert device.tree.security_mode is SecurityMode.SCRAM
    assert await call(s, get(INTERFACE, None, SECURITY)) == (CONTENT, bytes.fromhex("0010"))
    assert (await call(s, put(INTERFACE, None, SECURITY, bytes.fromhex("0018"))))[0] == CHANGED
    assert await call(s, get(INTERFACE, None, SECURITY)) == (CONTENT, bytes.fromhex("0018"))


# ----------------------------------------------------------------------------------- /47 and /44

KEY = bytes(range(0x10, 0x20))


async def test_initialize_answers_a_key_in_clear_and_the_channel_keeps_the_sessions_group(
    device: Device,
) -> None:
    s = await admin(device)
    device.random.queue(KEY)
    assert await call(s, get(INTERFACE, None, INITIALIZE)) == (CONTENT, KEY)
    client = ScramClient(s)
    client.key = KEY
    assert await client.call(get(INTERFACE, None, CURRENT_GROUP)) == (CONTENT, ADMIN.to_bytes(2, "big"))
    assert (await client.call(put(GROUP, 0, NAME, b"via-ccom")))[0] == CHANGED
    # In clear, the connection is now anonymous (rights belong to the channel); /45 in clear is refused
    # (the SDK tolerates it and keeps zero IVs).
    assert await call(s, get(INTERFACE, None, CURRENT_GROUP)) == (CONTENT, bytes(2))
    assert (await call(s, get(INTERFACE, None, IV, bytes(16))))[0] == UNAUTHORIZED
    # A body is refused; an anonymous connection gets an anonymous channel.
    assert (await call(s, get(INTERFACE, None, INITIALIZE, b"\x00")))[0] == BAD_REQUEST
    other = device.session()
    device.random.queue(bytes(range(16)))
    assert (await call(other, get(INTERFACE, None, INITIALIZE)))[0] == CONTENT
    anon = ScramClient(other)
    anon.key = bytes(range(16))
    assert await anon.call(get(INTERFACE, None, CURRENT_GROUP)) == (CONTENT, bytes(2))
    assert (await anon.call(put(GROUP, 0, NAME, b"nope")))[0] == UNAUTHORIZED


async def test_send_with_iv_carries_one_request_each_way_under_fresh_ivs(device: Device) -> None:
    s = await admin(device)
    assert (await call(s, get(INTERFACE, None, SEND_WITH_IV, bytes(32))))[0] == UNAUTHORIZED  # no key yet
    device.random.queue(KEY)
    await call(s, get(INTERFACE, None, INITIALIZE))
    tap_ivs = []
    for counter, client_iv in enumerate((b"\x01" * 16, b"\x02" * 16)):
        inner = (
            bytes([Method.GET])
            + INTERFACE.to_bytes(2, "big")
            + b"\xff\xff"
            + CURRENT_GROUP.to_bytes(2, "big")
        )
        ciphertext = encrypt_frame(KEY, client_iv, counter, inner)
        status, body = await call(s, get(INTERFACE, None, SEND_WITH_IV, client_iv + ciphertext))
        assert status == CONTENT
        tap_iv, sealed = body[:16], body[16:]
        _, answer = decrypt_frame(KEY, tap_iv, sealed)
        assert decode_response(answer) == (CONTENT, ADMIN.to_bytes(2, "big"))
        tap_ivs.append(tap_iv)
    assert tap_ivs[0] != tap_ivs[1]
    # A replayed counter, a bad CRC or a short body is refused in clear.
    replay = encrypt_frame(KEY, b"\x03" * 16, 1, inner)
    assert (await call(s, get(INTERFACE, None, SEND_WITH_IV, b"\x03" * 16 + replay)))[0] == BAD_REQUEST
    assert (await call(s, get(INTERFACE, None, SEND_WITH_IV, bytes(20))))[0] == BAD_REQUEST
    # The SDK keeps the last IVs: a /48 frame goes on under them.
    client = ScramClient(s)
    client.key, client.counter = KEY, 5
    client.iv_encode, client.iv_decode = b"\x02" * 16, tap_ivs[1]
    assert await client.call(get(INTERFACE, None, CURRENT_GROUP)) == (CONTENT, ADMIN.to_bytes(2, "big"))


# ----------------------------------------------------------------------------------- /89


def item(
    method: Method, obj: int, inst: int | None, res: int, payload: bytes = b"", expect: int = EXPECT_ANYTHING
) -> MultiRequestItem:
    return MultiRequestItem(TapRequest(method, obj, inst, res, payload), expect)


async def test_a_multi_request_frame_answers_every_sub_request_with_the_sessions_rights(
    device: Device,
) -> None:
    frame = encode_multi_request(
        [
            item(Method.GET, GROUP, ADMIN, NAME),
            item(Method.PUT, GROUP, 0, NAME, b"multi"),
            item(Method.GET, GROUP, 77, NAME),
            item(Method.GET, INTERFACE, None, CURRENT_GROUP),
        ]
    )
    anonymous = device.session()
    status, body = await call(anonymous, get(INTERFACE, None, MULTI, frame))
    assert status == CONTENT
    assert decode_multi_response(body) == [
        (CONTENT, b"admin"),
        (UNAUTHORIZED, b""),
        (NOT_FOUND, b""),
        (CONTENT, bytes(2)),
    ]
    s = await admin(device)
    status, body = await call(s, get(INTERFACE, None, MULTI, frame))
    assert decode_multi_response(body) == [
        (CONTENT, b"admin"),
        (CHANGED, b""),
        (NOT_FOUND, b""),
        (CONTENT, ADMIN.to_bytes(2, "big")),
    ]
    assert await call(s, get(GROUP, 0, NAME)) == (CONTENT, b"multi")


async def test_a_sub_request_missing_its_expected_status_ends_the_frame(device: Device) -> None:
    s = await admin(device)
    frame = encode_multi_request(
        [
            item(Method.GET, GROUP, 77, NAME, expect=EXPECT_SUCCESS),
            item(Method.PUT, GROUP, 0, NAME, b"never"),
        ]
    )
    status, body = await call(s, get(INTERFACE, None, MULTI, frame))
    assert (status, decode_multi_response(body)) == (CONTENT, [(NOT_FOUND, b"")])
    assert await call(s, get(GROUP, 0, NAME)) == (CONTENT, b"anonymous")
    exact = encode_multi_request(
        [item(Method.GET, GROUP, 0, NAME, expect=CONTENT), item(Method.GET, GROUP, 0, LIFETIME)]
    )
    assert len(decode_multi_response((await call(s, get(INTERFACE, None, MULTI, exact)))[1])) == 2


async def test_malformed_and_nested_multi_requests_are_refused(device: Device) -> None:
    s = await admin(device)
    good = encode_multi_request([item(Method.GET, GROUP, 0, NAME)])
    for bad in (good[:-1], good + b"\x00", b"\x00\x03\x01\x04\x01\x00"):  # no expected byte, truncated
        assert (await call(s, get(INTERFACE, None, MULTI, bad)))[0] == BAD_REQUEST
    nested = encode_multi_request(
        [item(Method.GET, INTERFACE, None, MULTI, good), item(Method.GET, INTERFACE, None, FRAME, bytes(16))]
    )
    status, body = await call(s, get(INTERFACE, None, MULTI, nested))
    assert (status, decode_multi_response(body)) == (CONTENT, [(BAD_REQUEST, b""), (BAD_REQUEST, b"")])
    assert await call(s, get(INTERFACE, None, MULTI)) == (CONTENT, b"")


async def test_a_multi_request_inside_the_encrypted_channel_keeps_its_rights() -> None:
    device = make_device(device_profile(SecurityMode.SCRAM))
    try:
        session = device.session()
        client = ScramClient(session)
        assert (await client.login("admin", "admin"))[0] == CONTENT
        frame = encode_multi_request(
            [item(Method.PUT, GROUP, 0, NAME, b"sealed"), item(Method.GET, GROUP, 0, NAME)]
        )
        status, body = await client.call(get(INTERFACE, None, MULTI, frame))
        assert (status, decode_multi_response(body)) == (CONTENT, [(CHANGED, b""), (CONTENT, b"sealed")])
        # The same frame in clear on that connection is anonymous's.
        status, body = await call(session, get(INTERFACE, None, MULTI, frame))
        assert decode_multi_response(body)[0] == (UNAUTHORIZED, b"")
    finally:
        device.close()


# ----------------------------------------------------------------------------------- fuzz

_SUB_REQUESTS = st.builds(
    item,
    st.sampled_from(list(Method)),
    st.sampled_from([INTERFACE, GROUP, 3, 1028, 1029, 9999]),
    st.one_of(st.none(), st.integers(0, 0xFFFE)),
    st.sampled_from([0, 2, 4, 5, 6, 7, 9, 10, 40, 44, 45, 47, 48, 89, 0xFFFF]),
    st.binary(max_size=24),
    st.sampled_from([EXPECT_ANYTHING, EXPECT_SUCCESS, CONTENT, CHANGED]),
)


@settings(max_examples=100, deadline=None)
@given(
    frame=st.one_of(
        st.lists(_SUB_REQUESTS, max_size=12).map(encode_multi_request).filter(lambda b: len(b) <= 248),
        st.binary(max_size=248),
    )
)
async def test_any_multi_request_frame_gets_a_well_formed_answer(frame: bytes) -> None:
    device = make_device(device_profile(SecurityMode.NONE))  # one per example: sub-requests change it
    try:
        s = await admin(device)
        status, body = await call(s, get(INTERFACE, None, MULTI, frame))
        assert status in (CONTENT, BAD_REQUEST)
        if status == CONTENT:
            answers = decode_multi_response(body)
            assert len(answers) <= len(frame) // 10 + 1
            assert all(sub_status != 0xA0 for sub_status, _ in answers)
    finally:
        device.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=248))
async def test_any_send_with_iv_body_is_refused_cleanly(device: Device, body: bytes) -> None:
    s = device.session()
    device.random.queue(KEY)
    await call(s, get(INTERFACE, None, INITIALIZE))
    status, _ = await call(s, get(INTERFACE, None, SEND_WITH_IV, body))
    assert status == BAD_REQUEST
    # The channel still works afterwards.
    client = ScramClient(s)
    client.key, client.counter = KEY, 0
    assert (await client.call(get(INTERFACE, None, CURRENT_GROUP)))[0] == CONTENT
