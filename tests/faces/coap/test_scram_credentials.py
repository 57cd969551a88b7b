"""Issue 3 through the CoAP face: credentials are stored by the SCRAM engine, salt and iteration read back,
no secret ever leaves through a response or a log line, and derivations do not stall the event loop."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.codes import Code

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.security import (
    AuthenticationFailed,
    ScramServerHandshake,
    check_hash_login,
    client_proof,
    derive_scram_keys,
    hash_login_password,
    server_proof,
)
from tap_emulator.tree import DeviceTree

pytestmark = pytest.mark.timeout(60)

GROUP = 56
OCTETS = 42
TEXT = 0


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Emulator, aiocoap.Context, str]]:
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    client = await aiocoap.Context.create_client_context()
    assert emulator.coap_address is not None
    base = f"coap://127.0.0.1:{emulator.coap_address[1]}"
    try:
        response = await request(client, Code.POST, f"{base}/group/{GROUP}/create")
        assert response.code == Code.CREATED
        yield emulator, client, base
    finally:
        await client.shutdown()
        await emulator.stop()


async def request(
    client: aiocoap.Context,
    code: Code,
    uri: str,
    payload: bytes = b"",
    content_format: int | None = None,
    accept: int | None = None,
    timeout: float = 10.0,
) -> aiocoap.Message:
    message = aiocoap.Message(code=code, uri=uri, payload=payload)
    if content_format is not None:
        message.opt.content_format = content_format
    if accept is not None:
        message.opt.accept = accept
    return await asyncio.wait_for(client.request(message).response, timeout)


async def read_int(client: aiocoap.Context, uri: str) -> int:
    response = await request(client, Code.GET, uri)
    assert response.code == Code.CONTENT, response.payload
    return int(response.payload.decode())


def tree_of(emulator: Emulator) -> DeviceTree:
    assert emulator.tree is not None
    return emulator.tree


def scram_login(tree: DeviceTree, username: str, password: str, client_nonce: int = 0x01020304) -> bool:
    """Play the SDK's side of a SCRAM login against what the tree stored; True if both proofs agree."""
    account = tree.find_account(username)
    handshake = ScramServerHandshake(
        lambda name: (
            None
            if (a := tree.find_account(name)) is None or a.credential is None or a.credential.scram is None
            else (a.group_id, a.credential.scram)
        ),
        decoy_key=b"k" * 16,
    )
    answer = handshake.start(username.encode().ljust(16, b"\0") + client_nonce.to_bytes(4, "big"), 0xA1B2C3D4)
    server_nonce = int.from_bytes(answer[:4], "big")
    salt, iterations = answer[4:8], int.from_bytes(answer[8:12], "big")
    keys = derive_scram_keys(hash_login_password(password), salt, iterations)
    try:
        result = handshake.finish(client_proof(keys, client_nonce, server_nonce))
    except AuthenticationFailed:
        return False
    assert account is not None and result.group_id == account.group_id
    return result.server_proof == server_proof(keys, client_nonce, server_nonce)


async def test_ascii_password_is_derived_by_the_engine(device: tuple[Emulator, aiocoap.Context, str]) -> None:
    emulator, client, base = device
    await request(client, Code.PUT, f"{base}/group/{GROUP}/name", b"alice")
    response = await request(client, Code.POST, f"{base}/group/{GROUP}/password", b"s3cret")
    assert response.code == Code.CHANGED
    salt = await read_int(client, f"{base}/1025/{GROUP}/16")
    iteration = await read_int(client, f"{base}/group/{GROUP}/scram-user-iteration")
    assert salt >> 24 != 0, "the drawn salt's first byte must be non-zero"
    assert iteration == 5000, "an ASCII password is derived with the device's /1024//42 count"
    tree = tree_of(emulator)
    assert scram_login(tree, "alice", "s3cret")
    assert not scram_login(tree, "alice", "wrong")
    account = tree.find_account("alice")
    assert account is not None and account.credential is not None
    assert check_hash_login(account.credential, hash_login_password("s3cret"))


