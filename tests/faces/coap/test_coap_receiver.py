"""Batched reading of a UDP transport (``faces.coap.receiver``): every datagram waiting, in order, at most
a batch per wake-up, socket errors to the protocol, nothing once the transport closes; and the CoAP
server reads its ``simplesocketserver`` transport that way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.faces.coap.receiver import drain_datagrams
from tap_emulator.faces.coap.server import start_coap_server

pytestmark = pytest.mark.timeout(30)


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.errors: list[OSError] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.datagrams.append(data)

    def error_received(self, exc: Exception) -> None:
        assert isinstance(exc, OSError)
        self.errors.append(exc)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[asyncio.DatagramTransport, Recorder]]:
    loop = asyncio.get_running_loop()
    transport, recorder = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    await asyncio.sleep(0)  # asyncio starts reading one loop turn after connection_made
    try:
        yield transport, recorder
    finally:
        transport.close()


async def _queued(port: int, count: int) -> list[bytes]:
    """``count`` datagrams sent to ``port`` and waiting in its socket before the loop runs again."""
    sent = [f"datagram {i}".encode() for i in range(count)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for data in sent:
            sender.sendto(data, ("127.0.0.1", port))
    return sent


async def test_waiting_datagrams_are_read_a_batch_at_a_time_in_order(
    endpoint: tuple[asyncio.DatagramTransport, Recorder],
) -> None:
    transport, recorder = endpoint
    read_ready = drain_datagrams(transport, batch=4)
    assert read_ready is not None
    sent = await _queued(transport.get_extra_info("sockname")[1], 10)
    read_ready()
    assert recorder.datagrams == sent[:4]  # one wake-up reads at most a batch
    read_ready()
    assert recorder.datagrams == sent[:8]
    read_ready()
    read_ready()  # nothing left: returns at once
    assert recorder.datagrams == sent
    more = await _queued(transport.get_extra_info("sockname")[1], 3)
    async with asyncio.timeout(5):  # and the event loop calls it when the socket is readable
        while len(recorder.datagrams) < 13:
            await asyncio.sleep(0.01)
    assert recorder.datagrams == sent + more


async def test_a_socket_error_goes_to_the_protocol_and_reading_goes_on() -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]
    # A connected UDP socket hears the ICMP "port unreachable" of what it sends as ECONNREFUSED.
    transport, recorder = await loop.create_datagram_endpoint(Recorder, remote_addr=("127.0.0.1", nobody))
    try:
        await asyncio.sleep(0)
        assert drain_datagrams(transport) is not None
        transport.sendto(b"to nobody")
        async with asyncio.timeout(5):
            while not recorder.errors:
                await asyncio.sleep(0.01)
        assert isinstance(recorder.errors[0], ConnectionRefusedError)
        assert not transport.is_closing()
    finally:
        transport.close()


async def test_nothing_is_read_once_the_transport_closes(
    endpoint: tuple[asyncio.DatagramTransport, Recorder],
) -> None:
    transport, recorder = endpoint
    read_ready = drain_datagrams(transport)
    assert read_ready is not None
    port = transport.get_extra_info("sockname")[1]
    await _queued(port, 2)
    transport.close()
    read_ready()
    await asyncio.sleep(0.05)
    assert recorder.datagrams == []


async def test_a_transport_it_cannot_read_is_left_alone(
    endpoint: tuple[asyncio.DatagramTransport, Recorder],
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    try:
        _, stream = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        assert drain_datagrams(stream.transport) is None  # a stream, not datagrams
        stream.close()
    finally:
        server.close()
    transport, _ = endpoint
    transport.close()
    await asyncio.sleep(0)
    assert drain_datagrams(transport) is None  # closed


async def test_the_coap_server_reads_its_socket_in_batches() -> None:
    tree = open_device(load_profile("default"), ":memory:")
    server = await start_coap_server(tree, "127.0.0.1", 0)
    try:
        message_interface = server.context.request_interfaces[0].token_interface.message_interface
        transport = message_interface._pool._transport
        fileno = transport.get_extra_info("socket").fileno()
        reader = asyncio.get_running_loop()._selector.get_key(fileno).data[0]  # type: ignore[attr-defined]
        assert reader._callback.__qualname__ == "drain_datagrams.<locals>.read_ready"
    finally:
        await server.close()
        tree.state.close()
