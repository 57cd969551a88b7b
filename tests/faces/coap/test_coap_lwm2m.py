"""The CoAP face as an LwM2M device: the LwM2M content formats (decoded by the npm ``lwm2m-codec``
library, cbor2 and json, not by the emulator's codec), Create and Delete, ``/.well-known/core`` with
its filters and block-wise transfer, Discover, Write-Attributes, and Observe under ``pmin``/``pmax``
and thresholds on an injected clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from rawcoap import ACK, GET, OBSERVE, RST, URI_PATH, RawClient, encode

from tap_emulator.app import open_device
from tap_emulator.codec import tlv
from tap_emulator.config import load_profile
from tap_emulator.faces.coap import start_coap_server
from tap_emulator.model import Operation
from tap_emulator.tree import MAINTENANCE, Caller, Request

LWM2M_DIR = Path(__file__).resolve().parents[2] / "interop" / "lwm2m"
TIMEOUT = 5.0
TEXT, LINK, SENML_JSON, SENML_CBOR, TLV, LWM2M_JSON, LWM2M_CBOR = 0, 40, 110, 112, 11542, 11543, 11544
ADMIN, SUPERVISOR, ANONYMOUS = 65535, 65534, 0
READABLE = (0, 4, 5, 7, 16)  # the readable resources of a group (1025-group.xml)
INTEGERS = (4, 5, 7, 16)


class FakeTimers:
    """An injected clock and ``call_later``: callbacks run only when the test advances the time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None], list[bool]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        cancelled = [False]
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    async def advance_to(self, when: float, face: Any) -> None:
        """Run every callback due up to ``when`` in time order, letting the face finish each."""
        await face.drain()
        while self._queue and self._queue[0][0] <= when:
            due, _, callback, cancelled = heapq.heappop(self._queue)
            if cancelled[0]:
                continue
            self.now = due
            callback()
            await face.drain()
        self.now = when


@dataclass
class Device:
    tree: Any
    server: Any
    client: Any
    timers: FakeTimers
    base: str = field(init=False)

    def __post_init__(self) -> None:
        self.base = f"coap://127.0.0.1:{self.server.address[1]}"

    async def request(
        self,
        method: str,
        path: str,
        payload: bytes = b"",
        *,
        cf: int | None = None,
        accept: int | None = None,
        query: tuple[str, ...] = (),
    ) -> Any:
        message = aiocoap.Message(code=getattr(aiocoap, method), uri=self.base + path, payload=payload)
        if query:
            message.opt.uri_query = query
        if cf is not None:
            message.opt.content_format = cf
        if accept is not None:
            message.opt.accept = accept
        return await asyncio.wait_for(self.client.request(message).response, TIMEOUT)

    async def write(self, instance: int, resource: int, value: object) -> None:
        response = await self.tree.handle(
            Request(Operation.WRITE, 1025, instance, resource, value, caller=MAINTENANCE)
        )
        assert response.status.is_success, response


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Device]:
    tree = open_device(
        load_profile(), str(tmp_path / "device.sqlite3"), clock_ms=lambda: time.time_ns() // 10**6
    )
    timers = FakeTimers()
    server = await start_coap_server(tree, "127.0.0.1", 0, clock=timers.clock, call_later=timers.call_later)
    client = await aiocoap.Context.create_client_context()
    try:
        yield Device(tree, server, client, timers)
    finally:
        await client.shutdown()
        await server.close()
        tree.state.close()


def code(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}"


async def text_values(device: Device, group: int) -> dict[int, object]:
    """Each readable resource of a group as a text read gives it (integers parsed)."""
    values: dict[int, object] = {}
    for rid in READABLE:
        response = await device.request("GET", f"/1025/{group}/{rid}")
        assert code(response) == "2.05"
        text = response.payload.decode()
        values[rid] = int(text) if rid in INTEGERS else text
    return values


