"""Rights over other groups on the Tap face, over a real TCP socket (127.0.0.1, port 0).

Issue 9 defect 4: a supervisor could take over admin (write its salt, iteration, alias and name, or
create a second group named ``admin`` whose login then won). Each write below is what that attack
sends; each must be refused, and admin must still log in to its own group with its own password.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tap_support import (
    ADMIN,
    GROUP,
    INTERFACE,
    SUPERVISOR,
    Device,
    TcpLink,
    device_profile,
    get,
    make_device,
    name16,
    plain_login,
    post,
    put,
)

from tap_emulator.codec.apdu import decode_response
from tap_emulator.faces.tap import TapServer, start_tcp_server

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
NAME, PASSWORD, LIFETIME, ALIAS, ITERATION, SALT, CREATE = 0, 2, 4, 5, 7, 16, 0xFFFF
UNAUTHORIZED, BAD_REQUEST, CHANGED, CREATED = 0x81, 0x80, 0x44, 0x41
CURRENT_GROUP = get(INTERFACE, None, 7)


class TapTcpClient(TcpLink):
    """A TCP link that answers (status, data) for a frame."""

    async def call(self, frame: bytes) -> tuple[int, bytes]:
        return decode_response(await self.handle_frame(frame))

    async def status(self, frame: bytes) -> int:
        return (await self.call(frame))[0]


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    # No-security mode (plain login, frames in clear); the lockout is not what these tests are about.
    dev = make_device(device_profile(max_failed_logins=0))
    yield dev
    dev.close()


@pytest.fixture
async def tcp(device: Device) -> AsyncIterator[TapServer]:
    server = await start_tcp_server(device.face, HOST, 0)
    yield server
    await server.close()


@pytest.fixture
async def connect(tcp: TapServer) -> AsyncIterator[object]:
    clients: list[TapTcpClient] = []

    async def open_client() -> TapTcpClient:
        clients.append(await TapTcpClient.open(tcp.address[1]))
        return clients[-1]

    yield open_client
    for client in clients:
        await client.close()


async def logged_in(connect: object, name: str, password: str) -> TapTcpClient:
    client: TapTcpClient = await connect()  # type: ignore[operator]
    assert await client.status(plain_login(name, password)) == CHANGED
    return client


async def test_a_supervisor_cannot_take_over_admin(connect: object, device: Device) -> None:
    supervisor = await logged_in(connect, "supervisor", "supervisor")
    before = device.tree.account(ADMIN)
    for attack in (
        post(GROUP, ADMIN, PASSWORD, b"pwned"),
        post(GROUP, ADMIN, PASSWORD, bytes(range(40))),  # a key
        put(GROUP, ADMIN, SALT, (0x01020304).to_bytes(4, "big")),
        put(GROUP, ADMIN, ITERATION, (1).to_bytes(4, "big")),
        put(GROUP, ADMIN, ALIAS, (0).to_bytes(2, "big")),  # admin demoted to anonymous
        put(GROUP, ADMIN, NAME, b"ex-admin"),
        put(GROUP, ADMIN, LIFETIME, (1).to_bytes(2, "big")),
    ):
        assert await supervisor.status(attack) == UNAUTHORIZED, attack.hex()
    assert device.tree.account(ADMIN) == before

    # A second group named admin: refused as a duplicate, for a new group and for the supervisor itself.
    assert await supervisor.status(post(GROUP, 9, CREATE)) == CREATED
    assert await supervisor.status(put(GROUP, 9, NAME, b"admin")) == BAD_REQUEST
    assert await supervisor.status(put(GROUP, SUPERVISOR, NAME, b"admin")) == BAD_REQUEST
    # Nor can the new group be given admin's or supervisor's rights, nor the supervisor choose its own.
    assert await supervisor.status(put(GROUP, 9, ALIAS, ADMIN.to_bytes(2, "big"))) == UNAUTHORIZED
    assert await supervisor.status(put(GROUP, 9, ALIAS, SUPERVISOR.to_bytes(2, "big"))) == UNAUTHORIZED
    assert await supervisor.status(put(GROUP, SUPERVISOR, ALIAS, ADMIN.to_bytes(2, "big"))) == UNAUTHORIZED

    admin = await logged_in(connect, "admin", "admin")
    assert await admin.call(CURRENT_GROUP) == (0x45, ADMIN.to_bytes(2, "big"))
    assert await admin.call(get(GROUP, ADMIN, NAME)) == (0x45, b"admin")


async def test_a_supervisor_keeps_its_rights_below_it_and_over_itself(connect: object) -> None:
    supervisor = await logged_in(connect, "supervisor", "supervisor")
    assert await supervisor.status(post(GROUP, 9, CREATE)) == CREATED
    for write in (
        put(GROUP, 9, NAME, b"operator"),
        post(GROUP, 9, PASSWORD, b"op"),
        put(GROUP, 9, LIFETIME, (60).to_bytes(2, "big")),
        put(GROUP, 0, NAME, b"guest"),  # anonymous ranks below every writer
        put(GROUP, SUPERVISOR, NAME, b"night-shift"),  # its own name and password
        post(GROUP, SUPERVISOR, PASSWORD, b"n3w"),
    ):
        assert await supervisor.status(write) == CHANGED, write.hex()
    assert await supervisor.status(put(GROUP, 9, NAME, b"operator")) == CHANGED, "its own name again"
    assert await supervisor.status(put(GROUP, 0, NAME, b"operator")) == BAD_REQUEST
    operator = await logged_in(connect, "operator", "op")
    assert await operator.call(CURRENT_GROUP) == (0x45, (9).to_bytes(2, "big"))
    renamed = await logged_in(connect, "night-shift", "n3w")
    assert await renamed.call(CURRENT_GROUP) == (0x45, SUPERVISOR.to_bytes(2, "big"))

    # Admin changes every group, supervisor included; a user given admin's profile is admin's alone.
    admin = await logged_in(connect, "admin", "admin")
    assert await admin.status(put(GROUP, 9, ALIAS, ADMIN.to_bytes(2, "big"))) == CHANGED
    assert await supervisor.status(post(GROUP, 9, PASSWORD, b"stolen")) == UNAUTHORIZED
    assert await admin.status(put(GROUP, SUPERVISOR, NAME, b"supervisor")) == CHANGED
    assert await admin.status(put(GROUP, SUPERVISOR, LIFETIME, (30).to_bytes(2, "big"))) == CHANGED


async def test_login_by_name_is_exact(connect: object, device: Device) -> None:
    client: TapTcpClient = await connect()  # type: ignore[operator]
    password = name16("admin")
    for field in (b"admin\0junk".ljust(16, b"\0"), name16("Admin"), name16("admin "), name16(" admin")):
        assert await client.status(_login(field, password)) == UNAUTHORIZED, field
    assert await client.call(CURRENT_GROUP) == (0x45, b"\x00\x00")
    assert await client.status(_login(name16("admin"), password)) == CHANGED

    # New groups have an empty name, and an empty name is no login, even with a password set.
    assert await client.status(post(GROUP, 9, CREATE)) == CREATED
    assert await client.status(post(GROUP, 9, PASSWORD, b"")) == CHANGED
    assert await client.status(post(GROUP, 10, CREATE)) == CREATED  # two empty names are no duplicate
    fresh: TapTcpClient = await connect()  # type: ignore[operator]
    assert await fresh.status(_login(bytes(16), bytes(16))) == UNAUTHORIZED


def _login(name_field: bytes, password_field: bytes) -> bytes:
    return post(INTERFACE, None, 0, name_field + password_field)
