"""What a CoAP peer can make the server hold is bounded (issue 9, defect 6): request bodies by the model
(4.13 with Size1, from the first block), block-wise state by count and bytes, observers per peer and in
total, and an observer that stops acknowledging is dropped within seconds.

In-process servers on 127.0.0.1 (port 0) with small ``CoapLimits`` where a test counts entries; the
flood test runs a ``tap-emulator serve`` subprocess and reads its resident memory from /proc.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from rawcoap import ACK, CON, GET, NON, OBSERVE, POST, PUT, RST, URI_PATH, RawClient, encode

from bench.coap_floods import block1_flood
from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.faces.coap import CoapLimits, start_coap_server
from tap_emulator.faces.coap.server import CoapServer
from tap_emulator.model import Operation
from tap_emulator.tree import MAINTENANCE, DeviceTree, Request

URI_QUERY, BLOCK2, BLOCK1, SIZE1 = 15, 23, 27, 60
NAME_CAP = 25  # a 16-character name: 16 bytes + a CBOR head of up to 9 (codec.values.max_body_size)
_mids = itertools.count(0x3000)


def path(p: str) -> list[tuple[int, bytes]]:
    return [(URI_PATH, segment.encode()) for segment in p.strip("/").split("/")]


def block1(number: int, more: bool, szx: int = 0) -> tuple[int, bytes]:
    value = number << 4 | (8 if more else 0) | szx
    return BLOCK1, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


Serve = Callable[..., Awaitable[CoapServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start in-process servers over one in-memory device; all are stopped at the end."""
    tree = open_device(
        load_profile(), ":memory:", random_bytes=os.urandom, clock_ms=lambda: time.time_ns() // 10**6
    )
    servers: list[CoapServer] = []

    async def start(**kwargs: Any) -> CoapServer:
        server = await start_coap_server(tree, "127.0.0.1", 0, **kwargs)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()
        tree.state.close()


def tree_of(server: CoapServer) -> DeviceTree:
    return server.face.tree


