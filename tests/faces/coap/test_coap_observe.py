"""Observe (RFC 7641): observers of a resource, an instance and the object hear changes made elsewhere,
and notifications go out NON with every ``con_every``-th one CON (checked on the wire with a raw client).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import cbor2
import pytest
from rawcoap import ACK, CON, GET, NON, OBSERVE, RawClient, encode, request

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.faces.coap import start_coap_server
from tap_emulator.model import Operation
from tap_emulator.tree import MAINTENANCE, Request

TIMEOUT = 5.0


class Observer:
    """An aiocoap observation whose notifications are collected in a queue."""

    def __init__(self, context: Any, uri: str, accept: int | None = None) -> None:
        message = aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0)
        if accept is not None:
            message.opt.accept = accept
        self.request = context.request(message)
        self.updates: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for response in self.request.observation:
            self.updates.put_nowait(response)

    async def first(self) -> Any:
        return await asyncio.wait_for(self.request.response, TIMEOUT)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.updates.get(), TIMEOUT)

    def cancel(self) -> None:
        self.request.observation.cancel()
        self._task.cancel()


@pytest.fixture
async def other_client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


async def test_resource_instance_and_object_observers_hear_another_clients_change(
    coap: Any, other_client: Any
) -> None:
    base = f"coap://127.0.0.1:{coap.port}"
    observers = {
        "resource": Observer(coap.context, f"{base}/1025/65534/0"),
        "alias": Observer(coap.context, f"{base}/group/65534/name"),
        "instance": Observer(coap.context, f"{base}/1025/65534"),
        "object": Observer(coap.context, f"{base}/1025", accept=112),
        "unrelated": Observer(coap.context, f"{base}/1025/65535/0"),
    }
    try:
        assert (await observers["resource"].first()).payload == b"supervisor"
        for observer in observers.values():
            await observer.first()
        changed = await other_client.request(
            aiocoap.Message(code=aiocoap.PUT, uri=f"{base}/1025/65534/0", payload=b"renamed")
        ).response
        assert str(changed.code) == str(aiocoap.CHANGED)
        assert (await observers["resource"].next()).payload == b"renamed"
        assert (await observers["alias"].next()).payload == b"renamed"
        instance = await observers["instance"].next()
        assert b'"vs":"renamed"' in instance.payload
        records = cbor2.loads((await observers["object"].next()).payload)
        assert any(r.get(0) == "65534/0" and r.get(3) == "renamed" for r in records)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(observers["unrelated"].updates.get(), 0.3)
    finally:
        for observer in observers.values():
            observer.cancel()


async def test_a_change_through_the_tree_notifies_coap_observers(coap: Any, emulator: Any) -> None:
    """Another face (the Tap face, the CLI) writes through the tree; the CoAP observer hears it."""
    observer = Observer(coap.context, f"coap://127.0.0.1:{coap.port}/1025/65535/4")
    try:
        assert (await observer.first()).payload == b"300"
        response = await emulator.tree.handle(
            Request(Operation.WRITE, 1025, 65535, 4, 61, caller=MAINTENANCE)
        )
        assert response.status.is_success
        assert (await observer.next()).payload == b"61"
    finally:
        observer.cancel()


async def test_observing_a_created_group_sees_its_creation(coap: Any) -> None:
    observer = Observer(coap.context, f"coap://127.0.0.1:{coap.port}/1025")
    try:
        await observer.first()
        assert str((await coap.request("POST", "/1025/77/65535")).code) == str(aiocoap.CREATED)
        assert b'"77/0"' in (await observer.next()).payload
    finally:
        observer.cancel()


async def test_notifications_are_non_with_a_periodic_con() -> None:
    tree = open_device(
        load_profile(), ":memory:", random_bytes=os.urandom, clock_ms=lambda: time.time_ns() // 10**6
    )
    server = await start_coap_server(tree, "127.0.0.1", 0, con_every=3)
    raw = await RawClient.open(server.address[1])
    try:
        raw.send(request(GET, "/1025/0/0", 0x100, b"\x0b", observe=True))
        registered = await raw.receive()
        assert (registered.mtype, registered.dotted_code, registered.token) == (ACK, "2.05", b"\x0b")
        assert registered.option(OBSERVE) is not None
        types = []
        for index in range(7):
            response = await tree.handle(
                Request(Operation.WRITE, 1025, 0, 0, f"n{index}", caller=MAINTENANCE)
            )
            assert response.status.is_success
            note = await raw.receive()
            assert (note.dotted_code, note.token, note.payload) == ("2.05", b"\x0b", f"n{index}".encode())
            assert note.option(OBSERVE) is not None
            types.append(note.mtype)
            if note.mtype == CON:
                raw.send(encode(ACK, 0, note.mid))
        assert types == [NON, NON, CON, NON, NON, CON, NON]
        assert server.face.observation_count == 1
    finally:
        raw.close()
        await server.close()
        tree.state.close()
