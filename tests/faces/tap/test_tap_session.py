"""The sans-IO Tap session against a real tree: the SDK vectors byte for byte, login, SCRAM, encryption.

Each test builds an in-memory device (fake clock and random source) and exchanges the exact frames
the SDK sends (spec vectors/apdu.txt and vectors/encrypted-frame.txt, copied in tests/vectors).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tap_support import (
    ADMIN,
    DEVICE,
    GROUP,
    INTERFACE,
    SUPERVISOR,
    Device,
    ScramClient,
    device_profile,
    get,
    hash_login,
    login_frame,
    make_device,
    name16,
    plain_login,
    post,
    put,
)

from tap_emulator.codec.apdu import NFC_SELECT, Method, TapRequest, decode_response, encode_request
from tap_emulator.codec.secure_frame import encrypt_frame
from tap_emulator.config import SecurityMode
from tap_emulator.faces.tap import TRACE_LOGGER, TapSession
from tap_emulator.model import Operation
from tap_emulator.security import derive_scram_keys, hash_login_password

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
NAME, PASSWORD, LIFETIME, ALIAS, CREATE = 0, 2, 4, 5, 0xFFFF
SCRAM_KEY_ADMIN_01020304 = bytes.fromhex(
    "1b0469eeca2aa2e7a310a55369602047d218daa51ecfaef7d5394d4f104251f301020304"
)


def _apdu_vectors() -> dict[str, tuple[str, str]]:
    """call text -> (request hex, response hex) from apdu.txt (request/response lines only)."""
    table: dict[str, tuple[str, str]] = {}
    for line in (VECTORS / "apdu.txt").read_text().splitlines():
        if " REQ " in line and " RESP " in line:
            call, rest = line.split(" REQ ", 1)
            request, rest = rest.split(" RESP ", 1)
            table[call.strip()] = (request.strip(), rest.split()[0])
    return table


APDU = _apdu_vectors()


@pytest.fixture
def device() -> Iterator[Device]:
    dev = make_device()
    yield dev
    dev.close()


async def exchange(session: TapSession, request_hex: str) -> str:
    return (await session.handle_frame(bytes.fromhex(request_hex))).hex()


async def expect_vector(session: TapSession, call: str) -> None:
    request, response = APDU[call]
    assert await exchange(session, request) == response, call


async def test_vectors_group_service_in_plain_mode(device: Device) -> None:
    s = device.session()
    await expect_vector(s, "interface.getCurrentGroupId()")
    await expect_vector(s, "group.getName(56) -> 0x84 NOT_FOUND")
    await expect_vector(s, "interface.login(admin/admin)")
    assert await exchange(s, APDU["interface.getCurrentGroupId()"][0]) == "45ffff9000"
    await expect_vector(s, "group.create(56)")
    await expect_vector(s, "group.getAlias(56)")  # a new group is its own profile: alias 56
    await expect_vector(s, 'group.putName(56,"abc")')
    assert await exchange(s, APDU["group.getName(56)"][0]) == "456162639000"
    # The capture's group 56 is named "admin"; names are unique, so admin's name moves aside meanwhile.
    assert decode_response(await s.handle_frame(put(GROUP, 56, NAME, b"admin"))) == (0x80, b"")
    assert decode_response(await s.handle_frame(put(GROUP, ADMIN, NAME, b"root"))) == (0x44, b"")
    await s.handle_frame(put(GROUP, 56, NAME, b"admin"))
    await expect_vector(s, "group.getName(56)")
    await s.handle_frame(put(GROUP, 56, NAME, b"abc"))
    assert decode_response(await s.handle_frame(put(GROUP, ADMIN, NAME, b"admin"))) == (0x44, b"")
    await expect_vector(s, 'group.changePassword(56,"secret")')
    await expect_vector(s, "group.changePasswordKey(56, 00..27 (40B))")
    await expect_vector(s, "group.putSessionLifetime(56,3600)")
    await expect_vector(s, "group.getSessionLifetime(56)")
    assert decode_response(await s.handle_frame(post(GROUP, 0x1234, CREATE)))[0] == 0x41
    await expect_vector(s, "group.putAlias(56,0x1234)")
    await expect_vector(s, "group.getName(0xFFFF)")
    await expect_vector(s, "scram.getHashIteration()")
    await expect_vector(s, "device.getFirmwareVersion()")
    await expect_vector(s, "device.getSerialNumber()")
    await expect_vector(s, "interface.logout()")
    await expect_vector(s, "interface.getCurrentGroupId()")


async def test_request_only_vectors_are_accepted(device: Device) -> None:
    s = device.session()
    assert decode_response(await s.handle_frame(plain_login("admin", "admin")))[0] == 0x44
    await s.handle_frame(post(GROUP, 56, CREATE))
    for request in (
        "a2da00002b020401003800021b0469eeca2aa2e7a310a55369602047d218daa51ecfaef7d5394d4f104251f301020304",
        "a2da000017020401fffe000299c243d5f82eb712c281d5ffe7d12097",
    ):
        assert await exchange(s, request) == "449000"
    assert await exchange(s, "a2ca00000701040100000000") == "45" + b"anonymous".hex() + "9000"
    assert await exchange(s, "a2ca000007010401ffff0004") == "45012c9000"  # admin lifetime 300


async def test_keep_alive_answers_the_session_lifetime_on_four_bytes(device: Device) -> None:
    s = device.session()
    assert await exchange(s, APDU["interface.keepAlive()"][0]) == "45000000009000"  # anonymous: no limit
    await s.handle_frame(plain_login("admin", "admin"))
    await s.handle_frame(put(GROUP, ADMIN, LIFETIME, b"\x00\x05"))
    await expect_vector(s, "interface.keepAlive()")  # 45 00000005 9000


async def test_hash_mode_vectors() -> None:
    dev = make_device(device_profile(SecurityMode.HASH))
    try:
        s = dev.session()
        await expect_vector(s, "interface.getSecurityOptions() 0x0008")
        await expect_vector(s, "interface.loginWithHash(admin/hash(admin))")
        assert await exchange(s, "a2da000017020401fffe000299c243d5f82eb712c281d5ffe7d12097") == "449000"
        s2 = dev.session()
        assert decode_response(await s2.handle_frame(hash_login("supervisor", "supervisor")))[0] == 0x44
    finally:
        dev.close()


async def _scram_device_with_admin_key(salt: bytes) -> Device:
    dev = make_device(device_profile(SecurityMode.SCRAM))
    keys = derive_scram_keys(hash_login_password("admin"), salt, 5000)
    assert await dev.maintenance(Operation.EXECUTE, GROUP, ADMIN, PASSWORD, keys.to_password_key()) == 0x44
    return dev


async def test_scram_login_vector() -> None:
    dev = await _scram_device_with_admin_key(bytes.fromhex("deadbeef"))
    try:
        s = dev.session()
        dev.random.queue(bytes.fromhex("a1b2c3d4"))
        await expect_vector(s, "scram.login({admin, nonce 0x01020304})")
        # A wrong proof (the fake's 16 x AA) is refused as invalid credentials.
        assert await exchange(s, APDU["scram.loginProof(16B)"][0]) == "819000"
    finally:
        dev.close()


def _frame_vector() -> dict[str, str]:
    values = {}
    for line in (VECTORS / "encrypted-frame.txt").read_text().splitlines():
        key, _, value = line.rpartition("  ")
        if key.strip():
            values[key.strip()] = value.strip()
    return values


async def test_encrypted_frame_vector_is_reproduced() -> None:
    """Group 56 named 'admin' holds the spec's key (admin, salt 01020304, It 5000), so the SCRAM vector
    nonces give the vector session key, and /1024//7 answers 0x0038 as in the vector. Names are unique,
    so the profile's admin group is renamed first."""
    dev = make_device(device_profile(SecurityMode.SCRAM))
    try:
        assert await dev.maintenance(Operation.EXECUTE, GROUP, 56, CREATE) == 0x41
        assert await dev.maintenance(Operation.WRITE, GROUP, 56, NAME, "admin") == 0x80
        assert await dev.maintenance(Operation.WRITE, GROUP, ADMIN, NAME, "root") == 0x44
        assert await dev.maintenance(Operation.WRITE, GROUP, 56, NAME, "admin") == 0x44
        assert await dev.maintenance(Operation.EXECUTE, GROUP, 56, PASSWORD, SCRAM_KEY_ADMIN_01020304) == 0x44
        s = dev.session()
        dev.random.queue(bytes.fromhex("a1b2c3d4"))
        answer = await exchange(s, "a2ca00001b010400ffff0028" + name16("admin").hex() + "01020304")
        assert answer == "45a1b2c3d401020304000013889000"
        proof = await exchange(s, "a2ca000017010400ffff0029768a8c36da15cd3a1517bca69f365af8")
        assert proof == "4579a50505cafd5304cd430e33114edbcd9000"
        wire = "a2ca000017010400ffff003031d84c54bc60a0816f73cf6d8846a951"
        assert await exchange(s, wire) == "45659b41622dba61f3d988e2b51c6972e09000"
    finally:
        dev.close()


