"""Bounded Tap connections on real sockets (127.0.0.1, port 0): caps, eviction, deadlines, keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
from tap_support import Device, make_device
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage

from tap_emulator.faces.tap import TapServer, start_tcp_server, start_ws_server
from tap_emulator.faces.tap.connections import (
    DEFAULT_MAX_CONNECTIONS,
    RESERVED_DESCRIPTORS,
    ConnectionLimits,
    fit_to_file_limit,
    set_keepalive,
)

HOST = "127.0.0.1"
OTHER_PEER = "127.0.0.2"
TIMEOUT = 5.0
GET_FIRMWARE = bytes.fromhex("a2ca000007010003ffff0003")
FIRMWARE_ANSWER = bytes.fromhex("45312e3131382e309000")


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = make_device()
    yield dev
    dev.close()


async def serving(device: Device, kind: str, limits: ConnectionLimits) -> TapServer:
    start = start_tcp_server if kind == "tcp" else start_ws_server
    return await start(device.face, HOST, 0, limits)


async def open_tcp(server: TapServer, local: str = HOST) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(HOST, server.address[1], local_addr=(local, 0)), TIMEOUT
    )


async def answers_firmware(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(GET_FIRMWARE)
    try:
        return await asyncio.wait_for(reader.readexactly(len(FIRMWARE_ANSWER)), TIMEOUT) == FIRMWARE_ANSWER
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (end of stream or reset) within TIMEOUT."""
    try:
        return await asyncio.wait_for(reader.read(100), TIMEOUT) == b""
    except ConnectionError:
        return True


async def open_ws(server: TapServer, local: str = HOST) -> ClientConnection:
    return await connect(
        f"ws://{HOST}:{server.address[1]}", open_timeout=TIMEOUT, local_addr=(local, 0), ping_interval=None
    )


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


# ------------------------------------------------------------------------------------------------ caps


async def test_tcp_per_peer_cap_refuses_that_peer_only(device: Device) -> None:
    server = await serving(device, "tcp", ConnectionLimits(max_connections=10, max_per_peer=2))
    writers: list[asyncio.StreamWriter] = []
    try:
        first = await open_tcp(server)
        second = await open_tcp(server)
        writers += [first[1], second[1]]
        assert await answers_firmware(*first) and await answers_firmware(*second)
        extra_reader, extra_writer = await open_tcp(server)
        writers.append(extra_writer)
        assert await closed_by_server(extra_reader)
        other = await open_tcp(server, OTHER_PEER)
        writers.append(other[1])
        assert await answers_firmware(*other)
        # A slot given back is usable again by the same peer.
        first[1].close()
        await first[1].wait_closed()
        for _ in range(50):
            again = await open_tcp(server)
            writers.append(again[1])
            if await answers_firmware(*again):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the peer's slot was not given back")
    finally:
        close_all(writers)
        await server.close()


async def test_ws_per_peer_cap_refuses_that_peer_only(device: Device) -> None:
    server = await serving(device, "ws", ConnectionLimits(max_connections=10, max_per_peer=2))
    try:
        async with await open_ws(server) as a, await open_ws(server) as b:
            with pytest.raises((InvalidHandshake, InvalidMessage, ConnectionError, EOFError)):
                await open_ws(server)
            async with await open_ws(server, OTHER_PEER) as other:
                for conn in (a, b, other):
                    await conn.send(GET_FIRMWARE)
                    assert await asyncio.wait_for(conn.recv(), TIMEOUT) == FIRMWARE_ANSWER
    finally:
        await server.close()


async def test_tcp_face_cap_displaces_the_oldest_connection_without_a_frame(device: Device) -> None:
    server = await serving(device, "tcp", ConnectionLimits(max_connections=3, max_per_peer=10))
    writers: list[asyncio.StreamWriter] = []
    try:
        idle = [await open_tcp(server) for _ in range(3)]
        writers += [w for _, w in idle]
        await asyncio.sleep(0.1)  # all three admitted, oldest first
        client = await open_tcp(server)
        writers.append(client[1])
        assert await answers_firmware(*client)
        assert await closed_by_server(idle[0][0])
        assert await answers_firmware(*idle[1])  # the others were left alone
        assert await answers_firmware(*idle[2])
        # Every slot now holds a connection that completed a frame: a newcomer is refused, not them.
        refused_reader, refused_writer = await open_tcp(server)
        writers.append(refused_writer)
        assert await closed_by_server(refused_reader)
        for reader, writer in (client, idle[1], idle[2]):
            assert await answers_firmware(reader, writer)
    finally:
        close_all(writers)
        await server.close()


async def test_ws_face_cap_displaces_a_connection_that_sent_no_message(device: Device) -> None:
    server = await serving(device, "ws", ConnectionLimits(max_connections=2, max_per_peer=10))
    try:
        async with await open_ws(server) as idle, await open_ws(server) as busy:
            await busy.send(GET_FIRMWARE)
            assert await asyncio.wait_for(busy.recv(), TIMEOUT) == FIRMWARE_ANSWER
            async with await open_ws(server) as newcomer:
                await newcomer.send(GET_FIRMWARE)
                assert await asyncio.wait_for(newcomer.recv(), TIMEOUT) == FIRMWARE_ANSWER
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(idle.recv(), TIMEOUT)
                await busy.send(GET_FIRMWARE)
                assert await asyncio.wait_for(busy.recv(), TIMEOUT) == FIRMWARE_ANSWER
    finally:
        await server.close()


