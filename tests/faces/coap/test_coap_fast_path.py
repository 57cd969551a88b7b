"""The fast path: which requests it serves, that it answers as aiocoap does, and what it shares with it.

The rest of the CoAP suite runs with the fast path on and off (``conftest.py``); these tests pin what is
particular to it: plain requests are served before aiocoap and everything else is handed over, the
duplicate cache is shared, a slow answer gets aiocoap's empty ACK and separate CON response, a write
is committed before its ACK leaves, and random valid requests get the same bytes from both paths.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import rawcoap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tap_emulator.app import open_device
from tap_emulator.codec.coap import ACK, CON, NON, RST, CoapMessage, decode, encode, uint_bytes
from tap_emulator.config import load_profile
from tap_emulator.faces.coap.fast_path import FAST_PATH_ENV, fast_path_default
from tap_emulator.faces.coap.server import CoapServer, start_coap_server
from tap_emulator.tree import DeviceTree

URI_PATH, CONTENT_FORMAT, ACCEPT, IF_MATCH, OBSERVE, BLOCK2, NO_RESPONSE = 11, 12, 17, 1, 6, 23, 258
GET, POST, PUT, DELETE = 1, 2, 3, 4


def path_options(path: str) -> list[tuple[int, bytes]]:
    return [(URI_PATH, segment.encode()) for segment in path.strip("/").split("/")]


class Served:
    def __init__(self, server: CoapServer) -> None:
        self.server = server
        self.fast_path = server.fast_paths[0]

    @property
    def counts(self) -> tuple[int, int]:
        return self.fast_path.served, self.fast_path.handed_over


@pytest.fixture
async def fast() -> AsyncIterator[Served]:
    tree = open_device(load_profile("default"), ":memory:")
    server = await start_coap_server(tree, "127.0.0.1", 0, fast_path=True)
    try:
        yield Served(server)
    finally:
        await server.close()
        tree.state.close()


@pytest.fixture
async def client(fast: Served) -> AsyncIterator[rawcoap.RawClient]:
    raw = await rawcoap.RawClient.open(fast.server.address[1])
    try:
        yield raw
    finally:
        raw.close()


def test_the_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAST_PATH_ENV, raising=False)
    assert fast_path_default()
    monkeypatch.setenv(FAST_PATH_ENV, "off")
    assert not fast_path_default()
    monkeypatch.setenv(FAST_PATH_ENV, "on")
    assert fast_path_default()


async def test_plain_requests_are_served_and_the_rest_handed_to_aiocoap(fast: Served, client: Any) -> None:
    client.send(encode(CoapMessage(CON, GET, 1, b"a", tuple(path_options("/1025/0/0")))))
    reply = await client.receive()
    assert (reply.mtype, reply.code, reply.payload) == (ACK, 0x45, b"anonymous")
    assert fast.counts == (1, 0)
    handed = [
        [*path_options("/1025/0/0"), (OBSERVE, b"")],  # an observation
        [*path_options("/1025/0/0"), (BLOCK2, b"\x02")],  # block-wise
        [(IF_MATCH, b"x"), *path_options("/1025/0/0")],  # a condition
        [*path_options("/1025/0/0"), (NO_RESPONSE, b"\x02")],  # an option it does not serve
        path_options("/.well-known/core"),  # discovery
        path_options("/1025/0/99"),  # a path the model does not resolve
        path_options("/nothing"),
    ]
    for mid, options in enumerate(handed, 2):
        client.send(encode(CoapMessage(CON, GET, mid, b"b", tuple(options))))
        await client.receive()
    assert fast.counts == (1, len(handed))


async def test_a_step_aside_predicate_hands_everything_to_aiocoap(fast: Served, client: Any) -> None:
    tracing = [True]
    fast.fast_path.step_aside_when.append(lambda: tracing[0])
    request = encode(CoapMessage(CON, GET, 7, b"t", tuple(path_options("/3/0/0"))))
    client.send(request)
    via_aiocoap = await client.receive()
    assert fast.counts == (0, 1)
    tracing[0] = False
    client.send(request.replace(b"\x00\x07", b"\x00\x08", 1))
    via_fast_path = await client.receive()
    assert fast.counts == (1, 1)
    assert (via_aiocoap.code, via_aiocoap.options, via_aiocoap.payload) == (
        via_fast_path.code,
        via_fast_path.options,
        via_fast_path.payload,
    )


async def test_duplicates_are_answered_from_the_cache_aiocoap_uses(fast: Served, client: Any) -> None:
    rendered: list[object] = []
    original = fast.server.face.respond

    async def counting(request: Any) -> Any:
        rendered.append(request)
        return await original(request)

    fast.server.face.respond = counting  # type: ignore[method-assign]
    request = encode(CoapMessage(CON, GET, 0x4242, b"dup", tuple(path_options("/1025/0/0"))))
    client.send(request)
    first = await client.receive()
    client.send(request)
    again = await client.receive()
    # The same message id, now with an option only aiocoap serves: still a duplicate, for aiocoap too.
    client.send(encode(CoapMessage(CON, GET, 0x4242, b"dup", (*path_options("/1025/0/0"), (OBSERVE, b"")))))
    from_aiocoap = await client.receive()
    assert first == again == from_aiocoap
    assert len(rendered) == 1
    assert fast.counts == (1, 1)


async def test_a_non_request_gets_a_non_reply_with_a_fresh_message_id(fast: Served, client: Any) -> None:
    client.send(encode(CoapMessage(NON, GET, 0x0101, b"n", tuple(path_options("/3/0/1")))))
    reply = await client.receive()
    assert (reply.mtype, reply.token, reply.code) == (NON, b"n", 0x45)
    assert reply.mid != 0x0101 or fast.counts == (1, 0)
    assert fast.counts == (1, 0)


async def test_a_slow_answer_gets_an_empty_ack_then_a_con_response(fast: Served, client: Any) -> None:
    release = asyncio.Event()
    original = fast.server.face.respond

    async def slow(request: Any) -> Any:
        await release.wait()
        return await original(request)

    fast.server.face.respond = slow  # type: ignore[method-assign]
    request = encode(CoapMessage(CON, GET, 0x0505, b"slow", tuple(path_options("/1025/0/0"))))
    client.send(request)
    empty_ack = await client.receive()
    assert (empty_ack.mtype, empty_ack.code, empty_ack.mid, empty_ack.token) == (ACK, 0, 0x0505, b"")
    client.send(request)  # a retransmission now gets the empty ACK again
    assert await client.receive() == empty_ack
    release.set()
    response = await client.receive()
    assert (response.mtype, response.code, response.token, response.payload) == (
        CON,
        0x45,
        b"slow",
        b"anonymous",
    )
    client.send(encode(CoapMessage(ACK, 0, response.mid)))
    assert fast.counts == (1, 0)


async def test_a_failing_rendering_gets_aiocoaps_answer(fast: Served, client: Any) -> None:
    async def broken(request: Any) -> Any:
        raise RuntimeError("boom")

    fast.server.face.respond = broken  # type: ignore[method-assign]
    client.send(encode(CoapMessage(CON, GET, 9, b"e", tuple(path_options("/3/0/0")))))
    reply = await client.receive()
    assert (reply.mtype, reply.code, reply.payload) == (ACK, 0xA0, b"")  # 5.00, as aiocoap answers


async def test_a_put_is_committed_before_it_is_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "device.sqlite3"
    tree = open_device(load_profile("default"), str(state))
    server = await start_coap_server(tree, "127.0.0.1", 0, fast_path=True)
    raw = await rawcoap.RawClient.open(server.address[1])
    try:
        options = (*path_options("/1025/0/0"), (CONTENT_FORMAT, b""))
        raw.send(encode(CoapMessage(CON, PUT, 11, b"w", options, b"renamed-fast")))
        reply = await raw.receive()
        assert (reply.mtype, reply.code) == (ACK, 0x44)
        assert server.fast_paths[0].served == 1
        # Read by another connection while the server runs: the write is on disk already.
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as reader:
            rows = reader.execute(
                "SELECT resource_values FROM instance WHERE object_id = 1025 AND instance_id = 0"
            ).fetchall()
        assert rows and "renamed-fast" in rows[0][0]
    finally:
        raw.close()
        await server.close()
        tree.state.close()


# ---------------------------------------------------------------- both paths, byte for byte


class TwinServers:
    """Two devices seeded alike (same random bytes, same clock), one served with the fast path and one
    without, in an event loop of their own; each request goes to both, so their state stays equal."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.trees: list[DeviceTree] = []
        self.servers: list[CoapServer] = []
        for fast_path in (True, False):
            seeded = random.Random(14)
            tree = open_device(
                load_profile("default"),
                ":memory:",
                random_bytes=seeded.randbytes,
                clock_ms=lambda: 1_700_000_000_000,
            )
            self.trees.append(tree)
            self.servers.append(self._run(start_coap_server(tree, "127.0.0.1", 0, fast_path=fast_path)))
        self.sockets = []
        for server in self.servers:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(10.0)
            sock.connect(("127.0.0.1", server.address[1]))
            self.sockets.append(sock)

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=20)

    def exchange(self, request: CoapMessage) -> list[CoapMessage]:
        return [self._ask(sock, request) for sock in self.sockets]

    @staticmethod
    def _ask(sock: socket.socket, request: CoapMessage) -> CoapMessage:
        sock.send(encode(request))
        while True:
            reply = decode(sock.recv(4096))
            if reply.mtype == ACK and reply.code == 0:
                continue  # an empty ACK: the response follows as a CON
            if reply.mtype == CON:
                sock.send(encode(CoapMessage(ACK, 0, reply.mid)))
            if reply.token == request.token:
                return reply

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for server in self.servers:
            self._run(server.close())
        for tree in self.trees:
            tree.state.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def twins(coap_fast_path: bool) -> Iterator[TwinServers]:
    pair = TwinServers()
    try:
        yield pair
    finally:
        pair.close()


