"""The Tap face's transports on real sockets (127.0.0.1, port 0): TCP framing and WebSocket messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tap_support import ADMIN, GROUP, INTERFACE, Device, get, make_device, plain_login
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tap_emulator.codec.apdu import NFC_SELECT
from tap_emulator.faces.tap import TapServer, start_tcp_server, start_ws_server

HOST = "127.0.0.1"
TIMEOUT = 5.0
GET_FIRMWARE = bytes.fromhex("a2ca000007010003ffff0003")
FIRMWARE_ANSWER = bytes.fromhex("45312e3131382e309000")
CURRENT_GROUP = get(INTERFACE, None, 7)


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = make_device()
    yield dev
    dev.close()


@pytest.fixture
async def tcp(device: Device) -> AsyncIterator[TapServer]:
    server = await start_tcp_server(device.face, HOST, 0)
    yield server
    await server.close()


@pytest.fixture
async def ws(device: Device) -> AsyncIterator[TapServer]:
    server = await start_ws_server(device.face, HOST, 0)
    yield server
    await server.close()


async def open_tcp(server: TapServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, server.address[1]), TIMEOUT)


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One response: the emulator writes each in one piece, ending in 90 00."""
    data = b""
    while not (len(data) >= 3 and data.endswith(b"\x90\x00")) and data != b"\x90\x00":
        chunk = await asyncio.wait_for(reader.read(4096), TIMEOUT)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


async def test_tcp_answers_each_frame(tcp: TapServer) -> None:
    reader, writer = await open_tcp(tcp)
    try:
        writer.write(GET_FIRMWARE)
        assert await read_answer(reader) == FIRMWARE_ANSWER
        # A frame split across writes is reassembled; the SELECT's trailing 90 00 gets no second answer.
        writer.write(NFC_SELECT + b"\x90")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\x00" + GET_FIRMWARE[:3])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(GET_FIRMWARE[3:])
        assert await read_answer(reader) == b"\x90\x00"
        assert await read_answer(reader) == FIRMWARE_ANSWER
        # A frame whose content is wrong (INS and method disagree) is answered BAD_REQUEST.
        writer.write(bytes.fromhex("a2da000007010003ffff0003"))
        assert await read_answer(reader) == b"\x80\x90\x00"
    finally:
        writer.close()


async def test_tcp_two_frames_in_one_segment_get_two_answers_in_order(tcp: TapServer) -> None:
    reader, writer = await open_tcp(tcp)
    try:
        writer.write(GET_FIRMWARE + CURRENT_GROUP)
        expected = FIRMWARE_ANSWER + b"\x45\x00\x00\x90\x00"
        received = b""
        while len(received) < len(expected):
            received += await read_answer(reader)
        assert received == expected
    finally:
        writer.close()


async def test_tcp_lost_framing_closes_only_that_connection(tcp: TapServer) -> None:
    reader, writer = await open_tcp(tcp)
    other_reader, other_writer = await open_tcp(tcp)
    try:
        writer.write(b"\x13\x37garbage")
        assert await asyncio.wait_for(reader.read(100), TIMEOUT) == b""  # closed, nothing answered
        other_writer.write(GET_FIRMWARE)
        assert await read_answer(other_reader) == FIRMWARE_ANSWER
    finally:
        writer.close()
        other_writer.close()


async def test_each_connection_is_its_own_session(tcp: TapServer) -> None:
    reader_a, writer_a = await open_tcp(tcp)
    reader_b, writer_b = await open_tcp(tcp)
    try:
        writer_a.write(plain_login("admin", "admin"))
        assert await read_answer(reader_a) == b"\x44\x90\x00"
        writer_a.write(CURRENT_GROUP)
        assert await read_answer(reader_a) == b"\x45\xff\xff\x90\x00"
        writer_b.write(CURRENT_GROUP)
        assert await read_answer(reader_b) == b"\x45\x00\x00\x90\x00"
    finally:
        writer_a.close()
        writer_b.close()


async def test_closing_the_server_closes_its_connections(device: Device) -> None:
    server = await start_tcp_server(device.face, HOST, 0)
    reader, writer = await open_tcp(server)
    writer.write(GET_FIRMWARE)
    assert await read_answer(reader) == FIRMWARE_ANSWER
    await asyncio.wait_for(server.close(), TIMEOUT)
    assert await asyncio.wait_for(reader.read(100), TIMEOUT) == b""
    writer.close()


async def test_busy_port_is_a_clear_error(device: Device, tcp: TapServer) -> None:
    with pytest.raises(OSError, match=r"cannot listen for Tap TCP on 127\.0\.0\.1:\d+"):
        await start_tcp_server(device.face, HOST, tcp.address[1])
    ws_server = await start_ws_server(device.face, HOST, 0)
    try:
        with pytest.raises(OSError, match="cannot listen for Tap WebSocket"):
            await start_ws_server(device.face, HOST, ws_server.address[1])
    finally:
        await ws_server.close()


async def test_websocket_one_binary_message_per_frame(ws: TapServer) -> None:
    async with connect(f"ws://{HOST}:{ws.address[1]}/any/path", open_timeout=TIMEOUT) as conn:
        await conn.send(GET_FIRMWARE)
        assert await asyncio.wait_for(conn.recv(), TIMEOUT) == FIRMWARE_ANSWER
        await conn.send(plain_login("admin", "admin"))
        assert await asyncio.wait_for(conn.recv(), TIMEOUT) == b"\x44\x90\x00"
        await conn.send(get(GROUP, ADMIN, 0))
        assert await asyncio.wait_for(conn.recv(), TIMEOUT) == b"\x45admin\x90\x00"
        await conn.send(b"\xa2\xca\x00")  # truncated: BAD_REQUEST, connection kept
        assert await asyncio.wait_for(conn.recv(), TIMEOUT) == b"\x80\x90\x00"
        await conn.send(NFC_SELECT)
        assert await asyncio.wait_for(conn.recv(), TIMEOUT) == b"\x90\x00"


async def test_websocket_text_message_closes_with_1003(ws: TapServer) -> None:
    async with connect(f"ws://{HOST}:{ws.address[1]}", open_timeout=TIMEOUT) as conn:
        await conn.send("a2ca")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