def codec_decode(items: list[dict[str, str]]) -> list[Any]:
    """Decode payloads with the npm lwm2m-codec library (tests/interop/lwm2m/decode.js)."""
    result = subprocess.run(
        ["node", str(LWM2M_DIR / "decode.js")],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    decoded: list[Any] = json.loads(result.stdout)
    return decoded


def from_tlv_hex(values: dict[str, str]) -> dict[int, object]:
    """lwm2m-codec leaves the values of an object it does not know as hex: type them as the model does."""
    typed: dict[int, object] = {}
    for rid, hexed in values.items():
        raw = bytes.fromhex(hexed)
        typed[int(rid)] = int.from_bytes(raw, "big", signed=True) if int(rid) in INTEGERS else raw.decode()
    return typed


def senml_values(records: list[dict[str, Any]]) -> dict[str, object]:
    """Full name -> value of a SenML pack (RFC 8428 section 4.5: base name + name)."""
    out: dict[str, object] = {}
    base = ""
    for record in records:
        base = record.get("bn", base)
        value = record.get("v", record.get("vs", record.get("vd")))
        out[base + record.get("n", "")] = value
    return out


# ----------------------------------------------------------------------------------- formats


async def test_instance_and_object_reads_decode_elsewhere_to_the_text_values(device: Device) -> None:
    groups = device.tree.instance_ids(1025)
    expected = {g: await text_values(device, g) for g in groups}
    payloads = {
        (path, cf): (await device.request("GET", path, accept=cf)).payload
        for path in (f"/1025/{ADMIN}", "/1025")
        for cf in (TLV, LWM2M_JSON, SENML_JSON, SENML_CBOR, LWM2M_CBOR)
    }
    tlv_instance, tlv_object, json_instance, json_object = codec_decode(
        [
            {"format": "tlv", "path": f"/1025/{ADMIN}", "hex": payloads[(f"/1025/{ADMIN}", TLV)].hex()},
            {"format": "tlv", "path": "/1025", "hex": payloads[("/1025", TLV)].hex()},
            {
                "format": "json",
                "path": f"/1025/{ADMIN}",
                "hex": payloads[(f"/1025/{ADMIN}", LWM2M_JSON)].hex(),
            },
            {"format": "json", "path": "/1025", "hex": payloads[("/1025", LWM2M_JSON)].hex()},
        ]
    )
    assert from_tlv_hex(tlv_instance) == expected[ADMIN]
    assert {int(g): from_tlv_hex(v) for g, v in tlv_object.items()} == expected
    assert {int(r): v for r, v in json_instance.items()} == expected[ADMIN]
    assert {int(g): {int(r): v for r, v in vs.items()} for g, vs in json_object.items()} == expected
    for path, cf in ((f"/1025/{ADMIN}", SENML_JSON), ("/1025", SENML_JSON), ("/1025", SENML_CBOR)):
        raw = payloads[(path, cf)]
        records = (
            json.loads(raw)
            if cf == SENML_JSON
            else [{{-2: "bn", 0: "n", 2: "v", 3: "vs"}[k]: v for k, v in r.items()} for r in cbor2.loads(raw)]
        )
        named = senml_values(records)
        want = {
            f"/1025/{g}/{r}": v
            for g, vs in expected.items()
            for r, v in vs.items()
            if path == "/1025" or g == ADMIN
        }
        assert named == want
    assert cbor2.loads(payloads[("/1025", LWM2M_CBOR)]) == {1025: expected}
    assert cbor2.loads(payloads[(f"/1025/{ADMIN}", LWM2M_CBOR)]) == {1025: {ADMIN: expected[ADMIN]}}


async def test_resource_reads_in_each_format(device: Device) -> None:
    tlv_read = await device.request("GET", f"/1025/{ADMIN}/4", accept=TLV)
    assert code(tlv_read) == "2.05" and tlv_read.opt.content_format == TLV
    [decoded] = codec_decode([{"format": "tlv", "path": f"/1025/{ADMIN}/4", "hex": tlv_read.payload.hex()}])
    assert int.from_bytes(bytes.fromhex(decoded), "big") == 300
    senml = json.loads((await device.request("GET", f"/1025/{ADMIN}/0", accept=SENML_JSON)).payload)
    assert senml == [{"bn": f"/1025/{ADMIN}/0", "vs": "admin"}]
    lwm2m_json = json.loads((await device.request("GET", f"/1025/{ADMIN}/4", accept=LWM2M_JSON)).payload)
    assert lwm2m_json["e"] == [{"n": "", "v": 300}]
    assert cbor2.loads((await device.request("GET", "/3/0/2", accept=LWM2M_CBOR)).payload) == {
        3: {0: {2: device.tree.serial_number}}
    }
    assert code(await device.request("GET", f"/1025/{ADMIN}/0", accept=41)) == "4.06"


def tlv_instance(group: int, name: str, lifetime: int) -> bytes:
    body = (
        tlv.TlvNode(tlv.TlvType.RESOURCE_VALUE, 0, name.encode()),
        tlv.TlvNode(tlv.TlvType.RESOURCE_VALUE, 4, tlv.encode_int(lifetime)),
    )
    return tlv.encode([tlv.TlvNode(tlv.TlvType.OBJECT_INSTANCE, group, body)])


WRITES: list[tuple[int, Callable[[int], bytes]]] = [
    (TLV, lambda g: tlv_instance(g, "by-tlv", 61)),
    (
        LWM2M_JSON,
        lambda g: json.dumps(
            {"bn": f"/1025/{g}/", "e": [{"n": "0", "sv": "by-json"}, {"n": "4", "v": 62}]}
        ).encode(),
    ),
    (
        SENML_JSON,
        lambda g: json.dumps(
            [{"bn": f"/1025/{g}/", "n": "0", "vs": "by-senml"}, {"n": "4", "v": 63}]
        ).encode(),
    ),
    (SENML_CBOR, lambda g: cbor2.dumps([{-2: f"/1025/{g}/", 0: "0", 3: "by-senml-cbor"}, {0: "4", 2: 64}])),
    (LWM2M_CBOR, lambda g: cbor2.dumps({1025: {g: {0: "by-lwm2m-cbor", 4: 65}}})),
]


@pytest.mark.parametrize(("cf", "make"), WRITES)
@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_instance_writes_in_each_format_are_applied(
    device: Device, cf: int, make: Callable[[int], bytes], method: str
) -> None:
    response = await device.request(method, f"/1025/{SUPERVISOR}", make(SUPERVISOR), cf=cf)
    assert code(response) == "2.04", response.payload
    values = await text_values(device, SUPERVISOR)
    assert (
        values[0]
        == {
            TLV: "by-tlv",
            LWM2M_JSON: "by-json",
            SENML_JSON: "by-senml",
            SENML_CBOR: "by-senml-cbor",
            LWM2M_CBOR: "by-lwm2m-cbor",
        }[cf]
    )
    assert values[4] == {TLV: 61, LWM2M_JSON: 62, SENML_JSON: 63, SENML_CBOR: 64, LWM2M_CBOR: 65}[cf]


async def test_resource_writes_in_lwm2m_formats(device: Device) -> None:
    single = tlv.encode([tlv.TlvNode(tlv.TlvType.RESOURCE_VALUE, 4, tlv.encode_int(1234))])
    assert code(await device.request("PUT", f"/1025/{SUPERVISOR}/4", single, cf=TLV)) == "2.04"
    assert (await text_values(device, SUPERVISOR))[4] == 1234
    senml = json.dumps([{"bn": f"/1025/{SUPERVISOR}/0", "vs": "senml-one"}]).encode()
    assert code(await device.request("PUT", f"/1025/{SUPERVISOR}/0", senml, cf=SENML_JSON)) == "2.04"
    assert (await text_values(device, SUPERVISOR))[0] == "senml-one"
    other = tlv.encode([tlv.TlvNode(tlv.TlvType.RESOURCE_VALUE, 5, tlv.encode_int(1))])
    assert code(await device.request("PUT", f"/1025/{SUPERVISOR}/4", other, cf=TLV)) == "4.00"


@pytest.mark.parametrize(
    ("cf", "payload", "status"),
    [
        (TLV, b"\xc8\x00", "4.00"),  # truncated
        (TLV, tlv_instance(ADMIN, "x", 1), "4.00"),  # another instance than the path's
        (SENML_JSON, b'[{"bn":"/1025/65534/","n":"4","vs":"not a number"}]', "4.00"),
        (SENML_JSON, b'[{"bn":"/1025/65534/","n":"99","v":1}]', "4.00"),  # no such resource
        (SENML_JSON, b'[{"bn":"/1025/65534/","n":"4","v":70000}]', "4.00"),  # past the model's range
        (SENML_JSON, b'[{"bn":"/1025/65534/","n":"2","vs":"password"}]', "4.05"),  # execute-only
        (LWM2M_CBOR, b"\xff", "4.00"),
        (LWM2M_JSON, b'{"e":1}', "4.00"),
    ],
)
async def test_bad_instance_writes_change_nothing(
    device: Device, cf: int, payload: bytes, status: str
) -> None:
    before = await text_values(device, SUPERVISOR)
    assert code(await device.request("PUT", f"/1025/{SUPERVISOR}", payload, cf=cf)) == status
    assert await text_values(device, SUPERVISOR) == before


# ----------------------------------------------------------------------------------- create, delete


async def test_create_in_tlv_and_senml_then_delete(device: Device) -> None:
    created = await device.request("POST", "/1025", tlv_instance(77, "made", 60), cf=TLV)
    assert code(created) == "2.01" and tuple(created.opt.location_path) == ("1025", "77")
    assert (await text_values(device, 77))[0] == "made" and (await text_values(device, 77))[4] == 60
    senml = json.dumps([{"bn": "/1025/", "n": "78/0", "vs": "senml-made"}]).encode()
    assert code(await device.request("POST", "/1025", senml, cf=SENML_JSON)) == "2.01"
    assert (await text_values(device, 78))[0] == "senml-made"
    # No instance id: the device picks the lowest free one.
    free = min(set(range(65536)) - set(device.tree.instance_ids(1025)))
    chosen = await device.request(
        "POST", "/1025", json.dumps([{"bn": "/1025/", "n": "0", "vs": "anon"}]).encode(), cf=SENML_JSON
    )
    assert code(chosen) == "2.01" and tuple(chosen.opt.location_path) == ("1025", str(free))
    assert code(await device.request("POST", "/1025", tlv_instance(77, "again", 1), cf=TLV)) == "4.00"
    # A refused value leaves no half-made instance behind.
    refused = json.dumps([{"bn": "/1025/", "n": "79/4", "v": 70000}]).encode()
    assert code(await device.request("POST", "/1025", refused, cf=SENML_JSON)) == "4.00"
    assert 79 not in device.tree.instance_ids(1025)

    assert code(await device.request("DELETE", "/1025/77")) == "2.02"
    assert code(await device.request("GET", "/1025/77/0")) == "4.04"
    assert code(await device.request("DELETE", "/1025/77")) == "4.04"
    assert code(await device.request("DELETE", f"/1025/{ADMIN}")) == "4.00"
    assert code(await device.request("POST", "/1025", tlv_instance(77, "reborn", 5), cf=TLV)) == "2.01"
    assert (await text_values(device, 77))[0] == "reborn"


async def test_delete_is_durable_and_follows_the_group_rights(tmp_path: Path) -> None:
    state = str(tmp_path / "device.sqlite3")
    tree = open_device(load_profile(), state)
    try:
        assert (
            await tree.handle(Request(Operation.EXECUTE, 1025, 500, 65535, caller=MAINTENANCE))
        ).status.is_success
        supervisor = Caller(SUPERVISOR)
        own = await tree.handle(Request(Operation.DELETE, 1025, SUPERVISOR, caller=supervisor))
        assert own.status.dotted == "4.01"
        above = await tree.handle(Request(Operation.DELETE, 1025, ADMIN, caller=supervisor))
        assert above.status.dotted == "4.01"
        read_only = await tree.handle(
            Request(Operation.DELETE, 1025, 500, caller=Caller(None, read_only=True))
        )
        assert read_only.status.dotted == "4.01"
        deleted = await tree.handle(Request(Operation.DELETE, 1025, 500, caller=MAINTENANCE))
        assert deleted.status.dotted == "2.02"
        resource = await tree.handle(Request(Operation.DELETE, 1025, ADMIN, 0, caller=MAINTENANCE))
        assert resource.status.dotted == "4.05"
        assert tree.outbox_payload(1025, 500)["deleted"] is True  # type: ignore[index]
    finally:
        tree.state.close()
    reopened = open_device(load_profile(), state)
    try:
        assert 500 not in reopened.instance_ids(1025) and SUPERVISOR in reopened.instance_ids(1025)
    finally:
        reopened.state.close()


# ----------------------------------------------------------------------------------- discovery


def parse_links(payload: bytes) -> dict[str, dict[str, str]]:
    links: dict[str, dict[str, str]] = {}
    for entry in payload.decode().split(","):
        target, *params = entry.split(";")
        links[target.strip("<>")] = {k: v.strip('"') for k, _, v in (p.partition("=") for p in params)}
    return links


async def test_well_known_core_filters(device: Device) -> None:
    groups = device.tree.instance_ids(1025)
    named = parse_links(
        (await device.request("GET", "/.well-known/core", query=("rt=tap.group.name",))).payload
    )
    assert set(named) == {f"/1025/{g}/0" for g in groups} | {f"/group/{g}/name" for g in groups}
    prefix = parse_links(
        (await device.request("GET", "/.well-known/core", query=(f"href=/1025/{ADMIN}*",))).payload
    )
    assert (
        f"/1025/{ADMIN}" in prefix
        and f"/1025/{ADMIN}/0" in prefix
        and all(t.startswith(f"/1025/{ADMIN}") for t in prefix)
    )
    actions = parse_links((await device.request("GET", "/.well-known/core", query=("if=core.a",))).payload)
    assert actions and all("core.a" in a["if"].split() for a in actions.values())
    tlv_links = parse_links(
        (await device.request("GET", "/.well-known/core", query=("ct=11542", "rt=tap.group*"))).payload
    )
    assert "/1025" in tlv_links and f"/group/{ADMIN}/name" in tlv_links and "/3" not in tlv_links
    nothing = await device.request("GET", "/.well-known/core", query=("rt=nothing.here",))
    assert code(nothing) == "2.05" and nothing.payload == b""
    assert code(await device.request("GET", "/.well-known/core", query=("color=red",))) == "4.00"


async def test_a_300_group_well_known_core_is_read_whole_block_wise(device: Device) -> None:
    for gid in range(1000, 1300 - len(device.tree.instance_ids(1025))):
        response = await device.tree.handle(Request(Operation.EXECUTE, 1025, gid, 65535, caller=MAINTENANCE))
        assert response.status.is_success
    assert len(device.tree.instance_ids(1025)) == 300
    whole = await device.request("GET", "/.well-known/core")
    assert len(whole.payload) > 64 * 1024  # far past one block: reassembled by aiocoap
    links = parse_links(whole.payload)
    assert all(
        f"/1025/{g}/0" in links and f"/group/{g}/name" in links for g in device.tree.instance_ids(1025)
    )
    libcoap = await asyncio.to_thread(
        subprocess.run,
        ["coap-client-notls", "-B", "30", f"{device.base}/.well-known/core"],
        capture_output=True,
        timeout=60,
    )
    assert whole.payload in libcoap.stdout


async def test_discover_shows_the_attributes_of_each_level(device: Device) -> None:
    g = ADMIN
    assert code(await device.request("PUT", "/1025", query=("pmax=60",))) == "2.04"
    assert code(await device.request("PUT", f"/1025/{g}", query=("pmin=2", "pmax=5"))) == "2.04"
    assert code(await device.request("PUT", f"/1025/{g}/4", query=("gt=400", "st=5"))) == "2.04"
    instance = await device.request("GET", f"/1025/{g}", accept=LINK)
    assert code(instance) == "2.05" and instance.opt.content_format == LINK
    assert instance.payload.decode() == ",".join(
        [f"</1025/{g}>;pmin=2;pmax=5", *(f"</1025/{g}/{r}>" for r in (0, 2, 4, 5, 7, 16, 65535))]
    ).replace(f"</1025/{g}/4>", f"</1025/{g}/4>;gt=400;st=5")
    resource = await device.request("GET", f"/1025/{g}/4", accept=LINK)
    assert resource.payload == f"</1025/{g}/4>;pmin=2;pmax=5;gt=400;st=5".encode()
    whole = parse_links((await device.request("GET", "/1025", accept=LINK)).payload)
    assert whole["/1025"] == {"pmax": "60"} and f"/1025/{SUPERVISOR}/0" in whole
    assert code(await device.request("GET", "/1025/4242", accept=LINK)) == "4.04"


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (f"/1025/{ADMIN}/0", ("gt=1",)),  # a string resource has no threshold
        (f"/1025/{ADMIN}", ("st=1",)),  # thresholds are for resources
        (f"/1025/{ADMIN}/4", ("lt=10", "gt=5")),
        (f"/1025/{ADMIN}/4", ("lt=1", "gt=5", "st=2")),
        (f"/1025/{ADMIN}/4", ("epmin=5", "epmax=5")),
        (f"/1025/{ADMIN}/4", ("pmin=-1",)),
        (f"/1025/{ADMIN}/4", ("st=0",)),
        (f"/1025/{ADMIN}/4", ("color=1",)),
        (f"/1025/{ADMIN}/4", ("pmin=1", "pmin=2")),
    ],
)
async def test_write_attributes_refuses_what_the_specification_does(
    device: Device, path: str, query: tuple[str, ...]
) -> None:
    assert code(await device.request("PUT", path, query=query)) == "4.00"
    assert (await device.request("GET", path, accept=LINK)).payload.split(b",")[0].endswith(b">")


