"""The trace of a full SDK session (SCRAM login, encrypted channel, password change, login with it) and
of CoAP credential writes holds no secret in raw, hex or base64 form; and it is written to the
``--trace`` file as one JSON object per request of every face."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiocoap
import pytest
from sdk import require_sdk, run_sdk_async
from test_sdk_emulator import HOST, LOGOUT, SUPERVISOR, login

from tap_emulator.app import Emulator, Endpoint, ServeOptions

pytestmark = pytest.mark.interop
NEW_PASSWORD = "Tr4ce-N3ver-Sh0ws"


def forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ] + ([secret.decode()] if secret.isascii() else [])


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_full_sdk_session_leaves_no_secret_in_the_trace(tmp_path: Path, transport: str) -> None:
    require_sdk()
    trace_path = tmp_path / "trace.jsonl"
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "d.sqlite3"),
            coap=Endpoint(HOST, 0),
            tcp=Endpoint(HOST, 0),
            ws=Endpoint(HOST, 0),
            http=None,
            store="off",
            trace=str(trace_path),
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        address = emulator.tcp_address if transport == "tcp" else emulator.ws_address
        assert address is not None and emulator.coap_address is not None
        results = await run_sdk_async(
            [
                login("supervisor", "supervisor"),
                {"call": "auth.changePassword", "args": [NEW_PASSWORD]},
                LOGOUT,
                login("supervisor", NEW_PASSWORD),
                {"call": "group.getName", "args": [SUPERVISOR]},
                LOGOUT,
            ],
            transport=transport,
            host=HOST,
            port=address[1],
        )
        context = await aiocoap.Context.create_client_context()
        try:
            uri = f"coap://{HOST}:{emulator.coap_address[1]}"
            for path, body in (("/1025/65534/2", b"coap-Cred3ntial"), ("/1025/65534/0", b"visible-name")):
                await context.request(
                    aiocoap.Message(
                        code=aiocoap.POST if path.endswith("2") else aiocoap.PUT, uri=uri + path, payload=body
                    )
                ).response
        finally:
            await context.shutdown()
    finally:
        await emulator.stop()
    assert all(r["ok"] for r in results), results
    keys = [
        bytes.fromhex(r["body"]["key"]["hex"])
        for r in (results[0], results[3])
        if isinstance(r["body"], dict) and r["body"].get("key")
    ]
    assert keys  # the SDK reports its session keys: they are scanned for too
    raw = trace_path.read_text(encoding="utf-8")
    events = [json.loads(line) for line in raw.splitlines()]
    assert {e["face"] for e in events} == {transport, "coap"}
    assert any(e["encrypted"] for e in events if e["face"] == transport)
    assert all(e["peer"] and e["path"] and "latency_ms" in e for e in events)
    # The name's body is recorded for replay; the credential's never is.
    assert any(e.get("body") == b"visible-name".hex() for e in events)
    assert not any("body" in e for e in events if e["path"] == "/1025/65534/2")
    for secret in [NEW_PASSWORD.encode(), b"supervisor\x00", b"coap-Cred3ntial", *keys]:
        for form in forms(secret):
            assert form not in raw, f"a secret ({form[:6]}...) is in the trace"
