"""A real LwM2M server (npm ``lwm2m-node-lib``, run by ``tests/interop/lwm2m/server.js``) drives the
emulator: it sees Register, Update and De-register, and reads, writes, discovers, observes (with
pmin/pmax), creates and deletes ``/1025`` instances. Plus the registration's 4.04 and backoff paths.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
import pytest

from tap_emulator.app import Emulator, Endpoint, ServeOptions, open_device
from tap_emulator.codec import tlv
from tap_emulator.config import load_profile
from tap_emulator.faces.coap import start_coap_server
from tap_emulator.faces.coap.registration import (
    Backoff,
    Registration,
    ServerUri,
    ensure_account,
    parse_server_uri,
)
from tap_emulator.model import Operation
from tap_emulator.tree import MAINTENANCE, Request

pytestmark = pytest.mark.interop
HARNESS = Path(__file__).resolve().parent / "lwm2m" / "server.js"
TIMEOUT = 10.0
ADMIN, SUPERVISOR = 65535, 65534


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LwM2MServer:
    """The node harness: events as JSON lines, commands answered by id."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, port: int) -> LwM2MServer:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(HARNESS),
            str(port),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        server = cls(process, port)
        assert (await server.event("ready"))["port"] == port
        return server

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "id" in message:
                self._answers.pop(message["id"]).set_result(message)
            else:
                self.events.put_nowait(message)

    async def event(self, kind: str) -> dict[str, Any]:
        """The next event of ``kind`` (events of other kinds before it are dropped)."""

        async def wanted() -> dict[str, Any]:
            while True:
                event = await self.events.get()
                if event["event"] == kind:
                    return event

        return await asyncio.wait_for(wanted(), TIMEOUT)

    async def call(self, op: str, *args: Any) -> Any:
        ident = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[ident] = answer
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"id": ident, "op": op, "args": list(args)}) + "\n").encode())
        message = await asyncio.wait_for(answer, TIMEOUT)
        if "error" in message:
            raise AssertionError(f"{op}{args}: {message}")
        return message["result"]

    async def stop(self) -> None:
        self._reader.cancel()
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


@pytest.fixture
async def lwm2m_server() -> AsyncIterator[LwM2MServer]:
    server = await LwM2MServer.start(free_udp_port())
    try:
        yield server
    finally:
        await server.stop()


async def start_emulator(tmp_path: Path, server: LwM2MServer, **extra: Any) -> Emulator:
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
            store="off",
            lwm2m_servers=(ServerUri("127.0.0.1", server.port),),
            **extra,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    return emulator


async def test_a_real_lwm2m_server_drives_the_device(tmp_path: Path, lwm2m_server: LwM2MServer) -> None:
    emulator = await start_emulator(tmp_path, lwm2m_server, endpoint="tap-under-test", lifetime=90)
    tree = emulator.tree
    assert tree is not None
    stopped = False
    try:
        registered = await lwm2m_server.event("registration")
        assert (
            registered["endpoint"],
            registered["lifetime"],
            registered["version"],
            registered["binding"],
        ) == (
            "tap-under-test",
            "90",
            "1.1",
            "U",
        )
        links = registered["payload"].split(",")
        assert f"</1025/{ADMIN}>" in links and "</3/0>" in links and "</1/0>" in links and "</0/0>" in links

        assert await lwm2m_server.call("read", "tap-under-test", 1025, ADMIN, 0) == "admin"
        await lwm2m_server.call("write", "tap-under-test", 1025, SUPERVISOR, 0, "by-the-server")
        assert tree.account(SUPERVISOR) is not None and tree.account(SUPERVISOR).name == "by-the-server"  # type: ignore[union-attr]
        assert await lwm2m_server.call("read", "tap-under-test", 1025, SUPERVISOR, 4) == "300"

        await lwm2m_server.call(
            "writeAttributes", "tap-under-test", 1025, SUPERVISOR, 4, {"pmin": 1, "pmax": 30}
        )
        discovered = await lwm2m_server.call("discover", "tap-under-test", 1025, SUPERVISOR, 4)
        assert f"</1025/{SUPERVISOR}/4>;pmin=1;pmax=30" in json.dumps(discovered)
        instance_links = json.dumps(
            await lwm2m_server.call("discover", "tap-under-test", 1025, SUPERVISOR, None)
        )
        assert f"</1025/{SUPERVISOR}/0>" in instance_links

        first = await lwm2m_server.call("observe", "tap-under-test", 1025, SUPERVISOR, 4)
        assert first == "300"
        written = await tree.handle(Request(Operation.WRITE, 1025, SUPERVISOR, 4, 321, caller=MAINTENANCE))
        assert written.status.is_success
        notification = await lwm2m_server.event("notification")
        assert (notification["path"], notification["value"]) == (f"/1025/{SUPERVISOR}/4", "321")

        await lwm2m_server.call("create", "tap-under-test", 1025, 77)
        assert 77 in tree.instance_ids(1025)
        update = await lwm2m_server.event("update")
        assert "</1025/77>" in update["payload"].split(",")
        assert await lwm2m_server.call("delete", "tap-under-test", 1025, 77) == "2.02"
        assert 77 not in tree.instance_ids(1025)
        update = await lwm2m_server.event("update")
        assert "</1025/77>" not in update["payload"].split(",")

        # The server changes the registration lifetime (/1/0/1): the device sends an Update with lt.
        await lwm2m_server.call("write", "tap-under-test", 1, 0, 1, "120")
        update = await lwm2m_server.event("update")
        assert update["lifetime"] == "120"
        # The Security object's keys are write-only, to the server as to anyone.
        await lwm2m_server.call("write", "tap-under-test", 0, 0, 5, b"secret".hex())  # opaque as text: hex
        with pytest.raises(AssertionError, match=r"4\.05"):
            await lwm2m_server.call("read", "tap-under-test", 0, 0, 5)

        await emulator.stop()
        stopped = True
        assert (await lwm2m_server.event("unregistration"))["endpoint"] == "tap-under-test"
    finally:
        if not stopped:
            await emulator.stop()


