"""The control API's data plane over real HTTP against the demo profile: a variable set through
``/emulator/v1/variables/{id}`` or target memory written through ``/emulator/v1/memory/{address}`` goes
through the tree as a CoAP PUT does (a real aiocoap observer is notified, a CoAP read returns it, the
value survives a restart of the state); bad ids, addresses, lengths and hex are 4xx with the API's
error shape; ``ControlClient`` and ``tap-emulator ctl`` do the same."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import httpx
import pytest

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.client import ControlClient, ControlError

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 5.0
BASE = 0x20000000  # the demo profile's target memory: 64 KiB from here


async def start_demo(state: Path) -> Emulator:
    emulator = Emulator(
        ServeOptions(
            profile="demo",
            state=str(state),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=Endpoint("127.0.0.1", 0),
            store="off",
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    return emulator


def http_url(emulator: Emulator) -> str:
    assert emulator.http_address is not None
    return f"http://127.0.0.1:{emulator.http_address[1]}"


def coap_uri(emulator: Emulator, path: str) -> str:
    assert emulator.coap_address is not None
    return f"coap://127.0.0.1:{emulator.coap_address[1]}{path}"


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    emulator = await start_demo(tmp_path / "device.sqlite3")
    try:
        async with httpx.AsyncClient(base_url=http_url(emulator), timeout=10) as http:
            yield emulator, http
    finally:
        await emulator.stop()


@pytest.fixture
async def coap() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


class Observer:
    """An aiocoap observation of one URI; notifications are queued."""

    def __init__(self, context: Any, uri: str) -> None:
        self.request = context.request(aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0))
        self.updates: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for response in self.request.observation:
            self.updates.put_nowait(response)

    async def first(self) -> bytes:
        return bytes((await asyncio.wait_for(self.request.response, TIMEOUT)).payload)

    async def next(self) -> bytes:
        return bytes((await asyncio.wait_for(self.updates.get(), TIMEOUT)).payload)

    def cancel(self) -> None:
        self.request.observation.cancel()
        self._task.cancel()


async def coap_get(context: Any, uri: str) -> bytes:
    response = await asyncio.wait_for(
        context.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response, TIMEOUT
    )
    assert str(response.code).startswith("2.05")
    return bytes(response.payload)


def hex_text(data: bytes) -> bytes:
    return data.hex().encode()  # the CoAP face's default representation of bytes


async def test_setting_a_variable_notifies_its_coap_observer(
    demo: tuple[Emulator, httpx.AsyncClient], coap: Any
) -> None:
    emulator, http = demo
    read = (await http.get("/emulator/v1/variables/10")).json()
    assert read == {
        "id": 10,
        "type": "FLOAT32",
        "count": 1,
        "address": BASE,
        "bundle": 1,
        "hex": struct.pack(">f", 21.5).hex(),
        "value": 21.5,
    }
    observer = Observer(coap, coap_uri(emulator, "/1029/10/4"))
    bundle = Observer(coap, coap_uri(emulator, "/1028/1/1"))
    try:
        assert await observer.first() == hex_text(struct.pack(">f", 21.5))
        await bundle.first()
        answer = await http.put("/emulator/v1/variables/10", json={"value": 30.25})
        assert answer.status_code == 200 and answer.json()["value"] == 30.25
        assert await observer.next() == hex_text(struct.pack(">f", 30.25))
        assert hex_text(struct.pack(">f", 30.25)) in await bundle.next()
    finally:
        observer.cancel()
        bundle.cancel()
    assert await coap_get(coap, coap_uri(emulator, "/1029/10/4")) == hex_text(struct.pack(">f", 30.25))
    # An array by a list, raw bytes by hex, text for ASCII (padded with NULs as a CoAP PUT is).
    offsets = await http.put("/emulator/v1/variables/12", json={"value": [5, -6, 7, -128]})
    assert offsets.json()["hex"] == "05fa0780" and offsets.json()["value"] == [5, -6, 7, -128]
    counter = await http.put("/emulator/v1/variables/30", json={"hex": "0000002a"})
    assert counter.json()["value"] == 42
    label = await http.put("/emulator/v1/variables/22", json={"value": "pump"})
    assert label.json()["hex"] == b"pump".hex() + "00" * 4 and label.json()["value"] == "pump"
    assert await coap_get(coap, coap_uri(emulator, "/1029/30/4")) == b"0000002a"
    not_a_number = await http.put("/emulator/v1/variables/10", json={"hex": "7fc00000"})
    assert not_a_number.status_code == 200 and not_a_number.json()["value"] is None  # JSON has no NaN


async def test_a_memory_write_changes_the_variables_at_that_address(
    demo: tuple[Emulator, httpx.AsyncClient], coap: Any
) -> None:
    emulator, http = demo
    # Variables 20 and 31 share 0x20000100 (UINT32, setpoint 1500).
    alias = Observer(coap, coap_uri(emulator, "/1029/31/4"))
    try:
        assert await alias.first() == hex_text((1500).to_bytes(4, "big"))
        written = await http.put(f"/emulator/v1/memory/{BASE + 0x100:#x}", json={"hex": "000007d0"})
        assert written.status_code == 200
        assert written.json() == {"address": BASE + 0x100, "length": 4, "hex": "000007d0"}
        assert await alias.next() == b"000007d0"
    finally:
        alias.cancel()
    assert (await http.get("/emulator/v1/variables/20")).json()["value"] == 2000
    assert await coap_get(coap, coap_uri(emulator, "/1029/20/4")) == b"000007d0"
    read = await http.get(f"/emulator/v1/memory/{BASE + 0xFE}", params={"length": 8})
    assert read.json()["hex"] == "0000000007d00000"


async def test_values_set_through_the_api_survive_a_restart(tmp_path: Path, coap: Any) -> None:
    state = tmp_path / "device.sqlite3"
    emulator = await start_demo(state)
    try:
        client = ControlClient(http_url(emulator))
        await asyncio.to_thread(client.set_variable, 11, 77)
        await asyncio.to_thread(client.write_memory, BASE + 0x200, b"\x00\x00\x01\x00")
    finally:
        await emulator.stop()
    emulator = await start_demo(state)
    try:
        client = ControlClient(http_url(emulator))
        assert (await asyncio.to_thread(client.variable, 11))["value"] == 77
        assert (await asyncio.to_thread(client.variable, 30))["value"] == 256
        assert await asyncio.to_thread(client.memory, BASE + 0x200, 4) == b"\x00\x00\x01\x00"
        assert await coap_get(coap, coap_uri(emulator, "/1029/11/4")) == b"004d"
    finally:
        await emulator.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/variables/999", None, 404),
        ("PUT", "/variables/999", {"value": 1}, 404),
        ("GET", "/variables/70000", None, 404),
        ("GET", "/variables/ten", None, 400),
        ("PUT", "/variables/10", {"value": 1, "hex": "00"}, 400),
        ("PUT", "/variables/10", {}, 400),
        ("PUT", "/variables/10", {"hex": "00"}, 400),  # FLOAT32 takes 4 bytes
        ("PUT", "/variables/10", {"hex": "zz00zz00"}, 400),
        ("PUT", "/variables/10", {"value": "warm"}, 400),
        ("PUT", "/variables/12", {"value": [1, 2]}, 400),  # INT8[4]
        ("PUT", "/variables/22", {"value": "much too long"}, 400),  # ASCII[8]
        ("GET", "/memory/16?length=4", None, 400),  # below the region
        ("GET", f"/memory/{BASE + 0xFFFE}?length=4", None, 400),  # runs past its end
        ("GET", f"/memory/{BASE}?length=0", None, 400),
        ("GET", f"/memory/{BASE}?length=4097", None, 400),
        ("GET", f"/memory/{BASE}", None, 400),  # length is required
        ("GET", "/memory/0xZZ?length=4", None, 400),
        ("GET", "/memory/-4?length=4", None, 400),
        ("PUT", "/memory/16", {"hex": "00"}, 400),
        ("PUT", f"/memory/{BASE}", {"hex": "0g"}, 400),
        ("PUT", f"/memory/{BASE}", {"hex": "000"}, 400),
        ("PUT", f"/memory/{BASE}", {"hex": ""}, 400),
        ("PUT", f"/memory/{BASE}", {"hex": "00" * 4097}, 400),
    ],
)
async def test_bad_requests_are_refused_with_the_api_error_shape(
    demo: tuple[Emulator, httpx.AsyncClient],
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: Any,
    status: int,
) -> None:
    _, http = demo
    caplog.set_level(logging.WARNING)
    answer = await http.request(method, "/emulator/v1" + path, json=body)
    assert answer.status_code == status, answer.text
    document = answer.json()
    assert set(document) == {"code", "message"} and document["message"]
    assert document["code"] == ("not_found" if status == 404 else "invalid_input")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # Nothing was written.
    assert (await http.get("/emulator/v1/variables/10")).json()["value"] == 21.5
    assert (await http.get(f"/emulator/v1/memory/{BASE}?length=4")).json()["hex"] == struct.pack(
        ">f", 21.5
    ).hex()


async def test_the_client_reports_refusals(demo: tuple[Emulator, httpx.AsyncClient]) -> None:
    emulator, _ = demo
    client = ControlClient(http_url(emulator))
    with pytest.raises(ControlError) as refused:
        await asyncio.to_thread(client.memory, 0, 4)
    assert refused.value.status == 400 and "outside the target memory" in refused.value.message
    with pytest.raises(ControlError) as missing:
        await asyncio.to_thread(client.set_variable, 999, 1)
    assert missing.value.status == 404
    done = await asyncio.to_thread(client.set_variable, 10, hex_bytes=struct.pack(">f", -2.5).hex())
    assert done["value"] == -2.5


async def test_ctl_sets_and_reads_variables_and_memory(demo: tuple[Emulator, httpx.AsyncClient]) -> None:
    emulator, _ = demo
    url = http_url(emulator)

    async def ctl(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tap_emulator", "ctl", "--url", url, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, _ = await ctl("set-variable", "10", "12.5")
    assert code == 0 and json.loads(out)["value"] == 12.5
    code, out, _ = await ctl("set-variable", "12", "[1, 2, 3, 4]")
    assert code == 0 and json.loads(out)["hex"] == "01020304"
    code, out, _ = await ctl("set-variable", "30", "--hex", "00000007")
    assert code == 0 and json.loads(out)["value"] == 7
    code, out, _ = await ctl("variable", "10")
    assert code == 0 and json.loads(out)["hex"] == struct.pack(">f", 12.5).hex()
    code, out, _ = await ctl("write-memory", f"{BASE + 0x104:#x}", "01")
    assert code == 0 and out.strip() == "write-memory: done"
    code, out, _ = await ctl("memory", f"{BASE + 0x100:#x}", "5")
    assert code == 0 and json.loads(out) == {"address": BASE + 0x100, "hex": "000005dc01"}
    assert (await ctl("variable", "21"))[1] and json.loads((await ctl("variable", "21"))[1])["value"] == 1
    code, _, err = await ctl("write-memory", f"{BASE:#x}", "xyz")
    assert code == 2 and "not hex" in err
    code, _, err = await ctl("memory", "16", "4")
    assert code == 2 and "outside the target memory" in err
    code, _, err = await ctl("variable", "999")
    assert code == 2 and "does not exist" in err


async def test_the_openapi_document_describes_the_data_plane(
    demo: tuple[Emulator, httpx.AsyncClient],
) -> None:
    _, http = demo
    paths = (await http.get("/openapi/control.json")).json()["paths"]
    for path in ("/emulator/v1/variables/{variable_id}", "/emulator/v1/memory/{address}"):
        assert set(paths[path]) == {"get", "put"}
        for operation in paths[path].values():
            assert {"200", "400", "404"} <= set(operation["responses"]) and operation["summary"]
    memory_read = paths["/emulator/v1/memory/{address}"]["get"]["parameters"]
    length = next(p for p in memory_read if p["name"] == "length")
    assert length["required"] and length["schema"]["maximum"] == 4096