async def test_write_attributes_on_missing_or_write_only_targets(device: Device) -> None:
    assert code(await device.request("PUT", "/1025/4242", query=("pmin=1",))) == "4.04"
    assert code(await device.request("PUT", f"/1025/{ADMIN}/2", query=("pmin=1",))) == "4.05"
    assert code(await device.request("PUT", f"/1025/{ADMIN}/4", query=("pmin=3",))) == "2.04"
    assert code(await device.request("PUT", f"/1025/{ADMIN}/4", query=("pmin",))) == "2.04"  # removes it
    assert (
        await device.request("GET", f"/1025/{ADMIN}/4", accept=LINK)
    ).payload == f"</1025/{ADMIN}/4>".encode()


# ----------------------------------------------------------------------------------- observe


class Observer:
    def __init__(self, device: Device, path: str) -> None:
        message = aiocoap.Message(code=aiocoap.GET, uri=device.base + path, observe=0)
        self.request = device.client.request(message)
        self.payloads: list[bytes] = []
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for response in self.request.observation:
            self.payloads.append(response.payload)

    async def wait_for(self, count: int) -> list[bytes]:
        async def enough() -> None:
            while len(self.payloads) < count:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(enough(), TIMEOUT)
        return self.payloads

    def cancel(self) -> None:
        self.request.observation.cancel()
        self._task.cancel()