async def test_an_update_answered_4_04_registers_again(tmp_path: Path) -> None:
    port = free_udp_port()
    server = await LwM2MServer.start(port)
    emulator = await start_emulator(tmp_path, server)
    try:
        assert tree_serial(emulator) == (await server.event("registration"))["endpoint"]
        await until(lambda: emulator.registrations[0].registrations == 1)  # the 2.01 has arrived
        await server.stop()  # the server restarts and forgets every registration
        server = await LwM2MServer.start(port)
        tree = emulator.tree
        assert tree is not None
        created = await tree.handle(Request(Operation.EXECUTE, 1025, 900, 65535, caller=MAINTENANCE))
        assert created.status.is_success  # a new instance: the device sends an Update, answered 4.04
        again = await server.event("registration")
        assert "</1025/900>" in again["payload"].split(",")
        await until(lambda: emulator.registrations[0].registrations == 2)
    finally:
        await emulator.stop()
        await server.stop()


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


def tree_serial(emulator: Emulator) -> str:
    assert emulator.tree is not None
    return emulator.tree.serial_number


async def test_registration_backs_off_while_the_server_is_away(tmp_path: Path) -> None:
    tree = open_device(load_profile(), str(tmp_path / "device.sqlite3"))
    coap = await start_coap_server(tree, "127.0.0.1", 0)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    slept: list[float] = []
    done = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 4:
            done.set()
            await asyncio.Event().wait()  # park here until cancelled

    uri = ServerUri("127.0.0.1", silent.getsockname()[1])
    await ensure_account(tree, 0, uri, None)
    registration = Registration(
        coap.context, tree, 0, uri, "away", backoff=Backoff(1.0, 4.0), sleep=sleep, request_timeout=0.2
    )
    registration.start()
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT)
        assert slept == [1.0, 2.0, 4.0, 4.0]
        assert registration.location is None and registration.registrations == 0
        datagram = silent.recv(2048)  # a Register reached the socket
        assert b"rd" in datagram and b"ep=away" in datagram
    finally:
        await registration.close()
        await coap.close()
        silent.close()
        tree.state.close()


@pytest.mark.parametrize("text", ["http://h:1", "coap://", "coap://h:99999", "coap://h:1/rd", "coaps://h:1"])
def test_bad_server_uris_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server_uri(text)


def test_a_server_uri_without_a_port_takes_5683() -> None:
    assert parse_server_uri("coap://example.test") == ServerUri("example.test", aiocoap.COAP_PORT)