@pytest.fixture
async def raw_for() -> AsyncIterator[Callable[[CoapServer], Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def open_for(server: CoapServer) -> RawClient:
        client = await RawClient.open(server.address[1])
        clients.append(client)
        return client

    try:
        yield open_for
    finally:
        for client in clients:
            client.close()


# ----------------------------------------------------------------------------------- body caps


async def test_a_block1_body_larger_than_the_field_is_refused_at_the_block_that_crosses_the_cap(
    serve: Serve, raw_for: Any
) -> None:
    server = await serve()
    raw = await raw_for(server)
    first = encode(CON, PUT, next(_mids), b"\x01", [*path("/1025/0/0"), block1(0, True)], b"a" * 16)
    raw.send(first)
    assert (await raw.receive()).dotted_code == "2.31"
    second = encode(CON, PUT, next(_mids), b"\x01", [*path("/1025/0/0"), block1(1, True)], b"b" * 16)
    raw.send(second)
    refused = await raw.receive()
    assert refused.dotted_code == "4.13"
    assert int.from_bytes(refused.option(SIZE1) or b"", "big") == NAME_CAP
    assert (
        await tree_of(server).handle(Request(Operation.READ, 1025, 0, 0, caller=MAINTENANCE))
    ).value == "anonymous"


async def test_a_block1_block_out_of_sequence_is_4_08_not_a_traceback(
    serve: Serve, raw_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Block 0, then block 2 (a gap) of a 40-byte key (within its 84-byte cap): RFC 7959 2.3's 4.08
    (aiocoap alone raises a bare ValueError there, logged as a traceback)."""
    server = await serve()
    raw = await raw_for(server)
    token, key = b"\x03", path("/group/0/password-key")
    raw.send(encode(CON, POST, next(_mids), token, [*key, block1(0, True)], b"k" * 16))
    assert (await raw.receive()).dotted_code == "2.31"
    raw.send(encode(CON, POST, next(_mids), token, [*key, block1(2, False)], b"k" * 8))
    assert (await raw.receive()).dotted_code == "4.08"
    assert "Traceback" not in caplog.text and "ValueError" not in caplog.text


async def test_a_declared_size1_over_the_cap_is_refused_before_any_block_is_kept(
    serve: Serve, raw_for: Any
) -> None:
    server = await serve()
    raw = await raw_for(server)
    size1 = (SIZE1, (1 << 20).to_bytes(3, "big"))
    raw.send(
        encode(CON, PUT, next(_mids), b"\x02", [*path("/group/0/name"), block1(0, True), size1], b"a" * 16)
    )
    refused = await raw.receive()
    assert (refused.dotted_code, int.from_bytes(refused.option(SIZE1) or b"", "big")) == ("4.13", NAME_CAP)
    assert server.face.held()["block1"] == 0


async def test_bodies_within_the_model_limits_still_arrive_block_wise(serve: Serve, raw_for: Any) -> None:
    """A 40-byte SCRAM key in 16-byte blocks (cap 84: hex text of 40 bytes) and a 16-character name."""
    server = await serve()
    raw = await raw_for(server)
    key = bytes(range(32)) + b"\x01\x02\x03\x04" + (50).to_bytes(4, "big")
    chunks = [key[i : i + 16] for i in range(0, len(key), 16)]
    for number, chunk in enumerate(chunks):
        more = number < len(chunks) - 1
        options = [*path("/group/65534/password-key"), block1(number, more)]
        raw.send(encode(CON, POST, next(_mids), b"\x03", options, chunk))
        assert (await raw.receive()).dotted_code == ("2.31" if more else "2.04")
    raw.send(encode(CON, PUT, next(_mids), b"\x04", path("/1025/65534/0"), b"x" * 16))
    assert (await raw.receive()).dotted_code == "2.04"
    raw.send(encode(CON, PUT, next(_mids), b"\x05", path("/1025/65534/0"), b"x" * 17))
    assert (await raw.receive()).dotted_code == "4.00"  # within the cap: the model's own refusal
    raw.send(encode(CON, PUT, next(_mids), b"\x06", path("/1025/65534/0"), b"x" * 200))
    assert (await raw.receive()).dotted_code == "4.13"


async def test_a_body_where_the_method_takes_none_gets_the_methods_answer_at_once(
    serve: Serve, raw_for: Any
) -> None:
    server = await serve()
    raw = await raw_for(server)
    raw.send(
        encode(CON, PUT, next(_mids), b"\x07", [*path("/1025/65535/65535"), block1(0, True, 6)], bytes(1024))
    )
    assert (await raw.receive()).dotted_code == "4.05"
    assert server.face.held()["block1"] == 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(90)
def test_a_block1_flood_leaves_the_server_memory_flat(spawn_server: Any) -> None:
    """16 MB of 1 KB blocks over 4 transfers to a 16-character field: before the cap, the server
    assembled all of it (+25 MB here); now every block is refused and the memory stays flat."""
    server = spawn_server()
    time.sleep(0.3)
    idle = _rss_mb(server.process.pid)
    result = block1_flood(("127.0.0.1", server.port), 16 << 20, transfers=4)
    grown = _rss_mb(server.process.pid) - idle
    assert result.codes["4.13"] > 0.9 * result.blocks, result.codes
    assert "2.31" not in result.codes
    assert grown < 8, f"RSS grew {grown:.1f} MB during a block1 flood"
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


# ----------------------------------------------------------------------------------- block-wise stores


async def test_block1_assemblies_are_bounded_in_number(serve: Serve, raw_for: Any) -> None:
    server = await serve(limits=CoapLimits(block1_assemblies=4))
    raw = await raw_for(server)
    for index in range(12):  # twelve transfers, told apart by their query
        options = [*path("/1025/0/0"), (URI_QUERY, f"t={index}".encode()), block1(0, True)]
        raw.send(encode(CON, PUT, next(_mids), bytes([index]), options, b"a" * 16))
        assert (await raw.receive()).dotted_code == "2.31"
    assert server.face.held()["block1"] == 4
    # The newest transfers are still assembled (17 characters reach the tree: its 4.00); the oldest
    # were dropped, and their next block is 4.08 Request Entity Incomplete.
    newest = [*path("/1025/0/0"), (URI_QUERY, b"t=11"), block1(1, False)]
    raw.send(encode(CON, PUT, next(_mids), b"\x20", newest, b"b"))
    assembled = await raw.receive()
    assert assembled.dotted_code == "4.00" and b"not 17" in assembled.payload
    oldest = [*path("/1025/0/0"), (URI_QUERY, b"t=0"), block1(1, False)]
    raw.send(encode(CON, PUT, next(_mids), b"\x21", oldest, b"b"))
    assert (await raw.receive()).dotted_code == "4.08"


async def test_the_block2_store_is_bounded_with_distinct_queries(serve: Serve, raw_for: Any) -> None:
    server = await serve(limits=CoapLimits(block2_responses=3))
    tree = tree_of(server)
    for group in range(1, 40):
        assert (
            await tree.handle(Request(Operation.EXECUTE, 1025, group, 65535, caller=MAINTENANCE))
        ).status.is_success
    raw = await raw_for(server)
    for index in range(10):
        options = [*path("/1025"), (URI_QUERY, f"q={index}".encode()), (BLOCK2, bytes([0x00]))]  # 16 B blocks
        raw.send(encode(CON, GET, next(_mids), bytes([index]), options))
        reply = await raw.receive()
        assert reply.dotted_code == "2.05" and reply.option(BLOCK2) is not None
    held = server.face.held()
    assert held["block2"] == 3
    assert 0 < held["block2_bytes"] <= 3 * 16 * 1024


async def test_the_block2_store_keeps_at_most_its_byte_budget(serve: Serve, raw_for: Any) -> None:
    server = await serve(limits=CoapLimits(block2_bytes=4000))
    tree = tree_of(server)
    for group in range(1, 40):
        assert (
            await tree.handle(Request(Operation.EXECUTE, 1025, group, 65535, caller=MAINTENANCE))
        ).status.is_success
    raw = await raw_for(server)
    for index in range(10):
        options = [*path("/1025"), (URI_QUERY, f"q={index}".encode()), (BLOCK2, bytes([0x02]))]
        raw.send(encode(CON, GET, next(_mids), bytes([index]), options))
        assert (await raw.receive()).dotted_code == "2.05"
        assert server.face.held()["block2_bytes"] <= 4000


# ----------------------------------------------------------------------------------- observers


async def register(raw: RawClient, token: bytes, p: str = "/1025/0/0") -> bool:
    """Register an observation; True if the server accepted it (its answer carries Observe)."""
    raw.send(encode(CON, GET, next(_mids), token, [(OBSERVE, b""), *path(p)]))
    reply = await raw.receive()
    assert (reply.dotted_code, reply.token) == ("2.05", token)
    return reply.option(OBSERVE) is not None


async def test_observers_past_the_caps_are_answered_without_registering(serve: Serve, raw_for: Any) -> None:
    server = await serve(limits=CoapLimits(max_observers=6, max_observers_per_peer=4))
    first, second = await raw_for(server), await raw_for(server)
    assert [await register(first, bytes([1, i])) for i in range(5)] == [True] * 4 + [False]
    assert [await register(second, bytes([2, i])) for i in range(3)] == [True, True, False]
    assert server.face.observation_count == 6
    response = await tree_of(server).handle(
        Request(Operation.WRITE, 1025, 0, 0, "changed", caller=MAINTENANCE)
    )
    assert response.status.is_success
    heard = [(await client.receive()).token for client in (first,) * 4 + (second,) * 2]
    assert sorted(heard) == sorted([bytes([1, i]) for i in range(4)] + [bytes([2, i]) for i in range(2)])
    with pytest.raises(asyncio.TimeoutError):
        await first.receive(timeout=0.3)


async def test_observers_that_never_acknowledge_are_dropped_within_seconds(
    serve: Serve, raw_for: Any
) -> None:
    """200 observers on 4 silent endpoints and one aiocoap observer that acknowledges. With aiocoap's
    request retransmission (MAX_TRANSMIT_WAIT, 93 s) the silent ones stayed for up to 93 s."""
    server = await serve(con_every=1)
    silent = [await raw_for(server) for _ in range(4)]
    for index, client in enumerate(silent):
        for serial in range(50):
            assert await register(client, bytes([index, serial]))
    context = await aiocoap.Context.create_client_context()
    try:
        live = context.request(
            aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{server.address[1]}/1025/0/0", observe=0)
        )
        heard: asyncio.Queue[bytes] = asyncio.Queue()

        async def collect() -> None:
            async for message in live.observation:
                heard.put_nowait(message.payload)

        collector = asyncio.get_running_loop().create_task(collect())
        await asyncio.wait_for(live.response, 5)
        assert server.face.observation_count == 201
        response = await tree_of(server).handle(
            Request(Operation.WRITE, 1025, 0, 0, "ping", caller=MAINTENANCE)
        )
        assert response.status.is_success
        assert await asyncio.wait_for(heard.get(), 5) == b"ping"
        started = time.monotonic()
        while server.face.observation_count > 1:
            assert time.monotonic() - started < 20, server.face.observation_count
            await asyncio.sleep(0.25)
        # The observer that acknowledged is still there and still hears changes.
        response = await tree_of(server).handle(
            Request(Operation.WRITE, 1025, 0, 0, "pong", caller=MAINTENANCE)
        )
        assert response.status.is_success
        assert await asyncio.wait_for(heard.get(), 5) == b"pong"
        live.observation.cancel()
        collector.cancel()
    finally:
        await context.shutdown()


async def test_one_rendering_serves_every_observer_of_a_shape(serve: Serve, raw_for: Any) -> None:
    server = await serve()
    raw = await raw_for(server)
    for serial in range(20):
        assert await register(raw, bytes([serial]))
    renders = 0
    render = server.face._render

    async def counting(request: aiocoap.Message) -> aiocoap.Message:
        nonlocal renders
        renders += 1
        return await render(request)

    server.face._render = counting  # type: ignore[method-assign]
    assert (
        await tree_of(server).handle(Request(Operation.WRITE, 1025, 0, 0, "x", caller=MAINTENANCE))
    ).status.is_success
    notes = [await raw.receive() for _ in range(20)]
    assert sorted(n.token for n in notes) == [bytes([s]) for s in range(20)]
    assert {n.payload for n in notes} == {b"x"}
    assert renders == 1
    for note in notes:
        if note.mtype == CON:
            raw.send(encode(ACK, 0, note.mid))


def test_the_bounded_map_expires_evicts_and_keeps_its_byte_budget() -> None:
    from tap_emulator.faces.coap.limits import BoundedExpiringMap

    now = [0.0]
    store: BoundedExpiringMap[str, bytes] = BoundedExpiringMap(
        10.0, 3, lambda: now[0], max_bytes=100, size=len
    )
    for key in "abc":
        store[key] = b"x" * 10
    assert store["a"] == b"x" * 10  # a read refreshes: "b" is now the least recently used
    store["d"] = b"y"
    assert len(store) == 3
    with pytest.raises(KeyError):
        store["b"]
    store["e"] = b"z" * 95  # over the byte budget: the oldest go until it fits
    assert store.bytes <= 100 and store["e"] == b"z" * 95
    store["huge"] = b"h" * 101  # larger than the whole budget: not kept
    with pytest.raises(KeyError):
        store["huge"]
    now[0] = 10.5  # "e" was last touched at 0: expired
    with pytest.raises(KeyError):
        store["e"]
    assert len(store) == 0 and store.bytes == 0


async def test_an_rst_to_a_non_notification_ends_the_observation(serve: Serve, raw_for: Any) -> None:
    """RFC 7641 section 3.6: a client rejects a notification it no longer wants with an RST."""
    server = await serve()
    raw = await raw_for(server)
    assert await register(raw, b"\x31")
    assert await register(raw, b"\x32", "/1025/0/4")
    write = Request(Operation.WRITE, 1025, 0, 0, "first", caller=MAINTENANCE)
    assert (await tree_of(server).handle(write)).status.is_success
    note = await raw.receive()
    assert (note.mtype, note.token) == (NON, b"\x31")
    raw.send(encode(RST, 0, note.mid))
    started = time.monotonic()
    while server.face.observation_count != 1:
        assert time.monotonic() - started < 5, server.face.observation_count
        await asyncio.sleep(0.05)
    write = Request(Operation.WRITE, 1025, 0, 0, "second", caller=MAINTENANCE)
    assert (await tree_of(server).handle(write)).status.is_success
    with pytest.raises(asyncio.TimeoutError):
        await raw.receive(timeout=0.3)
    lifetime = Request(Operation.WRITE, 1025, 0, 4, 61, caller=MAINTENANCE)
    assert (await tree_of(server).handle(lifetime)).status.is_success
    assert (await raw.receive()).token == b"\x32"  # the other observation of that client goes on


async def test_declined_observations_leave_no_failed_task(serve: Serve, raw_for: Any) -> None:
    """Past a cap, on a resource that is not readable, on no resource, or with another method than
    GET, an Observe request is answered once; before, each left a task failing with an AttributeError
    inside aiocoap (a traceback in the log), found by the option fuzzing."""
    import gc

    loop = asyncio.get_running_loop()
    failures: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    try:
        server = await serve(limits=CoapLimits(max_observers_per_peer=1))
        raw = await raw_for(server)
        assert await register(raw, b"\x41")
        assert not await register(raw, b"\x42")
        for code, p, expected in [
            (GET, "/1025/65535/2", "4.05"),
            (GET, "/nowhere", "4.04"),
            (PUT, "/1025/0/0", "2.04"),
        ]:
            raw.send(encode(CON, code, next(_mids), b"\x43", [(OBSERVE, b""), *path(p)]))
            reply = await raw.response()  # the PUT is a durable write: a separate response when slow
            assert (reply.dotted_code, reply.option(OBSERVE)) == (expected, None), p
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0)
        assert failures == []
        assert server.face.observation_count == 1
    finally:
        loop.set_exception_handler(None)
