"""Proves the SDK harness (sdk.py + node/driver.js + node/tcp-protocol.js) against a scripted fake Tap.

The fake lives in this file and knows nothing but the request/response pairs of the spec's APDU vectors
(shared spec `vectors/apdu.txt`, copied below so the test does not depend on files outside the repo).
It records every request, so the tests check both directions: the real SDK sent exactly the vector bytes,
and the harness reports the status and body the SDK decoded from the vector answer. The interop tests
against the emulator itself build on this harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sdk import (
    INSTALL_COMMAND,
    SdkHarnessError,
    hex_arg,
    missing_sdk_reason,
    node_available,
    require_sdk,
    run_sdk,
    run_sdk_async,
)
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

HOST = "127.0.0.1"
TRANSPORTS = ["tcp", "ws"]
BAD_REQUEST = "809000"
CLOSE = "close"  # scripted answer: the Tap closes the connection instead of answering
SILENT = "silent"  # scripted answer: the Tap never answers

ADMIN_16 = b"admin".ljust(16, b"\0").hex()
HASH_ADMIN = "0155affc023aff6882f56a4e0d9c5466"
HASH_SUPERVISOR = "99c243d5f82eb712c281d5ffe7d12097"
SCRAM_KEY_ADMIN = "1b0469eeca2aa2e7a310a55369602047d218daa51ecfaef7d5394d4f104251f301020304"
EMPTY = {"hex": ""}
KEEP_ALIVE = ("a2ca000007010400ffff0004", "45000000059000")
GET_NAME_56 = "a2ca00000701040100380000"


def options_body(*, scram: bool, hashed: bool) -> dict[str, bool]:
    return {
        "scramActivated": scram,
        "hashPassword": hashed,
        "disableHardwareFactoryReset": False,
        "disableLoginWithUID": False,
        "disableResourceFactoryReset": False,
    }


@dataclass(frozen=True)
class Vector:
    call: str
    args: list[Any]
    request: str
    response: str
    status: int
    body: Any


# call, args, request the SDK must send, the Tap's answer, decoded status and body (from apdu.txt).
VECTORS = [
    Vector("group.getName", [56], GET_NAME_56, "4561646d696e9000", 0x45, "admin"),
    Vector("group.putName", [56, "abc"], "a2da00000a03040100380000616263", "449000", 0x44, EMPTY),
    Vector(
        "group.changePassword", [56, "secret"], "a2da00000d02040100380002736563726574", "449000", 0x44, EMPTY
    ),
    Vector(
        "group.changePasswordKey",
        [56, hex_arg(bytes(range(40)))],
        "a2da00002f02040100380002" + bytes(range(40)).hex(),
        "449000",
        0x44,
        EMPTY,
    ),
    Vector(
        "group.changePasswordKey",
        [56, {"hex": SCRAM_KEY_ADMIN}],
        "a2da00002b02040100380002" + SCRAM_KEY_ADMIN,
        "449000",
        0x44,
        EMPTY,
    ),
    Vector(
        "group.changePasswordKey",
        [0xFFFE, {"hex": HASH_SUPERVISOR}],
        "a2da000017020401fffe0002" + HASH_SUPERVISOR,
        "449000",
        0x44,
        EMPTY,
    ),
    Vector("group.getSessionLifetime", [56], "a2ca00000701040100380004", "450e109000", 0x45, 3600),
    Vector("group.putSessionLifetime", [56, 3600], "a2da000009030401003800040e10", "449000", 0x44, EMPTY),
    Vector("group.getAlias", [56], "a2ca00000701040100380005", "4500389000", 0x45, 56),
    Vector("group.putAlias", [56, 0x1234], "a2da000009030401003800051234", "449000", 0x44, EMPTY),
    Vector("group.create", [56], "a2da0000070204010038ffff", "419000", 0x41, EMPTY),
    Vector("group.getName", [0xFFFF], "a2ca000007010401ffff0000", "4561646d696e9000", 0x45, "admin"),
    Vector("interface.getCurrentGroupId", [], "a2ca000007010400ffff0007", "4500009000", 0x45, 0),
    Vector(
        "interface.getSecurityOptions",
        [],
        "a2ca000007010400ffff0006",
        "4500109000",
        0x45,
        options_body(scram=True, hashed=False),
    ),
    Vector(
        "interface.getSecurityOptions",
        [],
        "a2ca000007010400ffff0006",
        "4500089000",
        0x45,
        options_body(scram=False, hashed=True),
    ),
    Vector(
        "interface.login",
        [{"username": "admin", "password": "admin"}],
        "a2da000027020400ffff0000" + ADMIN_16 + ADMIN_16,
        "449000",
        0x44,
        EMPTY,
    ),
    Vector(
        "interface.loginWithHash",
        [{"username": "admin", "password": {"hex": HASH_ADMIN}}],
        "a2da000027020400ffff0000" + ADMIN_16 + HASH_ADMIN,
        "449000",
        0x44,
        EMPTY,
    ),
    Vector("interface.logout", [], "a2da000007020400ffff0001", "449000", 0x44, EMPTY),
    Vector("interface.keepAlive", [], *KEEP_ALIVE, 0x45, 5),
    Vector("scram.getHashIteration", [], "a2ca000007010400ffff002a", "45000013889000", 0x45, 5000),
    Vector(
        "scram.login",
        [{"username": "admin", "clientNonce": 0x01020304}],
        "a2ca00001b010400ffff0028" + ADMIN_16 + "01020304",
        "45a1b2c3d4deadbeef000013889000",
        0x45,
        {"serverNonce": 0xA1B2C3D4, "salt": {"hex": "deadbeef"}, "iterationNumber": 5000},
    ),
    Vector(
        "scram.loginProof",
        [{"hex": "aa" * 16}],
        "a2ca000017010400ffff0029" + "aa" * 16,
        "45" + "bb" * 16 + "9000",
        0x45,
        {"hex": "bb" * 16},
    ),
    Vector(
        "scram.initialize",
        [],
        "a2ca000007010400ffff002f",
        "45" + "11" * 16 + "9000",
        0x45,
        {"hex": "11" * 16},
    ),
    Vector(
        "scram.setInitializationVector",
        [{"hex": "22" * 16}],
        "a2ca000017010400ffff002d" + "22" * 16,
        "45" + "33" * 16 + "9000",
        0x45,
        {"hex": "33" * 16},
    ),
    Vector(
        "device.getFirmwareVersion", [], "a2ca000007010003ffff0003", "45312e3131382e309000", 0x45, "1.118.0"
    ),
    Vector("device.getSerialNumber", [], "a2ca000007010003ffff0002", "45544e303132339000", 0x45, "TN0123"),
]


@dataclass
class FakeTap:
    """A Tap that plays a fixed script of (expected request, answer) exchanges, in order.

    A request that differs from the script, or comes after its end, gets BAD_REQUEST; every request
    is recorded with its arrival time, so a test compares what the SDK sent with the script.
    """

    script: Sequence[tuple[str, str]]
    received: list[str] = field(default_factory=list)
    arrival_times: list[float] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0
    ws_paths: list[str] = field(default_factory=list)

    def answer(self, request: bytes) -> str:
        """The scripted answer (hex, CLOSE or SILENT) to this request; records the request."""
        index = len(self.received)
        self.received.append(request.hex())
        self.arrival_times.append(asyncio.get_running_loop().time())
        if index >= len(self.script) or self.script[index][0] != request.hex():
            return BAD_REQUEST
        return self.script[index][1]

    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            # The SDK waits for each answer before its next write, so one read is one APDU.
            while request := await reader.read(4096):
                response = self.answer(request)
                if response == CLOSE:
                    return
                if response == SILENT:
                    continue
                # A space in a scripted answer splits it into TCP segments sent 20 ms apart.
                for index, segment in enumerate(response.split(" ")):
                    if index:
                        await asyncio.sleep(0.02)
                    writer.write(bytes.fromhex(segment))
                    await writer.drain()
            self.closed_by_client += 1
        finally:
            writer.close()

    async def handle_ws(self, connection: ServerConnection) -> None:
        self.connections += 1
        assert connection.request is not None
        self.ws_paths.append(connection.request.path)
        try:
            async for message in connection:
                request = message if isinstance(message, bytes) else message.encode()
                response = self.answer(request)
                if response == CLOSE:
                    await connection.close()
                    return
                if response != SILENT:
                    await connection.send(bytes.fromhex(response.replace(" ", "")))
        except ConnectionClosed:
            return
        self.closed_by_client += 1


@contextlib.asynccontextmanager
async def fake_tap(transport: str, script: Sequence[tuple[str, str]]) -> AsyncIterator[tuple[FakeTap, int]]:
    """Serve a FakeTap on 127.0.0.1, on a free port, over TCP or WebSocket."""
    tap = FakeTap(script)
    if transport == "tcp":
        server = await asyncio.start_server(tap.handle_tcp, HOST, 0)
        async with server:
            yield tap, server.sockets[0].getsockname()[1]
    else:
        async with serve(tap.handle_ws, HOST, 0) as ws_server:
            yield tap, next(iter(ws_server.sockets)).getsockname()[1]


@pytest.fixture
def sdk() -> None:
    require_sdk()


TestFunction = TypeVar("TestFunction", bound=Callable[..., Any])


def sdk_test(fn: TestFunction) -> TestFunction:
    """Marks a test that runs the real SDK: interop, skipped (or failed under CI) without it."""
    marked: TestFunction = pytest.mark.interop(pytest.mark.usefixtures("sdk")(fn))
    return marked


@sdk_test
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sdk_sends_the_vector_requests_and_decodes_the_vector_answers(transport: str) -> None:
    script = [(v.request, v.response) for v in VECTORS]
    steps = [{"call": v.call, "args": v.args} for v in VECTORS]
    async with fake_tap(transport, script) as (tap, port):
        results = await run_sdk_async(steps, transport=transport, host=HOST, port=port, timeout=30)
    assert tap.received == [v.request for v in VECTORS]
    assert [(r["call"], r["ok"], r["status"], r["body"], r["error"]) for r in results] == [
        (v.call, True, v.status, v.body, None) for v in VECTORS
    ]


@sdk_test
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_error_status_is_recorded_even_though_body_throws(transport: str) -> None:
    async with fake_tap(transport, [(GET_NAME_56, "849000")]) as (_, port):
        [result] = await run_sdk_async(
            [{"call": "group.getName", "args": [56]}], transport=transport, host=HOST, port=port
        )
    assert result["ok"] is False
    assert result["status"] == 0x84
    assert result["body"] is None
    assert result["error"]["code"] == "TapErrorTapResponseStatusError"
    assert "0x84" in result["error"]["message"]


@sdk_test
async def test_auth_login_in_basic_mode_and_rejected_password_status() -> None:
    wrong_16 = b"wrong".ljust(16, b"\0").hex()
    script = [
        ("a2ca000007010400ffff0006", "4500009000"),  # security options: no SCRAM, no hash
        ("a2da000027020400ffff0000" + ADMIN_16 + ADMIN_16, "449000"),
        ("a2ca000007010400ffff0007", "45ffff9000"),  # refreshSessionState: current group is admin
        ("a2ca000007010401ffff0004", "45001e9000"),  # ... and its session lifetime
        ("a2da000027020400ffff0000" + ADMIN_16 + wrong_16, "819000"),
    ]
    steps = [
        {"call": "auth.login", "args": [{"username": "admin", "password": "admin"}]},
        {"call": "auth.login", "args": [{"username": "admin", "password": "wrong"}]},
    ]
    async with fake_tap("tcp", script) as (tap, port):
        ok, rejected = await run_sdk_async(steps, transport="tcp", host=HOST, port=port)
    assert tap.received == [request for request, _ in script]
    assert ok == {"call": "auth.login", "ok": True, "status": None, "body": {}, "error": None}
    # The auth layer wraps the 0x81 response; the driver digs the status out of the cause chain.
    assert rejected["ok"] is False
    assert rejected["status"] == 0x81
    assert rejected["error"]["code"] == "TapAuthErrorInvalidCredentials"


@sdk_test
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_repeat_counts_ok_results(transport: str) -> None:
    times = 105
    async with fake_tap(transport, [KEEP_ALIVE] * times) as (tap, port):
        [result] = await run_sdk_async(
            [{"call": "repeat", "times": times, "step": {"call": "interface.keepAlive"}}],
            transport=transport,
            host=HOST,
            port=port,
        )
    assert len(tap.received) == times
    assert result == {
        "call": "repeat",
        "ok": True,
        "times": times,
        "count": times,
        "firstFailure": None,
        "status": None,
        "body": None,
        "error": None,
    }


@sdk_test
async def test_repeat_keeps_going_and_reports_the_first_failure() -> None:
    script = [KEEP_ALIVE, (KEEP_ALIVE[0], "a19000"), (KEEP_ALIVE[0], "849000"), KEEP_ALIVE]
    async with fake_tap("tcp", script) as (tap, port):
        [result] = await run_sdk_async(
            [{"call": "repeat", "times": 4, "step": {"call": "interface.keepAlive"}}],
            transport="tcp",
            host=HOST,
            port=port,
        )
    assert len(tap.received) == 4
    assert result["ok"] is False
    assert result["count"] == 2
    failure = result["firstFailure"]
    assert (failure["index"], failure["call"], failure["ok"], failure["status"]) == (
        1,
        "interface.keepAlive",
        False,
        0xA1,
    )


@sdk_test
async def test_sleep_step_pauses_between_requests() -> None:
    async with fake_tap("tcp", [KEEP_ALIVE, KEEP_ALIVE]) as (tap, port):
        results = await run_sdk_async(
            [{"call": "interface.keepAlive"}, {"call": "sleep", "ms": 300}, {"call": "interface.keepAlive"}],
            transport="tcp",
            host=HOST,
            port=port,
        )
    assert [r["ok"] for r in results] == [True, True, True]
    first, second = tap.arrival_times
    assert second - first >= 0.29


@sdk_test
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_disconnect_and_connect_steps_open_a_new_connection(transport: str) -> None:
    steps = [
        {"call": "connect"},
        {"call": "interface.keepAlive"},
        {"call": "disconnect"},
        {"call": "tap.isConnected"},
        {"call": "interface.keepAlive"},
        {"call": "connect"},
        {"call": "interface.keepAlive"},
    ]
    async with fake_tap(transport, [KEEP_ALIVE, KEEP_ALIVE]) as (tap, port):
        results = await run_sdk_async(
            steps, transport=transport, host=HOST, port=port, options={"autoConnect": False}
        )
        # The driver disconnects at the end; give the server side a moment to see it.
        for _ in range(50):
            if tap.closed_by_client == 2:
                break
            await asyncio.sleep(0.02)
    assert [r["ok"] for r in results] == [True, True, True, True, False, True, True]
    assert results[3]["body"] is False
    assert "not connected" in results[4]["error"]["message"]
    assert tap.connections == 2
    assert tap.closed_by_client == 2
    assert len(tap.received) == 2


@sdk_test
async def test_connection_closed_by_the_tap_fails_the_call_then_connect_recovers() -> None:
    steps = [
        {"call": "interface.keepAlive"},
        {"call": "interface.keepAlive"},
        {"call": "interface.keepAlive"},
        {"call": "connect"},
        {"call": "interface.keepAlive"},
    ]
    async with fake_tap("tcp", [KEEP_ALIVE, (KEEP_ALIVE[0], CLOSE), KEEP_ALIVE]) as (tap, port):
        results = await run_sdk_async(steps, transport="tcp", host=HOST, port=port)
    assert [r["ok"] for r in results] == [True, False, False, True, True]
    assert "Connection closed by the Tap" in results[1]["error"]["message"]
    assert "not connected" in results[2]["error"]["message"]
    assert tap.connections == 2


@sdk_test
async def test_websocket_closed_by_the_tap_times_out_the_call_then_connect_recovers() -> None:
    steps = [
        {"call": "interface.keepAlive"},
        {"call": "interface.keepAlive"},
        {"call": "interface.keepAlive"},
        {"call": "connect"},
        {"call": "interface.keepAlive"},
    ]
    async with fake_tap("ws", [KEEP_ALIVE, (KEEP_ALIVE[0], CLOSE), KEEP_ALIVE]) as (tap, port):
        results = await run_sdk_async(steps, transport="ws", host=HOST, port=port, send_timeout_ms=500)
    assert [r["ok"] for r in results] == [True, False, False, True, True]
    # The WebSocket transport leaves the pending read open: the call ends on the send timeout.
    assert "timeout" in results[1]["error"]["message"].lower()
    assert "not connected" in results[2]["error"]["message"]
    assert tap.connections == 2


@sdk_test
async def test_tcp_response_that_does_not_end_in_9000_is_delivered_after_idle() -> None:
    # A wrong APDU status word: the TCP transport hands it over after a quiet spell and the SDK rejects it.
    async with fake_tap("tcp", [(KEEP_ALIVE[0], "6a82"), KEEP_ALIVE]) as (_, port):
        results = await run_sdk_async(
            [{"call": "interface.keepAlive"}, {"call": "interface.keepAlive"}],
            transport="tcp",
            host=HOST,
            port=port,
        )
    assert results[0]["ok"] is False
    assert "invalid APDU status code 0x6a82" in results[0]["error"]["message"]
    assert (results[1]["ok"], results[1]["body"]) == (True, 5)


@sdk_test
async def test_tcp_response_ending_in_9000_is_delivered_without_waiting_for_idle() -> None:
    # With a 5 s idle window and a 2 s send timeout, only the 90 00 rule can complete these calls.
    async with fake_tap("tcp", [KEEP_ALIVE] * 3) as (_, port):
        results = await run_sdk_async(
            [{"call": "interface.keepAlive"}] * 3,
            transport="tcp",
            host=HOST,
            port=port,
            send_timeout_ms=2000,
            options={"tcpIdleMs": 5000},
        )
    assert [(r["ok"], r["body"]) for r in results] == [(True, 5)] * 3


@sdk_test
async def test_tcp_response_split_across_segments_is_reassembled() -> None:
    # "45 00" then "0000059000" 20 ms later: the first segment does not end in 90 00, so the transport
    # waits for more; the second completes the answer.
    async with fake_tap("tcp", [(KEEP_ALIVE[0], "4500 0000059000")]) as (_, port):
        [result] = await run_sdk_async(
            [{"call": "interface.keepAlive"}], transport="tcp", host=HOST, port=port
        )
    assert (result["ok"], result["status"], result["body"]) == (True, 0x45, 5)


@sdk_test
async def test_unknown_call_is_a_failed_step_and_sends_nothing() -> None:
    async with fake_tap("tcp", [KEEP_ALIVE]) as (tap, port):
        results = await run_sdk_async(
            [
                {"call": "group.noSuchCall", "args": [1]},
                {"call": "nothing.here"},
                {"call": "group.putName", "args": [56, {"hex": "zz"}]},
                {"call": "interface.keepAlive"},
            ],
            transport="tcp",
            host=HOST,
            port=port,
        )
    assert [r["ok"] for r in results] == [False, False, False, True]
    assert "noSuchCall is not a function" in results[0]["error"]["message"]
    assert "nothing is not loaded" in results[1]["error"]["message"]
    assert "invalid hex string" in results[2]["error"]["message"]
    assert tap.received == [KEEP_ALIVE[0]]


@sdk_test
async def test_websocket_path_option_is_used_in_the_url() -> None:
    async with fake_tap("ws", [KEEP_ALIVE]) as (tap, port):
        [result] = await run_sdk_async(
            [{"call": "interface.keepAlive"}], transport="ws", host=HOST, port=port, options={"path": "/tap"}
        )
    assert result["ok"] is True
    assert tap.ws_paths == ["/tap"]


@sdk_test
async def test_connect_timeout_option_bounds_a_handshake_that_never_completes() -> None:
    # A TCP listener that never answers the WebSocket upgrade: only the connect timeout ends the wait.
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(never_answer, HOST, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        started = asyncio.get_running_loop().time()
        with pytest.raises(SdkHarnessError, match="connection timeout"):
            await run_sdk_async(
                [{"call": "interface.keepAlive"}],
                transport="ws",
                host=HOST,
                port=port,
                timeout=20,
                options={"connectTimeoutMs": 2500},
            )
        elapsed = asyncio.get_running_loop().time() - started
    assert 2.4 <= elapsed < 15  # the SDK default would have given up after 1 s


@sdk_test
async def test_watchdog_stops_a_stuck_scenario_and_keeps_partial_results() -> None:
    async with fake_tap("tcp", [KEEP_ALIVE, (KEEP_ALIVE[0], SILENT)]) as (_, port):
        with pytest.raises(SdkHarnessError, match="watchdog") as caught:
            await run_sdk_async(
                [{"call": "interface.keepAlive"}, {"call": "interface.keepAlive"}],
                transport="tcp",
                host=HOST,
                port=port,
                timeout=1.5,
                send_timeout_ms=30000,
            )
    assert [r["body"] for r in caught.value.partial_results] == [5]


@sdk_test
async def test_blocking_run_sdk_from_a_worker_thread() -> None:
    async with fake_tap("tcp", [(GET_NAME_56, "4561646d696e9000")]) as (tap, port):
        results = await asyncio.to_thread(
            run_sdk, [{"call": "group.getName", "args": [56]}], transport="tcp", host=HOST, port=port
        )
    assert tap.received == [GET_NAME_56]
    assert results[0]["body"] == "admin"


@sdk_test
def test_refused_connection_raises_with_the_sdk_error() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(SdkHarnessError, match="ECONNREFUSED") as caught:
            run_sdk([{"call": "interface.keepAlive"}], transport="tcp", host=HOST, port=port, timeout=10)
    assert caught.value.partial_results == []


@sdk_test
def test_bad_scenario_raises() -> None:
    with pytest.raises(SdkHarnessError, match="unknown transport"):
        run_sdk([], transport="carrier-pigeon", host=HOST, port=1, timeout=10)


def test_missing_packages_skip_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    reason = missing_sdk_reason(tmp_path)
    assert reason is not None
    assert node_available(tmp_path) is False
    if "node is not on PATH" not in reason:
        assert INSTALL_COMMAND in reason
    with pytest.raises(pytest.skip.Exception, match="node"):
        require_sdk(tmp_path)


def test_missing_packages_fail_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_sdk(tmp_path)


def test_hex_arg_is_the_driver_bytes_form() -> None:
    assert hex_arg(b"\x01\xab") == {"hex": "01ab"}
