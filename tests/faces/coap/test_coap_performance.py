"""The CoAP face's performance choices keep behaving: fixed task names, transport, duplicate detection.

The figures themselves are measured by ``python -m bench``; these tests pin the behaviour each
optimisation must keep (and would fail without the optimisation).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import rawcoap

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.faces.coap.server import RENDER_TASK_NAME, CoapServer, start_coap_server


@pytest.fixture
async def server() -> AsyncIterator[CoapServer]:
    tree = open_device(load_profile("default"), ":memory:")
    coap = await start_coap_server(tree, "127.0.0.1", 0)
    try:
        yield coap
    finally:
        await coap.close()
        tree.state.close()


@pytest.fixture
async def client(server: CoapServer) -> AsyncIterator[rawcoap.RawClient]:
    raw = await rawcoap.RawClient.open(server.address[1])
    try:
        yield raw
    finally:
        raw.close()


async def test_requests_render_in_tasks_with_a_fixed_name(server: CoapServer, client: Any) -> None:
    """aiocoap's default task name formats the whole request (repr) on every request."""
    names: list[str] = []
    original = server.face.render

    async def recording_render(request: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        names.append(task.get_name())
        return await original(request)

    server.face.render = recording_render  # type: ignore[method-assign]
    client.send(rawcoap.request(rawcoap.GET, "/1025/0/0", 0x1234, b"tk"))
    reply = await client.receive()
    assert reply.code == 0x45 and reply.payload == b"anonymous"
    assert names == [RENDER_TASK_NAME]


def _transport_name(server: CoapServer) -> str:
    interface = server.context.request_interfaces[0].token_interface.message_interface
    return type(interface).__module__.rsplit(".", 1)[-1]


async def test_a_concrete_address_is_served_by_the_simple_socket_transport(server: CoapServer) -> None:
    assert _transport_name(server) == "simplesocketserver"


async def test_a_wildcard_address_keeps_udp6_and_answers_ipv4() -> None:
    tree = open_device(load_profile("default"), ":memory:")
    coap = await start_coap_server(tree, "::", 0)
    raw = await rawcoap.RawClient.open(coap.address[1])
    try:
        assert _transport_name(coap) == "udp6"
        raw.send(rawcoap.request(rawcoap.GET, "/1025/0/0", 7, b"w"))
        reply = await raw.receive()
        assert reply.code == 0x45 and reply.payload == b"anonymous"
    finally:
        raw.close()
        await coap.close()
        tree.state.close()


async def test_a_busy_port_is_an_error_with_the_simple_socket_transport(server: CoapServer) -> None:
    tree = open_device(load_profile("default"), ":memory:")
    try:
        with pytest.raises(OSError, match=r"cannot listen for CoAP on 127\.0\.0\.1"):
            await start_coap_server(tree, "127.0.0.1", server.address[1])
    finally:
        tree.state.close()