def _model_paths() -> list[str]:
    model = open_device(load_profile("default"), ":memory:").model
    paths: list[str] = []
    for obj in model.objects.values():
        instances = ["0", "65534", "65535", "9"] if obj.multiple else ["0", ""]
        names = [str(obj.id)] + ([obj.alias] if obj.alias else [])
        for name in names:
            paths.append(f"/{name}")
            for instance in instances:
                paths.append(f"/{name}/{instance}")
                for res in obj.resources.values():
                    paths.append(f"/{name}/{instance}/{res.id}")
                    paths += [f"/{name}/{instance}/{form.alias}" for form in res.forms]
    return [*paths, "/1025/0/77", "/42", "/1025/70000"]


PATHS = _model_paths()
FORMATS = st.sampled_from(
    [None, 0, 42, 60, 110, 112, 40, 11542, 11543, 11544, 999]
)  # LwM2M TLV, JSON, CBOR too
PAYLOADS = st.sampled_from(
    [b"", b"x", b"12", b"renamed", b"\xff\x00", b"3000", "\u00e9t\u00e9".encode(), b"p" * 40]
)
_counter = iter(range(1, 1 << 30))


@st.composite
def requests(draw: st.DrawFn) -> CoapMessage:
    path = draw(st.sampled_from(PATHS))
    options = path_options(path) if path.strip("/") else []
    options = [(number, value) for number, value in options if value or path.count("/") > 1]
    accept, content_format = draw(FORMATS), draw(FORMATS)
    if accept is not None:
        options.append((ACCEPT, uint_bytes(accept)))
    if content_format is not None:
        options.append((CONTENT_FORMAT, uint_bytes(content_format)))
    sequence = next(_counter)
    return CoapMessage(
        draw(st.sampled_from([CON, NON])),
        draw(st.sampled_from([GET, GET, PUT, POST, DELETE])),
        sequence & 0xFFFF,
        sequence.to_bytes(4, "big"),
        tuple(sorted(options, key=lambda option: option[0])),
        draw(PAYLOADS),
    )