class BootstrapServer(aiocoap.resource.Resource):  # type: ignore[misc]
    """A bootstrap server run by the test: on Bootstrap-Request it deletes objects 0 and 1 on the
    device, writes one server account (TLV), and sends Bootstrap-Finish, as TS 1.1 section 5.2 has it."""

    def __init__(self, lwm2m_port: int) -> None:
        super().__init__()
        self.lwm2m_port = lwm2m_port
        self.context: Any = None
        self.endpoints: list[str] = []
        self.answers: list[str] = []
        self.done = asyncio.Event()

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.endpoints += [q[3:] for q in request.opt.uri_query if q.startswith("ep=")]
        device = f"coap://{request.remote.hostinfo}"
        asyncio.get_running_loop().create_task(self._provision(device))
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def _send(self, code: Any, uri: str, payload: bytes = b"", cf: int | None = None) -> None:
        message = aiocoap.Message(code=code, uri=uri, payload=payload)
        if cf is not None:
            message.opt.content_format = cf
        response = await asyncio.wait_for(self.context.request(message).response, TIMEOUT)
        self.answers.append(f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}")

    async def _provision(self, device: str) -> None:
        def value(rid: int, data: bytes) -> tlv.TlvNode:
            return tlv.TlvNode(tlv.TlvType.RESOURCE_VALUE, rid, data)

        security = tlv.encode(
            [value(0, f"coap://127.0.0.1:{self.lwm2m_port}".encode()), value(1, tlv.encode_int(0))]
        )
        server = tlv.encode([value(1, tlv.encode_int(77)), value(7, b"U")])
        await self._send(aiocoap.DELETE, f"{device}/0")
        await self._send(aiocoap.DELETE, f"{device}/1")
        await self._send(aiocoap.PUT, f"{device}/0/3", security, 11542)
        await self._send(aiocoap.PUT, f"{device}/1/3", server, 11542)
        await self._send(aiocoap.POST, f"{device}/bs")
        self.done.set()


async def test_bootstrap_then_registration(tmp_path: Path, lwm2m_server: LwM2MServer) -> None:
    bootstrap_port = free_udp_port()
    resource = BootstrapServer(lwm2m_server.port)
    site = aiocoap.resource.Site()
    site.add_resource(["bs"], resource)
    context = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", bootstrap_port), transports=["simplesocketserver"]
    )
    resource.context = context
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
            store="off",
            endpoint="bootstrapped",
            lwm2m_bootstrap=ServerUri("127.0.0.1", bootstrap_port),
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        await asyncio.wait_for(resource.done.wait(), TIMEOUT)
        assert resource.endpoints == ["bootstrapped"]
        assert resource.answers == ["2.02", "2.02", "2.04", "2.04", "2.04"]
        registered = await lwm2m_server.event("registration")
        assert (registered["endpoint"], registered["lifetime"]) == ("bootstrapped", "77")
        assert {"</0/3>", "</1/3>"} <= set(registered["payload"].split(","))
        # Bootstrap is over: the device answers no further Bootstrap-Finish.
        late = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{emulator.coap_address[1]}/bs")  # type: ignore[index]
        answer = await asyncio.wait_for(context.request(late).response, TIMEOUT)
        assert str(answer.code) == str(aiocoap.NOT_FOUND)
    finally:
        await emulator.stop()
        await context.shutdown()


async def test_an_update_is_sent_at_half_the_lifetime(tmp_path: Path, lwm2m_server: LwM2MServer) -> None:
    tree = open_device(load_profile(), str(tmp_path / "device.sqlite3"))
    coap = await start_coap_server(tree, "127.0.0.1", 0)
    waits: list[float] = []
    park = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the first wait passes at once, later ones park
        waits.append(seconds)
        if len(waits) > 1:
            await park.wait()

    uri = ServerUri("127.0.0.1", lwm2m_server.port)
    await ensure_account(tree, 0, uri, 240)
    registration = Registration(coap.context, tree, 0, uri, "periodic", sleep=sleep)
    registration.start()
    try:
        assert (await lwm2m_server.event("registration"))["lifetime"] == "240"
        update = await lwm2m_server.event("update")
        assert update["endpoint"] == "periodic" and update["payload"] == ""  # nothing changed: no links
        await until(lambda: registration.updates == 1 and len(waits) == 2)
        assert waits == [120.0, 120.0]
    finally:
        await registration.close()
        await coap.close()
        tree.state.close()
