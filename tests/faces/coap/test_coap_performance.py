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
from tap_emulator.faces.coap.message_layer import _ABSENT, DEDUP_WINDOW, DuplicateCache
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
    """aiocoap's default task name formats the whole request (repr) on every request. (The fast path
    renders without a task until the rendering suspends, as this one does, and then in a task of the
    same fixed name.)"""
    names: list[str] = []
    original = server.face.respond

    async def recording_render(request: Any) -> Any:  # both paths render through respond
        await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None
        names.append(task.get_name())
        return await original(request)

    server.face.respond = recording_render  # type: ignore[method-assign]
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


# ---------------------------------------------------------------- duplicate detection


def test_a_duplicate_is_known_with_its_reply_for_the_whole_window() -> None:
    cache = DuplicateCache(window=60.0, capacity=1000)
    assert cache.lookup("peer", 7, now=0.0) is _ABSENT
    cache.add("peer", 7, now=0.0)
    assert cache.lookup("peer", 7, now=1.0) is None  # seen, reply not known yet
    assert cache.expects_reply("peer", 7)
    cache.set_reply("peer", 7, b"reply")
    assert not cache.expects_reply("peer", 7)
    for later in (10.0, 30.0, 59.9):
        cache.add("other", int(later), now=later)  # time passes with traffic
        assert cache.lookup("peer", 7, now=later) == b"reply"
    assert cache.lookup("peer", 8, now=59.9) is _ABSENT
    assert cache.lookup("another peer", 7, now=59.9) is _ABSENT


def test_seen_is_lookup_then_add_and_a_reply_goes_only_to_a_pending_entry() -> None:
    cache = DuplicateCache(window=60.0, capacity=1000)
    assert cache.seen("peer", 7, now=0.0) is _ABSENT  # new: remembered
    assert cache.seen("peer", 7, now=1.0) is None  # seen, no reply yet
    cache.reply_to_pending("peer", 7, b"reply")
    cache.reply_to_pending("peer", 7, b"another")  # the first reply stays
    cache.reply_to_pending("peer", 8, b"unknown")  # never seen: nothing stored
    assert cache.seen("peer", 7, now=30.0) == b"reply"
    assert cache.lookup("peer", 8, now=30.0) is _ABSENT
    assert len(cache) == 1
    assert cache.seen("peer", 7, now=75.0) is _ABSENT  # expired: new again
    for mid in range(300):
        cache.seen("burst", mid, now=76.0)
    small = DuplicateCache(window=60.0, capacity=100)
    for mid in range(1000):
        small.seen("peer", mid, now=mid / 1000)
        assert len(small) <= 100


def test_entries_are_dropped_after_the_window_and_a_quarter() -> None:
    cache = DuplicateCache(window=60.0, capacity=1000)
    cache.add("peer", 1, now=0.0)
    assert cache.lookup("peer", 1, now=74.9) is None
    assert cache.lookup("peer", 1, now=75.0) is _ABSENT
    assert len(cache) == 0


def test_the_cache_never_holds_more_than_its_capacity() -> None:
    cache = DuplicateCache(window=60.0, capacity=100)
    for mid in range(1000):
        cache.add("peer", mid, now=mid / 1000)  # a burst far above capacity within one second
        assert len(cache) <= 100
    assert cache.lookup("peer", 999, now=1.0) is None  # the newest are kept
    assert cache.lookup("peer", 0, now=1.0) is _ABSENT


def test_the_window_covers_every_retransmission_of_default_parameters() -> None:
    # The last retransmission of a CON leaves at most MAX_TRANSMIT_SPAN (45 s) after the first.
    assert DEDUP_WINDOW >= 45.0


async def test_a_duplicate_con_is_answered_with_the_same_reply_and_processed_once(
    server: CoapServer, client: Any
) -> None:
    changes: list[object] = []
    unsubscribe = server.face.tree.subscribe(changes.append)
    try:
        put = rawcoap.encode(
            rawcoap.CON,
            rawcoap.PUT,
            0x4242,
            b"dup",
            [(rawcoap.URI_PATH, b"1025"), (rawcoap.URI_PATH, b"65534"), (rawcoap.URI_PATH, b"0")],
            b"renamed",
        )
        client.send(put)
        first = await client.receive()
        client.send(put)  # a retransmission: same source, same message id
        second = await client.receive()
        assert first.code == second.code == 0x44
        assert (first.mtype, first.mid, first.token) == (second.mtype, second.mid, second.token)
        assert len(changes) == 1
        assert sum(len(cache) for cache in server.duplicate_caches) == 1
        # The same message id from another source port is a new request.
        other = await rawcoap.RawClient.open(server.address[1])
        try:
            other.send(put)
            assert (await other.receive()).code == 0x44
        finally:
            other.close()
        assert len(changes) == 2
    finally:
        unsubscribe()


async def test_aiocoap_keeps_no_message_of_its_own(server: CoapServer, client: Any) -> None:
    for mid in range(20):
        client.send(rawcoap.request(rawcoap.GET, "/1025/0/0", mid, b"t%d" % mid))
        assert (await client.receive()).payload == b"anonymous"
    manager = server.context.request_interfaces[0].token_interface
    assert manager._recent_messages == {}
    assert sum(len(cache) for cache in server.duplicate_caches) == 20