@pytest.fixture
async def scram_device() -> AsyncIterator[Device]:
    dev = make_device(device_profile(SecurityMode.SCRAM))
    yield dev
    dev.close()


async def test_scram_session_rights_belong_to_the_encrypted_channel(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    status, proof = await client.login("admin", "admin")
    assert status == 0x45 and len(proof) == 16
    assert await client.call(get(INTERFACE, None, 7)) == (0x45, b"\xff\xff")
    assert await client.call(get(INTERFACE, None, 2)) == (0x45, b"\xff\xff")
    # In clear on the same connection: anonymous.
    assert await client.send(get(INTERFACE, None, 7)) == (0x45, b"\x00\x00")
    assert (await client.send(put(GROUP, ADMIN, NAME, b"boss")))[0] == 0x81
    assert await client.call(put(GROUP, ADMIN, NAME, b"boss")) == (0x44, b"")
    assert await client.call(get(GROUP, ADMIN, NAME)) == (0x45, b"boss")


async def test_more_than_100_frames_with_an_iv_refresh(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("admin", "admin")
    for _ in range(100):
        assert await client.call(get(INTERFACE, None, 4)) == (0x45, (300).to_bytes(4, "big"))
    tap_iv = await client.refresh_ivs(bytes(range(16)))
    assert len(tap_iv) == 16 and tap_iv != bytes(16)
    for _ in range(5):
        assert await client.call(get(INTERFACE, None, 7)) == (0x45, b"\xff\xff")
    # A frame still under the old IVs no longer opens.
    stale = encrypt_frame(client.key or b"", bytes(16), client.counter, get(INTERFACE, None, 7)[5:])
    assert await client.send(get(INTERFACE, None, 48, stale)) == (0x80, b"")


async def test_replayed_or_corrupted_frames_are_refused(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("admin", "admin")
    assert client.key is not None
    first = encrypt_frame(client.key, bytes(16), 5, get(INTERFACE, None, 7)[5:])
    assert (await client.send(get(INTERFACE, None, 48, first)))[0] == 0x45
    assert await client.send(get(INTERFACE, None, 48, first)) == (0x80, b"")  # counter does not increase
    corrupted = bytearray(encrypt_frame(client.key, bytes(16), 9, get(INTERFACE, None, 7)[5:]))
    corrupted[-1] ^= 1
    assert await client.send(get(INTERFACE, None, 48, bytes(corrupted))) == (0x80, b"")
    assert await client.send(get(INTERFACE, None, 48, b"\x00" * 15)) == (0x80, b"")
    client.counter = 10
    assert await client.call(get(INTERFACE, None, 7)) == (0x45, b"\xff\xff")  # the channel still works


async def test_encrypted_logout_is_answered_under_the_old_key_then_ends_the_session(
    scram_device: Device,
) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("supervisor", "supervisor")
    assert await client.call(get(INTERFACE, None, 7)) == (0x45, b"\xff\xfe")
    assert await client.logout() == 0x44
    assert not s.encrypted
    assert await client.send(get(INTERFACE, None, 7)) == (0x45, b"\x00\x00")
    assert await client.send(get(INTERFACE, None, 48, bytes(16))) == (0x81, b"")
    assert (await client.login("admin", "admin"))[0] == 0x45  # a new login starts in clear


async def test_relogin_on_an_encrypted_connection_keeps_the_ivs(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("admin", "admin")
    await client.refresh_ivs(b"\x11" * 16)
    assert (await client.login("supervisor", "supervisor", client_nonce=7))[0] == 0x45
    assert await client.call(get(INTERFACE, None, 7)) == (0x45, b"\xff\xfe")


async def test_scram_failures_count_per_peer_address_across_its_connections(scram_device: Device) -> None:
    s1, s2 = scram_device.session("one", "10.0.0.5"), scram_device.session("two", "10.0.0.5")
    for _ in range(2):
        assert (await ScramClient(s1).login("admin", "wrong"))[0] == 0x81
    assert (await ScramClient(s2).login("nobody", "x"))[0] == 0x81  # unknown user: same answer, counted
    assert (await ScramClient(s1).login("admin", "admin"))[0] == 0xA3
    assert (await ScramClient(scram_device.session("three", "10.0.0.5")).login("admin", "admin"))[0] == 0xA3
    # Another peer is not held back by this one's failures.
    assert (await ScramClient(scram_device.session("four", "10.0.0.6")).login("admin", "admin"))[0] == 0x45
    scram_device.clock.advance(59)
    assert (await ScramClient(s2).login("admin", "admin"))[0] == 0xA3
    scram_device.clock.advance(1)
    assert (await ScramClient(s2).login("admin", "admin"))[0] == 0x45


async def test_success_resets_the_failure_count(device: Device) -> None:
    s = device.session()
    for _ in range(2):
        assert decode_response(await s.handle_frame(plain_login("admin", "nope")))[0] == 0x81
    assert decode_response(await s.handle_frame(plain_login("admin", "admin")))[0] == 0x44
    for _ in range(2):
        assert decode_response(await s.handle_frame(plain_login("admin", "nope")))[0] == 0x81
    assert decode_response(await s.handle_frame(plain_login("admin", "admin")))[0] == 0x44


async def test_plain_lockout_uses_the_profile_numbers() -> None:
    dev = make_device(device_profile(max_failed_logins=2, lockout_seconds=5))
    try:
        s = dev.session()
        for _ in range(2):
            assert decode_response(await s.handle_frame(plain_login("admin", "bad")))[0] == 0x81
        assert decode_response(await s.handle_frame(plain_login("admin", "admin")))[0] == 0xA3
        dev.clock.advance(5)
        assert decode_response(await s.handle_frame(plain_login("admin", "admin")))[0] == 0x44
    finally:
        dev.close()


async def test_login_mechanism_follows_the_security_mode(device: Device, scram_device: Device) -> None:
    assert (await ScramClient(device.session()).login("admin", "admin"))[0] == 0x85
    s = scram_device.session()
    assert decode_response(await s.handle_frame(plain_login("admin", "admin")))[0] == 0x85
    assert decode_response(await s.handle_frame(get(INTERFACE, None, 41, bytes(16))))[0] == 0x81
    assert decode_response(await s.handle_frame(login_frame("admin", b"")))[0] == 0x85
    assert decode_response(await device.session().handle_frame(login_frame("admin", b"short")))[0] == 0x80


async def test_session_lifetime_ends_an_idle_session() -> None:
    dev = make_device()
    try:
        s = dev.session()
        await s.handle_frame(plain_login("admin", "admin"))
        await s.handle_frame(put(GROUP, ADMIN, LIFETIME, (10).to_bytes(2, "big")))
        for _ in range(3):  # activity keeps it alive past the lifetime
            dev.clock.advance(8)
            assert decode_response(await s.handle_frame(get(INTERFACE, None, 4)))[0] == 0x45
        dev.clock.advance(10)
        assert decode_response(await s.handle_frame(get(INTERFACE, None, 7))) == (0x45, b"\xff\xff")
        dev.clock.advance(10.5)
        assert decode_response(await s.handle_frame(get(INTERFACE, None, 7))) == (0x45, b"\x00\x00")
    finally:
        dev.close()


async def test_session_lifetime_unit_comes_from_the_profile() -> None:
    dev = make_device(device_profile(lifetime_unit_seconds=60))
    try:
        s = dev.session()
        await s.handle_frame(plain_login("admin", "admin"))
        await s.handle_frame(put(GROUP, ADMIN, LIFETIME, (2).to_bytes(2, "big")))
        dev.clock.advance(119)
        assert decode_response(await s.handle_frame(get(INTERFACE, None, 7))) == (0x45, b"\xff\xff")
        dev.clock.advance(121)
        assert decode_response(await s.handle_frame(get(INTERFACE, None, 7))) == (0x45, b"\x00\x00")
    finally:
        dev.close()


async def test_expired_scram_session_forgets_its_key(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("admin", "admin")
    scram_device.clock.advance(301)
    assert await client.call(get(INTERFACE, None, 7)) == (0x81, b"")
    assert not s.encrypted


async def test_zero_lifetime_never_expires(device: Device) -> None:
    s = device.session()
    await s.handle_frame(plain_login("admin", "admin"))
    await s.handle_frame(put(GROUP, ADMIN, LIFETIME, b"\x00\x00"))
    device.clock.advance(10**6)
    assert decode_response(await s.handle_frame(get(INTERFACE, None, 7))) == (0x45, b"\xff\xff")


async def test_password_wire_forms() -> None:
    """36/40 bytes: a key; 16: a hash unless no-security mode and printable; shorter printable: text."""
    for mode, body, plain_ok, hash_ok in (
        (SecurityMode.NONE, b"sixteen-chars-pw", "sixteen-chars-pw", None),
        (SecurityMode.NONE, b"pw", "pw", None),
        (SecurityMode.HASH, hash_login_password("sixteen-chars-pw"), None, "sixteen-chars-pw"),
        (SecurityMode.HASH, b"sixteen-chars-pw", None, None),  # 16 bytes in hash mode: a hash
    ):
        dev = make_device(device_profile(mode))
        try:
            admin = dev.session()
            assert (
                decode_response(
                    await admin.handle_frame(
                        hash_login("admin", "admin")
                        if mode is SecurityMode.HASH
                        else plain_login("admin", "admin")
                    )
                )[0]
                == 0x44
            )
            assert decode_response(await admin.handle_frame(post(GROUP, SUPERVISOR, PASSWORD, body))) == (
                0x44,
                b"",
            )
            s = dev.session()
            if plain_ok is not None:
                assert decode_response(await s.handle_frame(plain_login("supervisor", plain_ok)))[0] == 0x44
            if hash_ok is not None:
                assert decode_response(await s.handle_frame(hash_login("supervisor", hash_ok)))[0] == 0x44
            if mode is SecurityMode.HASH and hash_ok is None:
                # The 16 bytes were stored as a hash: logging in with them as a hash works.
                login = login_frame("supervisor", body)
                assert decode_response(await s.handle_frame(login))[0] == 0x44
        finally:
            dev.close()


async def test_scram_key_set_then_login(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("admin", "admin")
    keys = derive_scram_keys(
        hash_login_password("n3w"), b"\x09\x08\x07\x06", scram_device.tree.hash_iteration
    )
    assert await client.call(post(GROUP, SUPERVISOR, PASSWORD, keys.to_password_key())) == (0x44, b"")
    assert (await ScramClient(scram_device.session()).login("supervisor", "n3w"))[0] == 0x45
    assert (await ScramClient(scram_device.session()).login("supervisor", "supervisor"))[0] == 0x81


async def test_rights_anonymous_and_supervisor(device: Device) -> None:
    s = device.session()
    assert decode_response(await s.handle_frame(put(GROUP, 0, NAME, b"x"))) == (0x81, b"")
    assert decode_response(await s.handle_frame(get(GROUP, ADMIN, NAME))) == (0x45, b"admin")
    await s.handle_frame(plain_login("supervisor", "supervisor"))
    assert decode_response(await s.handle_frame(post(GROUP, ADMIN, PASSWORD, b"pwned"))) == (0x81, b"")
    assert decode_response(await s.handle_frame(post(GROUP, SUPERVISOR, PASSWORD, b"mine"))) == (0x44, b"")


async def test_paths_methods_and_malformed_frames(device: Device) -> None:
    s = device.session()
    assert await s.handle_frame(NFC_SELECT) == b"\x90\x00"
    assert await s.handle_frame(NFC_SELECT + b"\x90\x00") == b"\x90\x00"
    assert decode_response(await s.handle_frame(get(INTERFACE, None, 99)))[0] == 0x84
    assert decode_response(await s.handle_frame(get(9999, None, 0)))[0] == 0x84
    assert decode_response(await s.handle_frame(get(INTERFACE, None, 46)))[0] == 0x84  # CCOM stop
    assert decode_response(await s.handle_frame(put(INTERFACE, None, 7, b"\x00\x01")))[0] == 0x85
    assert decode_response(await s.handle_frame(get(INTERFACE, 3, 7)))[0] == 0x84
    assert decode_response(await s.handle_frame(get(DEVICE, 0, 3))) == (0x45, b"1.118.0")
    assert decode_response(await s.handle_frame(get(INTERFACE, None, 45, bytes(16))))[0] == 0x81
    for bad in (
        b"",
        b"\xa2",
        bytes.fromhex("a2da000007010400ffff0007"),
        bytes.fromhex("b2ca000007010400ffff0007"),
        bytes.fromhex("a2ca000008010400ffff0007"),
    ):
        assert await s.handle_frame(bad) == b"\x80\x90\x00"
    assert decode_response(await s.handle_frame(put(INTERFACE, None, 42, b"\x13\x88\x00\x00\x01")))[0] == 0x80


async def test_hash_iteration_put_on_two_bytes(device: Device) -> None:
    s = device.session()
    await s.handle_frame(plain_login("admin", "admin"))
    assert decode_response(await s.handle_frame(put(INTERFACE, None, 42, (6000).to_bytes(2, "big")))) == (
        0x44,
        b"",
    )
    assert decode_response(await s.handle_frame(get(INTERFACE, None, 42))) == (
        0x45,
        (6000).to_bytes(4, "big"),
    )


async def test_trace_logs_sizes_never_secrets(caplog: pytest.LogCaptureFixture) -> None:
    dev = make_device(device_profile(SecurityMode.SCRAM), trace=True)
    try:
        caplog.set_level(logging.INFO, logger=TRACE_LOGGER)
        client = ScramClient(dev.session("tcp peer-x"))
        await client.login("admin", "admin")
        keys = derive_scram_keys(hash_login_password("T0psecret"), b"\x05\x06\x07\x08", 5000)
        await client.call(post(GROUP, SUPERVISOR, PASSWORD, keys.to_password_key()))
        await client.call(get(GROUP, ADMIN, NAME))
    finally:
        dev.close()
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == TRACE_LOGGER]
    seen = {(e["method"], e["path"], e["encrypted"]) for e in events}
    assert {("GET", "/1024//40", False), ("GET", "/1024//48", False), ("POST", "/1025/65534/2", True)} <= seen
    assert all(
        e["face"] == "tcp" and e["peer"] == "peer-x" and e["session"] == events[0]["session"] for e in events
    )
    password = next(e for e in events if e["path"] == "/1025/65534/2")
    assert password["status"] == "2.04" and password["request_bytes"] == 36
    assert client.key is not None
    text = caplog.text
    for secret in (keys.stored_key, keys.server_key, client.key, b"T0psecret", b"admin\x00"):
        for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()):
            assert form not in text
    assert "T0psecret" not in text


async def test_session_repr_holds_no_key(scram_device: Device) -> None:
    s = scram_device.session()
    client = ScramClient(s)
    await client.login("admin", "admin")
    assert client.key is not None and client.key.hex() not in repr(s)
    assert "encrypted=True" in repr(s)


async def test_a_request_frame_with_every_method_byte(device: Device) -> None:
    s = device.session()
    request = encode_request(TapRequest(Method.POST, INTERFACE, None, 4))
    assert decode_response(await s.handle_frame(request))[0] == 0x85
