"""The real Tap SDK (npm @iotize/tap 2.7.0) against the emulator, over TCP and over WebSocket.

Each test starts an in-process emulator on 127.0.0.1 with every port 0 and drives the SDK through the
harness of `sdk.py` (node/driver.js). Covered: every GroupService call, SCRAM login as admin, supervisor
and a created user, plain and 1-hash login with the security mode overridden, `tap.auth.changePassword`
then a new login, more than 100 encrypted frames (IV refresh through /1024//45), logout, a wrong
password, the lockout after three failures (and that another peer's failures do not lock the SDK out),
a write refused to anonymous, and cross-face behaviour with
the CoAP face (rename seen by a CoAP observer; a password set over CoAP used for a SCRAM login).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from sdk import hex_arg, require_sdk, run_sdk_async

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.config import PROFILES_DIR, SecurityMode
from tap_emulator.faces.tap import TRACE_LOGGER
from tap_emulator.security import derive_scram_keys, hash_login_password

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

HOST = "127.0.0.1"
TRANSPORTS = ["tcp", "ws"]
ADMIN, SUPERVISOR = 0xFFFF, 0xFFFE
SDK_TIMEOUT = 45
INVALID_CREDENTIALS = "TapAuthErrorInvalidCredentials"
TOO_MANY_ATTEMPTS = "TapAuthErrorTooManyLoginAttempt"


def login(username: str, password: str) -> dict[str, Any]:
    return {"call": "auth.login", "args": [{"username": username, "password": password}]}


def call(name: str, *args: Any) -> dict[str, Any]:
    return {"call": name, "args": list(args)}


LOGOUT = {"call": "auth.logout"}
CURRENT_GROUP = {"call": "interface.getCurrentGroupId"}


@contextlib.asynccontextmanager
async def running_emulator(
    tmp_path: Path, *, security: SecurityMode | None = None, profile: str = "default"
) -> AsyncIterator[Emulator]:
    require_sdk()
    emulator = Emulator(
        ServeOptions(
            profile=profile,
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint(HOST, 0),
            tcp=Endpoint(HOST, 0),
            ws=Endpoint(HOST, 0),
            http=None,
            security=security,
            store="off",
            trace=True,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def sdk(emulator: Emulator, transport: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    address = emulator.tcp_address if transport == "tcp" else emulator.ws_address
    assert address is not None
    return await run_sdk_async(steps, transport=transport, host=HOST, port=address[1], timeout=SDK_TIMEOUT)


def ok(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["body"]


def error_code(result: dict[str, Any]) -> str | None:
    assert not result["ok"], result
    code: str | None = result["error"]["code"]
    return code


def profile_file(tmp_path: Path, **security: object) -> str:
    """The default profile with some [security] values replaced, written to tmp_path."""
    lines = []
    for line in (PROFILES_DIR / "default.toml").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in security:
            value = security[key]
            line = f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
        lines.append(line)
    path = tmp_path / "test-profile.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_group_service_call_and_scram_logins(tmp_path: Path, transport: str) -> None:
    bob_key = derive_scram_keys(hash_login_password("bobpw"), b"\x5a\x01\x02\x03", 5000).to_password_key()
    async with running_emulator(tmp_path) as emulator:
        admin = await sdk(
            emulator,
            transport,
            [
                login("admin", "admin"),
                CURRENT_GROUP,
                call("group.create", 56),
                call("group.putName", 56, "alice"),
                call("group.getName", 56),
                call("group.putSessionLifetime", 56, 3600),
                call("group.getSessionLifetime", 56),
                call("group.putAlias", 56, SUPERVISOR),
                call("group.getAlias", 56),
                call("group.changePassword", 56, "alicepw"),
                call("group.create", 57),
                call("group.putName", 57, "bob"),
                call("group.changePasswordKey", 57, hex_arg(bob_key)),
                call("group.getName", ADMIN),
                call("group.create", 56),
                LOGOUT,
            ],
        )
        assert ok(admin[1]) == ADMIN
        assert admin[2]["status"] == 0x41
        assert [admin[i]["status"] for i in (3, 5, 7, 9, 12)] == [0x44] * 5
        assert [ok(admin[i]) for i in (4, 6, 8, 13)] == ["alice", 3600, SUPERVISOR, "admin"]
        assert not admin[14]["ok"] and admin[14]["status"] == 0x80  # the group already exists
        ok(admin[15])
        users = await sdk(
            emulator,
            transport,
            [
                login("supervisor", "supervisor"),
                CURRENT_GROUP,
                LOGOUT,
                login("alice", "alicepw"),
                CURRENT_GROUP,
                {"call": "interface.getCurrentProfileId"},
                call("group.getSessionLifetime", 56),
                LOGOUT,
                login("bob", "bobpw"),
                CURRENT_GROUP,
                LOGOUT,
                CURRENT_GROUP,
            ],
        )
    assert ok(users[0])["key"] is not None  # a session key: the SDK now encrypts
    assert [ok(users[i]) for i in (1, 4, 5, 6, 9, 11)] == [SUPERVISOR, 56, SUPERVISOR, 3600, 57, 0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_more_than_100_encrypted_frames_refresh_the_ivs_then_logout(
    tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TRACE_LOGGER)
    async with running_emulator(tmp_path) as emulator:
        results = await sdk(
            emulator,
            transport,
            [
                login("admin", "admin"),
                {"call": "repeat", "times": 120, "step": {"call": "interface.keepAlive"}},
                call("group.getName", ADMIN),
                LOGOUT,
                CURRENT_GROUP,
                call("group.putName", ADMIN, "root"),
            ],
        )
    repeat = results[1]
    assert (repeat["ok"], repeat["count"]) == (True, 120), repeat
    assert ok(results[2]) == "admin"
    ok(results[3])
    assert ok(results[4]) == 0
    assert results[5]["status"] == 0x81  # anonymous again after logout
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == TRACE_LOGGER]
    inner = [(e["method"], e["path"], e["status"]) for e in events if e["encrypted"]]
    assert inner.count(("GET", "/1024//45", "2.05")) == 1
    assert sum(path == "/1024//4" for _, path, _ in inner) == 120


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_wrong_password_then_lockout_after_three_failures(tmp_path: Path, transport: str) -> None:
    profile = profile_file(tmp_path, lockout_seconds=1.5)
    async with running_emulator(tmp_path, profile=profile) as emulator:
        results = await sdk(
            emulator,
            transport,
            [
                login("admin", "wrong"),
                login("nobody", "admin"),
                login("admin", "wrong-again"),
                login("admin", "admin"),
                {"call": "sleep", "ms": 1700},
                login("admin", "admin"),
                CURRENT_GROUP,
            ],
        )
    assert [error_code(r) for r in results[:3]] == [INVALID_CREDENTIALS] * 3
    assert error_code(results[3]) == TOO_MANY_ATTEMPTS
    ok(results[5])
    assert ok(results[6]) == ADMIN


async def _garbage_scram_login(port: int, source: str) -> list[int]:
    """An attacker's SCRAM login over raw TCP from ``source``: the statuses of /40 and, if served, /41."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    statuses = []
    try:
        start = TapRequest(Method.GET, 1024, None, 40, b"admin".ljust(16, b"\0") + b"\0\0\0\1")
        for request in (start, TapRequest(Method.GET, 1024, None, 41, bytes(16))):
            writer.write(encode_request(request))
            status, _ = decode_response(await asyncio.wait_for(reader.read(4096), 5))
            statuses.append(status)
            if status != 0x45:
                break
    finally:
        writer.close()
    return statuses


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_another_peers_failed_logins_do_not_lock_the_sdk_out(tmp_path: Path, transport: str) -> None:
    async with running_emulator(tmp_path) as emulator:
        assert emulator.tcp_address is not None
        attack = [await _garbage_scram_login(emulator.tcp_address[1], "127.0.0.2") for _ in range(5)]
        assert attack == [[0x45, 0x81]] * 3 + [[0xA3]] * 2  # the attacker is held back ...
        results = await sdk(emulator, transport, [login("admin", "admin"), CURRENT_GROUP])
    ok(results[0])  # ... and the SDK, from 127.0.0.1, logs in at once
    assert ok(results[1]) == ADMIN


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_write_refused_to_anonymous(tmp_path: Path, transport: str) -> None:
    async with running_emulator(tmp_path) as emulator:
        results = await sdk(
            emulator,
            transport,
            [
                call("group.putName", ADMIN, "intruder"),
                call("group.create", 99),
                call("group.changePassword", SUPERVISOR, "x"),
                call("group.getName", ADMIN),
            ],
        )
    assert [r["status"] for r in results[:3]] == [0x81, 0x81, 0x81]
    assert ok(results[3]) == "admin"


