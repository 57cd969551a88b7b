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