def observation(device: Device) -> Any:
    [watchers] = device.server.face._observations.values()
    [only] = watchers
    return only


async def test_observe_with_pmin_2_and_pmax_5_under_a_stream_of_changes(device: Device) -> None:
    g, timers, face = SUPERVISOR, device.timers, device.server.face
    assert code(await device.request("PUT", f"/1025/{g}", query=("pmin=2", "pmax=5"))) == "2.04"
    observer = Observer(device, f"/1025/{g}/4")
    try:
        await asyncio.wait_for(observer.request.response, TIMEOUT)
        changes = [(0.5, 10), (1.0, 11), (1.5, 12), (3.0, 13), (9.5, 14), (9.7, 15)]
        for when, value in changes:
            await timers.advance_to(when, face)
            await device.write(g, 4, value)
            await timers.advance_to(when, face)
        await timers.advance_to(22.0, face)
        # pmin holds 0.5..1.5 to 2.0 and 3.0 to 4.0; pmax sends at 9.0 with no change; 9.5 and 9.7 wait
        # for 11.0 (pmin after 9.0); then pmax every 5 s with nothing new.
        assert observation(device).sent_at == [2.0, 4.0, 9.0, 11.0, 16.0, 21.0]
        assert await observer.wait_for(6) == [b"12", b"13", b"13", b"15", b"15", b"15"]
    finally:
        observer.cancel()