# ------------------------------------------------------------------------------------------- deadlines


async def test_tcp_slowloris_is_closed_after_the_frame_timeout(device: Device) -> None:
    server = await serving(device, "tcp", ConnectionLimits(frame_timeout=0.5))
    writers: list[asyncio.StreamWriter] = []
    try:
        silent = await open_tcp(server)
        partial = await open_tcp(server)
        writers += [silent[1], partial[1]]
        partial[1].write(GET_FIRMWARE[:5])  # a header, then silence
        assert await closed_by_server(silent[0])
        assert await closed_by_server(partial[0])
        # Each byte arrives well within the timeout, but the frame as a whole does not.
        dribble_reader, dribble = await open_tcp(server)
        writers.append(dribble)
        assert await answers_firmware(dribble_reader, dribble)
        with contextlib.suppress(ConnectionError):
            for byte in GET_FIRMWARE:
                dribble.write(bytes([byte]))
                await dribble.drain()
                await asyncio.sleep(0.15)
        assert await closed_by_server(dribble_reader)  # closed, never answered
    finally:
        close_all(writers)
        await server.close()


async def test_tcp_a_client_quiet_between_frames_is_kept_until_the_idle_timeout(device: Device) -> None:
    server = await serving(device, "tcp", ConnectionLimits(frame_timeout=0.3, idle_timeout=1.5))
    reader, writer = await open_tcp(server)
    try:
        assert await answers_firmware(reader, writer)
        await asyncio.sleep(0.6)  # longer than the frame timeout: not a slowloris, it sent nothing
        assert await answers_firmware(reader, writer)
        assert await closed_by_server(reader)  # then idle past 1.5 s
    finally:
        writer.close()
        await server.close()


async def test_ws_handshake_and_first_message_must_come_in_time(device: Device) -> None:
    server = await serving(device, "ws", ConnectionLimits(frame_timeout=0.5))
    writers: list[asyncio.StreamWriter] = []
    try:
        reader, writer = await open_tcp(server)
        writers.append(writer)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # and never the rest
        assert await closed_by_server(reader)
        async with await open_ws(server) as silent:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(silent.recv(), TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        close_all(writers)
        await server.close()


# ------------------------------------------------------------------------------------------ keep-alive


def _server_side_socket(local: tuple[str, int], peer: tuple[str, int]) -> socket.socket:
    """The emulator's end of a connection, found among this process's descriptors (Linux)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.getsockname()[:2] == local and sock.getpeername()[:2] == peer:
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError("server side of the connection not found")


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_accepted_connections_have_tcp_keepalive(device: Device, kind: str) -> None:
    server = await serving(device, kind, ConnectionLimits(keepalive=45))
    _, writer = await open_tcp(server)
    try:
        await asyncio.sleep(0.1)
        client = writer.get_extra_info("sockname")[:2]
        with _server_side_socket((HOST, server.address[1]), client) as accepted:
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 45
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        writer.close()
        await server.close()


def test_set_keepalive_zero_leaves_it_off() -> None:
    with socket.socket() as sock:
        set_keepalive(sock, 0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        set_keepalive(sock, 7)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7


# ----------------------------------------------------------------------------------------- file limit


def test_default_cap_is_lowered_to_fit_the_file_limit() -> None:
    limits, warning = fit_to_file_limit(ConnectionLimits(), faces=2, file_limit=1024)
    assert limits.max_connections == DEFAULT_MAX_CONNECTIONS and warning is None
    limits, warning = fit_to_file_limit(ConnectionLimits(), faces=2, file_limit=256)
    assert limits.max_connections == (256 - RESERVED_DESCRIPTORS) // 2 and warning is None
    limits, warning = fit_to_file_limit(ConnectionLimits(), faces=1, file_limit=None)
    assert limits.max_connections == DEFAULT_MAX_CONNECTIONS


def test_a_chosen_cap_is_kept_with_a_warning_when_the_file_limit_cannot_meet_it() -> None:
    chosen = ConnectionLimits(max_connections=2000)
    limits, warning = fit_to_file_limit(chosen, faces=2, file_limit=1024)
    assert limits.max_connections == 2000
    assert warning is not None and "file limit (1024)" in warning
    assert fit_to_file_limit(chosen, faces=1, file_limit=100_000) == (chosen, None)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_connections": 0},
        {"max_per_peer": 0},
        {"frame_timeout": 0},
        {"idle_timeout": -1},
        {"keepalive": -1},
    ],
)
def test_limits_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(**bad)  # type: ignore[arg-type]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_ipv6_loopback_is_served(device: Device, kind: str) -> None:
    start = start_tcp_server if kind == "tcp" else start_ws_server
    server = await start(device.face, "::1", 0)
    try:
        if kind == "tcp":
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("::1", server.address[1]), TIMEOUT
            )
            try:
                assert await answers_firmware(reader, writer)
            finally:
                writer.close()
        else:
            async with connect(f"ws://[::1]:{server.address[1]}", open_timeout=TIMEOUT) as conn:
                await conn.send(GET_FIRMWARE)
                assert await asyncio.wait_for(conn.recv(), TIMEOUT) == FIRMWARE_ANSWER
    finally:
        await server.close()