MODES = [
    (SecurityMode.NONE, {"scramActivated": False, "hashPassword": False}),
    (SecurityMode.HASH, {"scramActivated": False, "hashPassword": True}),
    (SecurityMode.SCRAM, {"scramActivated": True, "hashPassword": True}),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("mode", "flags"), MODES, ids=[m.value for m, _ in MODES])
async def test_login_and_change_password_in_each_security_mode(
    tmp_path: Path, transport: str, mode: SecurityMode, flags: dict[str, bool]
) -> None:
    async with running_emulator(tmp_path, security=mode) as emulator:
        results = await sdk(
            emulator,
            transport,
            [
                {"call": "interface.getSecurityOptions"},
                login("supervisor", "supervisor"),
                CURRENT_GROUP,
                {"call": "auth.changePassword", "args": ["n3w-secret"]},
                LOGOUT,
                login("supervisor", "supervisor"),
                login("supervisor", "n3w-secret"),
                CURRENT_GROUP,
                LOGOUT,
            ],
        )
    options = ok(results[0])
    assert {key: options[key] for key in flags} == flags
    ok(results[1])
    assert ok(results[2]) == SUPERVISOR
    ok(results[3])
    ok(results[4])
    assert error_code(results[5]) == INVALID_CREDENTIALS
    ok(results[6])
    assert ok(results[7]) == SUPERVISOR