async def test_thresholds_and_steps_filter_numeric_notifications(device: Device) -> None:
    g, timers, face = SUPERVISOR, device.timers, device.server.face
    await device.write(g, 4, 100)
    assert code(await device.request("PUT", f"/1025/{g}/4", query=("gt=200", "st=50"))) == "2.04"
    observer = Observer(device, f"/1025/{g}/4")
    try:
        await asyncio.wait_for(observer.request.response, TIMEOUT)
        for step, value in enumerate([120, 149, 151, 190, 201, 230, 199]):
            await timers.advance_to(float(step), face)
            await device.write(g, 4, value)
            await timers.advance_to(float(step), face)
        # 151: 51 from the last notified 100; 201: crosses gt=200; 199: crosses it back.
        assert await observer.wait_for(3) == [b"151", b"201", b"199"]
        assert observation(device).sent_at == [2.0, 4.0, 6.0]
    finally:
        observer.cancel()


async def test_new_attributes_retune_a_running_observation(device: Device) -> None:
    g, timers, face = SUPERVISOR, device.timers, device.server.face
    observer = Observer(device, f"/1025/{g}/0")
    try:
        await asyncio.wait_for(observer.request.response, TIMEOUT)
        await device.write(g, 0, "immediate")
        assert await observer.wait_for(1) == [b"immediate"]
        assert code(await device.request("PUT", "/1025", query=("pmax=3",))) == "2.04"  # inherited
        await timers.advance_to(3.0, face)
        assert await observer.wait_for(2) == [b"immediate", b"immediate"]
        assert code(await device.request("PUT", "/1025", query=("pmax",))) == "2.04"
        await timers.advance_to(30.0, face)
        await device.write(g, 0, "again")
        assert await observer.wait_for(3) == [b"immediate", b"immediate", b"again"]
    finally:
        observer.cancel()