def _comparable(reply: CoapMessage) -> tuple[int, int, tuple[tuple[int, bytes], ...], bytes]:
    return reply.mtype, reply.code, reply.options, reply.payload


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_both_paths_answer_random_requests_with_the_same_bytes(
    twins: TwinServers, request: CoapMessage
) -> None:
    with_fast_path, aiocoap_only = twins.exchange(request)
    assert with_fast_path.mtype != RST
    assert _comparable(with_fast_path) == _comparable(aiocoap_only)


def test_the_twins_really_take_different_paths(twins: TwinServers) -> None:
    served_before = twins.servers[0].fast_paths[0].served
    mid = next(_counter) & 0xFFFF  # not a message id the property test used
    twins.exchange(CoapMessage(CON, GET, mid, b"chk", tuple(path_options("/3/0/0"))))
    assert twins.servers[0].fast_paths[0].served == served_before + 1
    assert twins.servers[1].fast_paths == []


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"content_format": 0},
        {"etag": b"\x01\x02", "content_format": 60},
        {"size1": 1024},
        # options beyond the three common ones go through aiocoap's Options, in number order
        {"max_age": 30, "location_path": ("a", "b")},
    ],
)
def test_a_reply_encodes_as_its_aiocoap_message_does(options: dict[str, Any]) -> None:
    from aiocoap.message import Direction

    from tap_emulator.faces.coap.reply import Reply

    reply = Reply(0x45, b"payload")
    for name, value in options.items():
        setattr(reply.opt, name, value)
    message = reply.to_message()
    message.mtype, message.mid, message.token, message.direction = ACK, 1, b"t", Direction.OUTGOING
    ours = encode(CoapMessage(ACK, 0x45, 1, b"t", tuple(reply.opt.wire_options()), b"payload"))
    assert ours == message.encode()


async def test_the_suite_switch_reaches_the_server(coap_fast_path: bool) -> None:
    """The on/off run of this suite (tests/conftest.py) really changes what a default server does."""
    tree = open_device(load_profile("default"), ":memory:")
    server = await start_coap_server(tree, "127.0.0.1", 0)
    try:
        assert bool(server.fast_paths) is coap_fast_path
    finally:
        await server.close()
        tree.state.close()
