"""Reboot and factory reset of a running device (``Emulator.reboot``/``factory_reset``, ``POST /3//4`` and
``/3//5``), seen by real clients: Tap connections over TCP and WebSocket, a CoAP observer (aiocoap), the
state file and its outbox.

A reboot drops every connection and observation and keeps the state; a factory reset puts the profile
back, tells observers and the outbox, and leaves the caller's connection usable with its rights.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from tap_support import (
    ADMIN,
    DEVICE,
    GROUP,
    INTERFACE,
    SUPERVISOR,
    TcpLink,
    WsLink,
    get,
    plain_login,
    post,
    put,
)

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.codec.apdu import decode_response
from tap_emulator.config import SecurityMode

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
NAME, CREATE = 0, 0xFFFF
REBOOT, FACTORY_RESET = 4, 5
CHANGED, CREATED, CONTENT, UNAUTHORIZED = 0x44, 0x41, 0x45, 0x81
WAIT = 5.0


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Emulator]:
    """The default profile in plain-login mode, CoAP, TCP and WebSocket on free loopback ports."""
    emu = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint(HOST, 0),
            tcp=Endpoint(HOST, 0),
            ws=Endpoint(HOST, 0),
            http=None,
            store="off",
            security=SecurityMode.NONE,
        ),
        announce=lambda _line: None,
    )
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


def port(address: tuple[str, int] | None) -> int:
    assert address is not None
    return address[1]


async def tcp(emu: Emulator) -> TcpLink:
    return await TcpLink.open(port(emu.tcp_address))


async def ws(emu: Emulator) -> WsLink:
    return await WsLink.open(port(emu.ws_address))


async def call(link: TcpLink | WsLink, frame: bytes) -> tuple[int, bytes]:
    return decode_response(await link.handle_frame(frame))


async def login(link: TcpLink | WsLink, name: str, password: str) -> None:
    assert (await call(link, plain_login(name, password)))[0] == CHANGED


async def closed_by_server(link: TcpLink | WsLink) -> bool:
    """True once the server has closed the connection (a TCP end of stream, a WebSocket close)."""
    if isinstance(link, TcpLink):
        return await asyncio.wait_for(link.reader.read(1), WAIT) == b""
    try:
        await asyncio.wait_for(link.conn.recv(), WAIT)
    except Exception as exc:  # websockets.ConnectionClosed
        return type(exc).__name__.startswith("ConnectionClosed") and link.conn.close_code == 1012
    return False


class Observer:
    """A CoAP observation of one path and the values it has received."""

    def __init__(self, context: aiocoap.Context, emu: Emulator, path: str) -> None:
        message = aiocoap.Message(
            code=aiocoap.GET, uri=f"coap://{HOST}:{port(emu.coap_address)}{path}", observe=0
        )
        self.request = context.request(message)
        self.values: list[bytes] = []
        self.ended: aiocoap.Message | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bytes:
        first = await asyncio.wait_for(self.request.response, WAIT)
        self._task = asyncio.get_running_loop().create_task(self._follow())
        return bytes(first.payload)

    async def _follow(self) -> None:
        """Successful notifications are values; an error notification (or the end) ends the observation."""
        async for message in self.request.observation:
            if not message.code.is_successful():
                self.ended = message
                return
            self.values.append(bytes(message.payload))

    async def wait(self, predicate: Any) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate(self):
                await asyncio.sleep(0.01)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


@pytest.fixture
async def coap_context() -> AsyncIterator[aiocoap.Context]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


# ----------------------------------------------------------------------------------- Emulator.reboot


async def test_reboot_ends_every_connection_and_observation_and_keeps_the_state(
    device: Emulator, coap_context: aiocoap.Context
) -> None:
    restarts: list[str] = []
    device.restart_hooks.append(lambda: restarts.append("sources"))
    admin_tcp, admin_ws = await tcp(device), await ws(device)
    await login(admin_tcp, "admin", "admin")
    await login(admin_ws, "admin", "admin")
    assert (await call(admin_tcp, put(GROUP, 0, NAME, b"kept-name")))[0] == CHANGED
    observer = Observer(coap_context, device, "/1025/0/0")
    assert await observer.start() == b"kept-name"

    await device.reboot()

    assert await closed_by_server(admin_tcp)
    assert await closed_by_server(admin_ws)
    await observer.wait(lambda o: o.ended is not None)
    assert observer.ended is not None and observer.ended.code == aiocoap.SERVICE_UNAVAILABLE
    assert device.coap is not None and device.coap.face.observation_count == 0
    assert device.tap_face is not None and device.tap_face.session_count == 0
    assert restarts == ["sources"]
    # The device comes back with its state; new connections start anonymous.
    fresh = await tcp(device)
    assert await call(fresh, get(GROUP, 0, NAME)) == (CONTENT, b"kept-name")
    assert (await call(fresh, put(GROUP, 0, NAME, b"x")))[0] == UNAUTHORIZED
    await fresh.close()


async def test_post_reboot_answers_first_then_drops_the_caller(device: Emulator) -> None:
    admin, other = await tcp(device), await ws(device)
    await login(admin, "admin", "admin")
    assert (await call(other, get(GROUP, 0, NAME)))[0] == CONTENT
    assert await call(admin, post(DEVICE, None, REBOOT)) == (CHANGED, b"")
    assert await closed_by_server(admin)
    assert await closed_by_server(other)
    again = await tcp(device)
    await login(again, "admin", "admin")
    await again.close()


async def test_only_admin_may_reboot_or_reset(device: Emulator) -> None:
    supervisor = await tcp(device)
    await login(supervisor, "supervisor", "supervisor")
    assert (await call(supervisor, post(DEVICE, None, REBOOT)))[0] == UNAUTHORIZED
    assert (await call(supervisor, post(DEVICE, None, FACTORY_RESET)))[0] == UNAUTHORIZED
    anonymous = await tcp(device)
    assert (await call(anonymous, post(DEVICE, None, FACTORY_RESET)))[0] == UNAUTHORIZED
    # Still connected: nothing happened.
    assert (await call(supervisor, get(GROUP, SUPERVISOR, NAME))) == (CONTENT, b"supervisor")
    await supervisor.close()
    await anonymous.close()


# ----------------------------------------------------------------------------------- factory reset


async def test_factory_reset_restores_the_profile_tells_observers_and_the_outbox(
    device: Emulator, coap_context: aiocoap.Context
) -> None:
    tree = device.tree
    assert tree is not None
    admin = await tcp(device)
    await login(admin, "admin", "admin")
    assert (await call(admin, put(GROUP, 0, NAME, b"changed")))[0] == CHANGED
    assert (await call(admin, post(GROUP, 56, CREATE)))[0] == CREATED
    observer = Observer(coap_context, device, "/1025/0/0")
    assert await observer.start() == b"changed"
    outbox_before = {row.id for row in await tree.state.pending_outbox()}
    restarts: list[str] = []
    device.restart_hooks.append(lambda: restarts.append("sources"))

    await device.factory_reset()

    await observer.wait(lambda o: b"anonymous" in o.values)
    assert tree.live(GROUP, 56) is None
    assert tree.account(0) is not None and tree.account(0).name == "anonymous"  # type: ignore[union-attr]
    new_rows = [row for row in await tree.state.pending_outbox() if row.id not in outbox_before]
    by_instance = {(row.object_id, row.instance_id): row.payload for row in new_rows}
    assert by_instance[(GROUP, 56)]["deleted"] is True
    assert by_instance[(GROUP, 0)]["values"]["name"] == "anonymous"
    assert restarts == ["sources"]
    assert await closed_by_server(admin)  # not kept: every session ended


async def test_post_factory_reset_keeps_the_callers_connection_and_rights(device: Emulator) -> None:
    admin, bystander = await tcp(device), await ws(device)
    await login(admin, "admin", "admin")
    assert (await call(admin, put(GROUP, SUPERVISOR, NAME, b"renamed")))[0] == CHANGED
    assert await call(admin, post(DEVICE, None, FACTORY_RESET)) == (CHANGED, b"")
    # The configurator carries straight on, with admin's rights, on the factory state.
    assert await call(admin, get(INTERFACE, None, 7)) == (CONTENT, ADMIN.to_bytes(2, "big"))
    assert await call(admin, get(GROUP, SUPERVISOR, NAME)) == (CONTENT, b"supervisor")
    assert (await call(admin, post(GROUP, 56, CREATE)))[0] == CREATED
    assert await closed_by_server(bystander)
    await admin.close()


async def test_coap_maintenance_resets_and_reboots_too(
    device: Emulator, coap_context: aiocoap.Context
) -> None:
    """Over CoAP (maintenance on loopback) no session is the caller's: a reset drops every Tap connection."""
    base = f"coap://{HOST}:{port(device.coap_address)}"

    async def coap(method: aiocoap.Code, path: str, payload: bytes = b"") -> aiocoap.Message:
        message = aiocoap.Message(code=method, uri=f"{base}{path}", payload=payload)
        return await asyncio.wait_for(coap_context.request(message).response, WAIT)

    assert (await coap(aiocoap.PUT, "/1025/0/0", b"changed")).code == aiocoap.CHANGED
    admin = await tcp(device)
    await login(admin, "admin", "admin")
    assert (await coap(aiocoap.POST, "/device/0/factory-reset")).code == aiocoap.CHANGED
    assert (await coap(aiocoap.GET, "/1025/0/0")).payload == b"anonymous"
    assert await closed_by_server(admin)
    observer = Observer(coap_context, device, "/1025/0/0")
    await observer.start()
    assert (await coap(aiocoap.POST, "/3/0/4")).code == aiocoap.CHANGED
    await observer.wait(lambda o: o.ended is not None)
    assert (await coap(aiocoap.GET, "/3/0/4")).code == aiocoap.METHOD_NOT_ALLOWED