@pytest.mark.parametrize("how", ["deregister", "reset"])
async def test_cancel_observe_both_ways(device: Device, how: str) -> None:
    raw = await RawClient.open(device.server.address[1])
    face = device.server.face
    path = [(URI_PATH, part) for part in (b"1025", str(SUPERVISOR).encode(), b"0")]
    try:
        raw.send(encode(0, GET, 0x200, b"\x0c", [(OBSERVE, b""), *path]))
        assert (await raw.receive()).dotted_code == "2.05"
        assert face.observation_count == 1
        if how == "deregister":  # RFC 7641 3.6: a GET with Observe 1 and the same token
            raw.send(encode(0, GET, 0x201, b"\x0c", [(OBSERVE, b"\x01"), *path]))
            answer = await raw.receive()
            assert answer.dotted_code == "2.05" and answer.option(OBSERVE) is None
        else:  # RFC 7641 3.6: a Reset in answer to a notification
            await device.write(SUPERVISOR, 0, "notified")
            note = await raw.receive()
            assert note.payload == b"notified"
            raw.send(encode(RST, 0, note.mid))
            for _ in range(100):
                if face.observation_count == 0:
                    break
                await asyncio.sleep(0.01)
        assert face.observation_count == 0
        await device.write(SUPERVISOR, 0, "unheard")
        with pytest.raises(asyncio.TimeoutError):
            extra = await raw.receive(timeout=0.3)
            if extra.mtype == ACK:
                raise TimeoutError
    finally:
        raw.close()


async def test_ending_observations_stops_their_pmax_timers(device: Device) -> None:
    g, timers, face = SUPERVISOR, device.timers, device.server.face
    assert code(await device.request("PUT", f"/1025/{g}/4", query=("pmax=5",))) == "2.04"
    observer = Observer(device, f"/1025/{g}/4")
    try:
        await asyncio.wait_for(observer.request.response, TIMEOUT)
        watched = observation(device)
        assert face.end_observations("the device rebooted") == 1
        await timers.advance_to(30.0, face)
        assert watched.sent_at == [] and watched.gate is None
    finally:
        observer.cancel()
