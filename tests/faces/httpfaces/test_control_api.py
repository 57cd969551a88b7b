"""The control API (/emulator/v1) over real HTTP against a running device: info and a secret-free state
dump, live reboot and factory reset (sessions end, observers are told, the store gets tombstones),
sessions, lockouts, faults, the trace, the bearer token off loopback, ``tap-emulator ctl`` and the
Python client."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import httpx
import pytest

from tap_emulator.app import Emulator, Endpoint
from tap_emulator.client import ControlClient, ControlError
from tap_emulator.codec.apdu import Method, TapRequest, encode_request
from tap_emulator.config import SecurityMode

from .conftest import start_cloud_emulator, wait_for

REPO = Path(__file__).resolve().parents[3]
TAP_LOGIN_WRONG = (
    bytes.fromhex("a2da000027020400ffff0000") + b"admin".ljust(16, b"\0") + b"wrong".ljust(16, b"\0")
)
GET_FIRMWARE = encode_request(TapRequest(Method.GET, 3, None, 2))


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    emulator = await start_cloud_emulator(
        tmp_path,
        f"sqlite:///{tmp_path}/store.sqlite3",
        tcp=Endpoint("127.0.0.1", 0),
        security=SecurityMode.NONE,
    )
    try:
        assert emulator.http_address is not None
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{emulator.http_address[1]}", timeout=10
        ) as http:
            yield emulator, http
    finally:
        await emulator.stop()


async def coap(emulator: Emulator, context: Any, method: str, path: str, payload: bytes = b"") -> Any:
    assert emulator.coap_address is not None
    message = aiocoap.Message(
        code=getattr(aiocoap, method),
        uri=f"coap://127.0.0.1:{emulator.coap_address[1]}{path}",
        payload=payload,
    )
    return await asyncio.wait_for(context.request(message).response, 5)


async def tap_connection(emulator: Emulator) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert emulator.tcp_address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.tcp_address[1])
    writer.write(GET_FIRMWARE)
    assert (await asyncio.wait_for(reader.read(100), 5)).endswith(b"\x90\x00")
    return reader, writer


async def test_device_info_and_the_state_dump_hold_no_secret(
    device: tuple[Emulator, httpx.AsyncClient],
) -> None:
    emulator, http = device
    info = (await http.get("/emulator/v1/device")).json()
    assert emulator.tree is not None
    assert info["serial"] == emulator.tree.serial_number and info["profile"] == "default"
    assert info["endpoints"]["tcp"].startswith("127.0.0.1:") and "pending" in info["backlog"]
    state = (await http.get("/emulator/v1/state")).json()
    group = state["objects"]["1025"]["instances"]["65535"]
    assert group["name"] == "admin"
    secrets = {r.name for o in emulator.tree.model.objects.values() for r in o.resources.values() if r.secret}
    assert secrets
    text = json.dumps(state)
    assert not any(f'"{name}"' in text for name in secrets)
    assert "password" not in text.lower()
    document = (await http.get("/openapi/control.json")).json()
    assert "/emulator/v1/reset" in document["paths"] and "/emulator/v1/faults" in document["paths"]


async def test_live_factory_reset_ends_sessions_tells_observers_and_reaches_the_store(
    device: tuple[Emulator, httpx.AsyncClient],
) -> None:
    emulator, http = device
    assert emulator.tree is not None
    serial = emulator.tree.serial_number
    context = await aiocoap.Context.create_client_context()
    try:
        assert str((await coap(emulator, context, "POST", "/1025/12/65535")).code).startswith("2.01")
        await coap(emulator, context, "PUT", "/1025/65534/0", b"renamed")
        await wait_for(http, f"/api/v1/devices/{serial}/sync", lambda s: s["backlog"]["pending"] == 0)
        reader, writer = await tap_connection(emulator)
        assert [s["face"] for s in (await http.get("/emulator/v1/sessions")).json()] == ["tcp"]
        assert emulator.coap_address is not None
        observe = aiocoap.Message(
            code=aiocoap.GET, uri=f"coap://127.0.0.1:{emulator.coap_address[1]}/1025/65534/0", observe=0
        )
        observation = context.request(observe)
        assert (await asyncio.wait_for(observation.response, 5)).payload == b"renamed"
        notes = observation.observation.__aiter__()
        assert (await http.post("/emulator/v1/reset")).json() == {"done": True}
        assert (await asyncio.wait_for(notes.__anext__(), 5)).payload == b"supervisor"
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # the session's connection was closed
        writer.close()
        assert (await http.get("/emulator/v1/sessions")).json() == []
        assert str((await coap(emulator, context, "GET", "/1025/12/0")).code).startswith("4.04")
        # The store hears of it: the created group's deletion arrives as a tombstone.
        await wait_for(http, f"/api/v1/devices/{serial}/sync", lambda s: s["tombstones"] >= 1)
    finally:
        await context.shutdown()


async def test_live_reboot_closes_sessions_and_keeps_the_state(
    device: tuple[Emulator, httpx.AsyncClient],
) -> None:
    emulator, http = device
    context = await aiocoap.Context.create_client_context()
    try:
        await coap(emulator, context, "PUT", "/1025/65534/0", b"kept")
        reader, writer = await tap_connection(emulator)
        assert (await http.post("/emulator/v1/reboot")).status_code == 200
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
        assert (await coap(emulator, context, "GET", "/1025/65534/0")).payload == b"kept"
    finally:
        await context.shutdown()


async def test_close_one_session_and_a_missing_one_is_404(device: tuple[Emulator, httpx.AsyncClient]) -> None:
    emulator, http = device
    first_reader, first_writer = await tap_connection(emulator)
    second_reader, second_writer = await tap_connection(emulator)
    sessions = (await http.get("/emulator/v1/sessions")).json()
    assert len(sessions) == 2
    assert (await http.delete(f"/emulator/v1/sessions/{sessions[0]['id']}")).status_code == 200
    assert await asyncio.wait_for(first_reader.read(100), 5) == b""
    second_writer.write(GET_FIRMWARE)
    assert (await asyncio.wait_for(second_reader.read(100), 5)).endswith(b"\x90\x00")
    missing = await http.delete("/emulator/v1/sessions/999999")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    for writer in (first_writer, second_writer):
        writer.close()


async def test_lockouts_are_listed_and_cleared(device: tuple[Emulator, httpx.AsyncClient]) -> None:
    emulator, http = device
    reader, writer = await tap_connection(emulator)
    writer.write(TAP_LOGIN_WRONG)
    assert (await asyncio.wait_for(reader.read(100), 5))[0] == 0x81
    writer.close()
    lockouts = (await http.get("/emulator/v1/lockouts")).json()
    assert any(entry["account"] == "admin" and entry["failures"] == 1 for entry in lockouts)
    assert (await http.delete("/emulator/v1/lockouts")).json()["cleared"] >= 2
    assert (await http.get("/emulator/v1/lockouts")).json() == []


async def test_faults_live_through_the_api_and_visible_in_the_trace(
    device: tuple[Emulator, httpx.AsyncClient],
) -> None:
    emulator, http = device
    plan = {"seed": 4, "rules": [{"face": "coap", "path": "/3/*", "status": "5.03"}]}
    answer = await http.put("/emulator/v1/faults", json=plan)
    assert answer.status_code == 200 and answer.json()["plan"]["rules"][0]["status"] == "5.03"
    bad = await http.put("/emulator/v1/faults", json={"rules": [{"drop": 2}]})
    assert bad.status_code == 400 and "'drop'" in bad.json()["message"]
    assert (await http.put("/emulator/v1/trace", json={"enabled": True})).json() == {"active": True}
    context = await aiocoap.Context.create_client_context()
    try:
        assert str((await coap(emulator, context, "GET", "/3//0")).code).startswith("5.03")
        assert (await http.delete("/emulator/v1/faults")).json()["active"] is False
        assert str((await coap(emulator, context, "GET", "/3//0")).code).startswith("2.05")
    finally:
        await context.shutdown()
    trace = (await http.get("/emulator/v1/trace?limit=2")).json()
    assert [(e["path"], e["status"], e["fault"]) for e in trace] == [
        ("/3//0", "5.03", "status 5.03"),
        ("/3//0", "2.05", None),
    ]
    offline = await http.post("/emulator/v1/faults/offline", json={"seconds": 30})
    assert offline.json()["offline_remaining"] > 0


async def test_off_loopback_the_control_and_native_apis_need_the_bearer_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tap_emulator.app")
    config = tmp_path / "cloud.toml"
    defaults = (REPO / "resources" / "cloud" / "default.toml").read_text()
    config.write_text(defaults + '\n[control]\ntoken = "s3cret-token"\n')
    emulator = await start_cloud_emulator(
        tmp_path, f"sqlite:///{tmp_path}/store.sqlite3", http=Endpoint("0.0.0.0", 0), cloud_config=str(config)
    )
    try:
        said = [r.getMessage() for r in caplog.records if "control and native APIs" in r.getMessage()]
        assert said and "require 'Authorization: Bearer'" in said[0] and "s3cret-token" not in said[0]
        assert emulator.http_address is not None
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{emulator.http_address[1]}", timeout=10
        ) as http:
            for path in ("/emulator/v1/device", "/api/v1/devices"):
                refused = await http.get(path)
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
                wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                right = await http.get(path, headers={"Authorization": "Bearer s3cret-token"})
                assert right.status_code == 200
            client = ControlClient(f"http://127.0.0.1:{emulator.http_address[1]}", token="s3cret-token")
            assert (await asyncio.to_thread(client.device))["serial"]
            with pytest.raises(ControlError) as refused_client:
                await asyncio.to_thread(ControlClient(f"http://127.0.0.1:{emulator.http_address[1]}").device)
            assert refused_client.value.status == 401
            assert "s3cret-token" not in repr(client)
    finally:
        await emulator.stop()


async def test_ctl_drives_the_running_device(
    device: tuple[Emulator, httpx.AsyncClient], tmp_path: Path
) -> None:
    emulator, _ = device
    assert emulator.http_address is not None
    url = f"http://127.0.0.1:{emulator.http_address[1]}"

    async def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tap_emulator", "ctl", "--url", url, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())

    info = await ctl("info")
    assert info.returncode == 0 and json.loads(info.stdout)["serial"] == emulator.tree.serial_number  # type: ignore[union-attr]
    plan = tmp_path / "plan.toml"
    plan.write_text('seed = 1\n[[rules]]\nface = "tcp"\ndrop = 0.5\n')
    assert (await ctl("set-faults", str(plan))).returncode == 0
    assert emulator.faults.plan.rules[0].drop == 0.5
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]]\ndrop = 7\n")
    refused = await ctl("set-faults", str(bad))
    assert refused.returncode == 2 and "'drop'" in refused.stderr
    assert (await ctl("reset")).stdout.strip() == "reset: done"
    gone = await ctl("--url", "http://127.0.0.1:9", "info")
    assert gone.returncode == 1 and "no device answers" in gone.stderr