async def _observe(context: aiocoap.Context, uri: str) -> tuple[Any, asyncio.Queue[bytes]]:
    request = aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0)
    pending = context.request(request)
    first = await asyncio.wait_for(pending.response, 5)
    updates: asyncio.Queue[bytes] = asyncio.Queue()

    async def pump() -> None:
        async for notification in pending.observation:
            updates.put_nowait(notification.payload)

    task = asyncio.ensure_future(pump())
    await updates.put(first.payload)
    return task, updates


async def _next(updates: asyncio.Queue[bytes], wanted: Callable[[bytes], bool]) -> bytes:
    while True:
        payload = await asyncio.wait_for(updates.get(), 5)
        if wanted(payload):
            return payload


async def test_group_renamed_through_the_sdk_is_seen_and_observed_over_coap(tmp_path: Path) -> None:
    async with running_emulator(tmp_path) as emulator:
        assert emulator.coap_address is not None
        base = f"coap://{HOST}:{emulator.coap_address[1]}"
        context = await aiocoap.Context.create_client_context()
        try:
            task, updates = await _observe(context, f"{base}/1025/{SUPERVISOR}/0")
            assert await _next(updates, lambda _p: True) == b"supervisor"
            results = await sdk(
                emulator, "tcp", [login("admin", "admin"), call("group.putName", SUPERVISOR, "night-shift")]
            )
            ok(results[1])
            assert await _next(updates, lambda p: p == b"night-shift") == b"night-shift"
            response = await asyncio.wait_for(
                context.request(
                    aiocoap.Message(code=aiocoap.GET, uri=f"{base}/group/{SUPERVISOR}/name")
                ).response,
                5,
            )
            assert response.payload == b"night-shift"
            task.cancel()
        finally:
            await context.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_password_set_over_coap_as_ascii_logs_the_sdk_in_with_scram(
    tmp_path: Path, transport: str
) -> None:
    async with running_emulator(tmp_path) as emulator:
        assert emulator.coap_address is not None
        context = await aiocoap.Context.create_client_context()
        try:
            message = aiocoap.Message(
                code=aiocoap.POST,
                uri=f"coap://{HOST}:{emulator.coap_address[1]}/group/{SUPERVISOR}/password",
                payload=b"from-coap",
            )
            response = await asyncio.wait_for(context.request(message).response, 5)
            assert response.code == aiocoap.CHANGED
        finally:
            await context.shutdown()
        results = await sdk(
            emulator,
            transport,
            [login("supervisor", "supervisor"), login("supervisor", "from-coap"), CURRENT_GROUP],
        )
    assert error_code(results[0]) == INVALID_CREDENTIALS
    assert ok(results[1])["key"] is not None
    assert ok(results[2]) == SUPERVISOR