async def test_forty_byte_blob_round_trips_through_resources_16_and_7(
    device: tuple[Emulator, aiocoap.Context, str],
) -> None:
    emulator, client, base = device
    await request(client, Code.PUT, f"{base}/1025/{GROUP}/0", b"bob")
    keys = derive_scram_keys(hash_login_password("pw"), bytes.fromhex("01020304"), 4242)
    response = await request(
        client, Code.POST, f"{base}/1025/{GROUP}/2", keys.to_blob(), content_format=OCTETS
    )
    assert response.code == Code.CHANGED
    assert await read_int(client, f"{base}/1025/{GROUP}/16") == 0x01020304
    assert await read_int(client, f"{base}/1025/{GROUP}/7") == 4242
    octets = await request(client, Code.GET, f"{base}/1025/{GROUP}/16", accept=OCTETS)
    assert octets.payload == bytes.fromhex("01020304")
    assert scram_login(tree_of(emulator), "bob", "pw")


async def test_thirty_six_byte_key_takes_the_current_hash_iteration(
    device: tuple[Emulator, aiocoap.Context, str],
) -> None:
    emulator, client, base = device
    response = await request(client, Code.PUT, f"{base}/interface/0/scram-hash-iteration", b"7777")
    assert response.code == Code.CHANGED
    await request(client, Code.PUT, f"{base}/1025/{GROUP}/0", b"carol")
    keys = derive_scram_keys(hash_login_password("pw36"), bytes.fromhex("7f00ff10"), 7777)
    response = await request(client, Code.POST, f"{base}/group/{GROUP}/password-key", keys.to_password_key())
    assert response.code == Code.CHANGED
    assert await read_int(client, f"{base}/1025/{GROUP}/7") == 7777
    assert await read_int(client, f"{base}/1025/{GROUP}/16") == 0x7F00FF10
    assert scram_login(tree_of(emulator), "carol", "pw36")


async def test_sixteen_byte_hash_allows_hash_login_only(
    device: tuple[Emulator, aiocoap.Context, str],
) -> None:
    emulator, client, base = device
    await request(client, Code.PUT, f"{base}/1025/{GROUP}/0", b"dave")
    await request(client, Code.POST, f"{base}/group/{GROUP}/password", b"first")
    response = await request(
        client, Code.POST, f"{base}/group/{GROUP}/password-key", hash_login_password("second")
    )
    assert response.code == Code.CHANGED
    # The SCRAM keys of the previous password are gone: salt and iteration read 0.
    assert await read_int(client, f"{base}/1025/{GROUP}/16") == 0
    assert await read_int(client, f"{base}/1025/{GROUP}/7") == 0
    account = tree_of(emulator).find_account("dave")
    assert account is not None and account.credential is not None
    assert check_hash_login(account.credential, hash_login_password("second"))
    assert not check_hash_login(account.credential, hash_login_password("first"))
    assert not scram_login(tree_of(emulator), "dave", "first")


async def test_low_level_salt_and_iteration_writes_change_what_login_announces(
    device: tuple[Emulator, aiocoap.Context, str],
) -> None:
    emulator, client, base = device
    await request(client, Code.PUT, f"{base}/1025/{GROUP}/0", b"erin")
    keys = derive_scram_keys(hash_login_password("pw"), bytes.fromhex("0a0b0c0d"), 1500)
    await request(client, Code.POST, f"{base}/1025/{GROUP}/2", keys.to_blob(), content_format=OCTETS)
    assert scram_login(tree_of(emulator), "erin", "pw")
    assert (await request(client, Code.PUT, f"{base}/group/{GROUP}/scram-user-salt", b"305419896")).code == (
        Code.CHANGED
    )
    assert (await request(client, Code.PUT, f"{base}/1025/{GROUP}/7", b"2000")).code == Code.CHANGED
    assert await read_int(client, f"{base}/1025/{GROUP}/16") == 305419896
    assert await read_int(client, f"{base}/1025/{GROUP}/7") == 2000
    # The stored keys were derived with the old salt and count: a login now fails, as on a real Tap ...
    assert not scram_login(tree_of(emulator), "erin", "pw")
    # ... until the keys are written again for what is announced.
    rekeyed = derive_scram_keys(hash_login_password("pw"), (305419896).to_bytes(4, "big"), 2000)
    await request(client, Code.POST, f"{base}/1025/{GROUP}/2", rekeyed.to_blob(), content_format=OCTETS)
    assert scram_login(tree_of(emulator), "erin", "pw")


def _secret_forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret).rstrip(b"="),
    ]


async def test_no_response_or_log_line_carries_a_secret(
    device: tuple[Emulator, aiocoap.Context, str], caplog: pytest.LogCaptureFixture
) -> None:
    emulator, client, base = device
    caplog.set_level(logging.DEBUG)
    password = "Pa55-w0rd-xyz"
    await request(client, Code.POST, f"{base}/group/{GROUP}/password", password.encode())
    account = tree_of(emulator).account(GROUP)
    assert account is not None and account.credential is not None and account.credential.scram is not None
    secrets = [password.encode(), account.credential.scram.stored_key, account.credential.scram.server_key]
    assert account.credential.password_hash is not None
    secrets.append(account.credential.password_hash)
    key40 = derive_scram_keys(hash_login_password("other-pw"), bytes.fromhex("01020304"), 1000)
    await request(client, Code.POST, f"{base}/1025/{GROUP + 1}/65535")
    await request(client, Code.POST, f"{base}/1025/{GROUP + 1}/2", key40.to_blob(), content_format=OCTETS)
    secrets += [key40.stored_key, key40.server_key, hash_login_password("other-pw")]
    # A refused write must not echo the secret in its diagnostic either.
    refused = await request(client, Code.POST, f"{base}/group/{GROUP}/password", b"too-long-password-here!")
    assert refused.code == Code.BAD_REQUEST

    payloads: list[bytes] = [refused.payload]
    well_known = await request(client, Code.GET, f"{base}/.well-known/core")
    payloads.append(well_known.payload)
    for path in ("/1025", f"/1025/{GROUP}", f"/group/{GROUP}", f"/1025/{GROUP + 1}"):
        for accept in (110, 112):
            payloads.append((await request(client, Code.GET, base + path, accept=accept)).payload)
    for group in (GROUP, GROUP + 1):
        for path in (f"/1025/{group}/{r}" for r in (0, 2, 4, 5, 7, 16)):
            for accept in (TEXT, OCTETS, 60):
                payloads.append((await request(client, Code.GET, base + path, accept=accept)).payload)
        for slug in ("password", "password-key"):
            response = await request(client, Code.GET, f"{base}/group/{group}/{slug}")
            assert response.code == Code.METHOD_NOT_ALLOWED
            payloads.append(response.payload)
    log_text = "\n".join(record.getMessage() for record in caplog.records).encode()
    decoded_cbor = [repr(cbor2.loads(p)).encode() for p in payloads if p[:1] in (b"\x81", b"\x8f", b"\x9f")]
    haystacks = [*payloads, log_text, *decoded_cbor]
    for secret in secrets:
        for form in _secret_forms(secret):
            for haystack in haystacks:
                assert form not in haystack


async def test_event_loop_answers_gets_while_twenty_passwords_are_derived(
    device: tuple[Emulator, aiocoap.Context, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, client, base = device
    # A high iteration count makes each derivation long enough to be observed.
    await request(client, Code.PUT, f"{base}/interface/0/scram-hash-iteration", b"50000")
    # Count derivations in flight where the tree hands them off (the server's low-priority worker
    # process): a GET answered while one is in flight proves the event loop was not the one deriving.
    tree = tree_of(emulator)
    in_progress = 0
    original: Callable[..., Awaitable[Any]] = tree.offload

    async def counting(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal in_progress
        in_progress += 1
        try:
            return await original(fn, *args)
        finally:
            in_progress -= 1

    monkeypatch.setattr(tree, "offload", counting)
    groups = range(100, 120)
    for group in groups:
        assert (await request(client, Code.POST, f"{base}/1025/{group}/65535")).code == Code.CREATED
    # One client context per writer: a CoAP client sends one confirmable request at a time per server
    # (NSTART = 1), so a shared context would queue the changes and the GETs behind each other.
    writers = [await aiocoap.Context.create_client_context() for _ in groups]
    reader = await aiocoap.Context.create_client_context()
    changes = [
        asyncio.ensure_future(
            request(w, Code.POST, f"{base}/group/{g}/password", f"pw-{g}".encode(), timeout=40)
        )
        for w, g in zip(writers, groups, strict=True)
    ]
    answered_during_derivation = 0
    answered = 0
    try:
        while not all(change.done() for change in changes):
            response = await request(reader, Code.GET, f"{base}/group/{GROUP}/name")
            assert response.code == Code.CONTENT
            answered += 1
            if in_progress > 0:
                answered_during_derivation += 1
    finally:
        await asyncio.gather(*changes, return_exceptions=True)
        for context in [*writers, reader]:
            await context.shutdown()
    assert all(change.result().code == Code.CHANGED for change in changes)
    # Had the derivations run on the event loop, no GET could be answered while one was in progress.
    assert answered_during_derivation >= 5, (answered, answered_during_derivation)
    assert tree_of(emulator).account(groups[-1]) is not None
