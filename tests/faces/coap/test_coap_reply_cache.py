"""The fast path's kept replies: a GET served before is answered again without rendering, and never
with a value the tree no longer holds.

What each test pins: a repeated GET is replayed (``FastPath.replayed``) with the bytes a rendering
gives, CON and NON; a write through another face (the Tap face over TCP) is seen by the next GET; a
write applied in memory but not yet durable is seen as the uncached path sees it, and so is its
rollback; the target memory a value source writes is never served stale (directly through the
variable handler's ``source_write`` and from a running source); a duplicate CON gets the stored reply
of its first copy, neither replayed nor rendered; the shapes remembered are bounded. The property test
of ``test_coap_fast_path.py`` compares both paths on random requests; the one here sends sequences from
a few paths, so that replays and invalidations happen between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import rawcoap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_coap_fast_path import TwinServers, _comparable, path_options

from tap_emulator.app import Emulator, Endpoint, ServeOptions, open_device
from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.codec.coap import ACK, CON, NON, CoapMessage, encode, uint_bytes
from tap_emulator.config import SecurityMode, load_profile
from tap_emulator.faces.coap.fast_path import FastPath
from tap_emulator.faces.coap.limits import CoapLimits
from tap_emulator.faces.coap.server import CoapServer, start_coap_server
from tap_emulator.state import StateError
from tap_emulator.tree import DeviceTree

pytestmark = pytest.mark.timeout(60)

GET, PUT = 1, 3
CONTENT_FORMAT, URI_QUERY, ACCEPT = 12, 15, 17
LINK_FORMAT = 40
NAME = "/1025/0/0"  # the anonymous group's name: readable and writable over CoAP (maintenance)


class Device:
    def __init__(self, tree: DeviceTree, server: CoapServer, client: rawcoap.RawClient) -> None:
        self.tree = tree
        self.server = server
        self.client = client
        self.fast_path: FastPath = server.fast_paths[0]
        self._mid = 0

    def next_mid(self) -> int:
        self._mid += 1
        return self._mid

    async def get(self, path: str, mtype: int = CON, token: bytes = b"g") -> rawcoap.Message:
        mid = self.next_mid()
        self.client.send(encode(CoapMessage(mtype, GET, mid, token, tuple(path_options(path)))))
        return await self.client.receive()

    async def put(self, path: str, body: bytes) -> rawcoap.Message:
        options = (*path_options(path), (CONTENT_FORMAT, b""))
        self.client.send(encode(CoapMessage(CON, PUT, self.next_mid(), b"p", options, body)))
        return await self.client.receive()


async def _device(profile: str, state: str) -> tuple[DeviceTree, CoapServer, rawcoap.RawClient]:
    tree = open_device(load_profile(profile), state)
    server = await start_coap_server(tree, "127.0.0.1", 0, fast_path=True)
    client = await rawcoap.RawClient.open(server.address[1])
    return tree, server, client


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    tree, server, client = await _device("default", ":memory:")
    try:
        yield Device(tree, server, client)
    finally:
        client.close()
        await server.close()
        tree.state.close()


def _count_renderings(device: Device) -> list[object]:
    rendered: list[object] = []
    original = device.server.face.respond

    async def counting(request: Any) -> Any:
        rendered.append(request)
        return await original(request)

    device.server.face.respond = counting  # type: ignore[method-assign]
    return rendered


async def test_a_repeated_get_is_replayed_with_the_bytes_of_its_rendering(device: Device) -> None:
    rendered = _count_renderings(device)
    first = await device.get(NAME, token=b"one")
    again = await device.get(NAME, token=b"two")
    assert len(rendered) == 1
    assert device.fast_path.replayed == 1
    assert (again.mtype, again.mid, again.token) == (ACK, first.mid + 1, b"two")
    assert (again.code, again.options, again.payload) == (first.code, first.options, first.payload)
    assert first.payload == b"anonymous"


async def test_a_replayed_non_get_gets_a_non_reply_with_a_fresh_message_id(device: Device) -> None:
    await device.get(NAME, NON, b"n1")
    replies = [await device.get(NAME, NON, b"n2"), await device.get(NAME, NON, b"n3")]
    assert device.fast_path.replayed == 2
    assert [(r.mtype, r.token, r.payload) for r in replies] == [
        (NON, b"n2", b"anonymous"),
        (NON, b"n3", b"anonymous"),
    ]
    assert replies[0].mid != replies[1].mid


async def test_a_duplicate_con_gets_the_stored_reply_neither_replayed_nor_rendered(device: Device) -> None:
    await device.get(NAME, token=b"warm")  # the shape's reply is kept
    rendered = _count_renderings(device)
    request = encode(CoapMessage(CON, GET, 0x7777, b"dup", tuple(path_options(NAME))))
    device.client.send(request)
    first = await device.client.receive()
    replayed = device.fast_path.replayed
    served = device.fast_path.served
    device.client.send(request)
    duplicate = await device.client.receive()
    assert duplicate == first
    assert (device.fast_path.replayed, device.fast_path.served) == (replayed, served)
    assert rendered == []


async def test_a_discover_is_replayed_until_write_attributes_change_what_it_shows(device: Device) -> None:
    discover = (*path_options(NAME), (ACCEPT, uint_bytes(LINK_FORMAT)))

    async def discovered() -> bytes:
        device.client.send(encode(CoapMessage(CON, GET, device.next_mid(), b"d", discover)))
        return (await device.client.receive()).payload

    first = await discovered()
    assert await discovered() == first
    assert device.fast_path.replayed == 1
    # Write-Attributes (a PUT with Uri-Query, no payload) is aiocoap's to serve; the face keeps them.
    write = (*path_options(NAME), (URI_QUERY, b"pmin=5"))
    device.client.send(encode(CoapMessage(CON, PUT, device.next_mid(), b"a", write)))
    assert (await device.client.receive()).code == 0x44
    after = await discovered()
    assert b"pmin=5" in after and b"pmin=5" not in first
    assert device.fast_path.replayed == 1


async def test_a_write_through_the_tap_face_is_seen_by_the_next_get(tmp_path: Path) -> None:
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=Endpoint("127.0.0.1", 0),
            ws=None,
            http=None,
            store="off",
            coap_fast_path=True,
            security=SecurityMode.NONE,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    assert emulator.coap is not None and emulator.tcp_address is not None
    client = await rawcoap.RawClient.open(emulator.coap.address[1])
    reader, writer = await asyncio.open_connection(*emulator.tcp_address)
    try:
        device = Device(emulator.coap.face.tree, emulator.coap, client)
        assert (await device.get(NAME)).payload == b"anonymous"
        assert (await device.get(NAME)).payload == b"anonymous"
        assert device.fast_path.replayed == 1

        async def tap(method: Method, obj: int, inst: int | None, res: int, payload: bytes) -> int:
            writer.write(encode_request(TapRequest(method, obj, inst, res, payload)))
            await writer.drain()
            data = b""
            while not data.endswith(b"\x90\x00"):
                data += await asyncio.wait_for(reader.read(4096), 5)
            return decode_response(data)[0]

        def pad(text: str) -> bytes:
            return text.encode().ljust(16, b"\0")

        assert await tap(Method.POST, 1024, None, 0, pad("admin") + pad("admin")) == 0x44  # login
        assert await tap(Method.PUT, 1025, 0, 0, b"renamed-by-tap") == 0x44
        after = await device.get(NAME)
        assert after.payload == b"renamed-by-tap"
        assert device.fast_path.replayed == 1  # rendered, not replayed
        assert (await device.get(NAME)).payload == b"renamed-by-tap"
        assert device.fast_path.replayed == 2
    finally:
        writer.close()
        client.close()
        await emulator.stop()


async def test_a_write_not_yet_durable_and_its_rollback_are_read_as_without_the_cache(
    tmp_path: Path,
) -> None:
    tree, server, client = await _device("default", str(tmp_path / "device.sqlite3"))
    device = Device(tree, server, client)
    state: Any = tree.state
    commit, release, fail = state.commit, asyncio.Event(), [False]

    async def held_commit(changes: Any) -> None:
        await release.wait()
        if fail[0]:
            raise StateError("the disk is full")
        await commit(changes)

    try:
        assert (await device.get(NAME)).payload == b"anonymous"  # kept
        state.commit = held_commit
        options = (*path_options(NAME), (CONTENT_FORMAT, b""))
        client.send(encode(CoapMessage(CON, PUT, 900, b"w", options, b"pending-name")))
        empty_ack = await client.receive()  # the commit is held: the answer takes too long
        assert (empty_ack.mtype, empty_ack.code, empty_ack.mid) == (ACK, 0, 900)
        # The tree applies a write in memory at once and reads see it before it is durable (and
        # before its change event): so does the fast path, which renders instead of replaying.
        replayed = device.fast_path.replayed
        assert (await device.get(NAME)).payload == b"pending-name"
        assert device.fast_path.replayed == replayed
        fail[0] = True
        release.set()
        refused = await client.receive()  # the separate response to the PUT
        assert (refused.mtype, refused.code, refused.token) == (CON, 0xA0, b"w")
        client.send(encode(CoapMessage(ACK, 0, refused.mid)))
        # Rolled back: the old name again, rendered, not the pending one replayed.
        assert (await device.get(NAME)).payload == b"anonymous"
        assert device.fast_path.replayed == replayed
    finally:
        state.commit = commit
        client.close()
        await server.close()
        tree.state.close()


async def test_target_memory_a_value_source_writes_is_never_served_stale() -> None:
    tree, server, client = await _device("sensors", ":memory:")
    device = Device(tree, server, client)
    try:
        counter = "/1029/2/4"  # variable 2 (UINT32), resource value
        seen: list[int] = []
        for sample in (7, 7, 8, 9, 9):
            if not seen or sample != seen[-1]:
                assert tree.variables.source_write(2, float(sample))  # what a running source calls
            reply = await device.get(counter)
            seen.append(int(reply.payload, 16))  # an opaque value reads as hex text
        assert seen == [7, 7, 8, 9, 9]
        assert device.fast_path.replayed == 2  # the two reads with no sample between them
    finally:
        client.close()
        await server.close()
        tree.state.close()


async def test_a_running_value_source_is_read_as_it_advances(tmp_path: Path) -> None:
    """The sensors profile's counter (variable 2) steps once a second; every read is the tree's value."""
    emulator = Emulator(
        ServeOptions(
            profile="sensors",
            state=":memory:",
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
            store="off",
            coap_fast_path=True,
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    assert emulator.coap is not None
    client = await rawcoap.RawClient.open(emulator.coap.address[1])
    device = Device(emulator.coap.face.tree, emulator.coap, client)
    variables = emulator.coap.face.tree.variables
    layout = variables.layout(2)
    assert layout is not None
    try:
        values: set[int] = set()
        async with asyncio.timeout(10):
            while len(values) < 2:
                reply = await device.get("/1029/2/4")
                data = variables.value_bytes(layout)
                assert data is not None and reply.payload == data.hex().encode()  # opaque: hex text
                values.add(int(reply.payload, 16))
                await asyncio.sleep(0.05)
        assert device.fast_path.replayed > 0
    finally:
        client.close()
        await emulator.stop()


async def test_the_shapes_kept_are_bounded(device: Device) -> None:
    device.server.face.limits = CoapLimits(kept_replies=3)
    for accept in range(5):  # five shapes (Accept 1 to 4 are refused, 4.06: plain requests all the same)
        options = (*path_options(NAME), (ACCEPT, uint_bytes(accept)))
        device.client.send(encode(CoapMessage(CON, GET, device.next_mid(), b"s", options)))
        await device.client.receive()
    assert 0 < len(device.fast_path._shapes) <= 3


# ---------------------------------------------------------------- both paths, sequences


@pytest.fixture(scope="module")
def twins(coap_fast_path: bool) -> Any:
    pair = TwinServers()
    try:
        yield pair
    finally:
        pair.close()


_mids = iter(range(1, 1 << 30))
FEW_PATHS = ["/1025/0/0", "/1025/65534/0", "/3/0/0", "/1025/0/2", "/3//1", "/1025/9/0"]
NAMES = [b"a", b"bb", b"renamed", b"x" * 40, b""]


@st.composite
def sequences(draw: st.DrawFn) -> list[CoapMessage]:
    requests = []
    for _ in range(draw(st.integers(2, 8))):
        path = draw(st.sampled_from(FEW_PATHS))
        mid = next(_mids)
        options = [opt for opt in path_options(path) if opt[1] or path.count("/") > 1]
        kind = draw(st.integers(0, 7))
        if kind == 0:  # now and then Write-Attributes between the reads (Discover shows them)
            options.append((URI_QUERY, f"pmin={draw(st.integers(0, 3))}".encode()))
            requests.append(CoapMessage(CON, PUT, mid & 0xFFFF, mid.to_bytes(4, "big"), tuple(options)))
        elif kind == 1:  # or a write
            options.append((CONTENT_FORMAT, b""))
            requests.append(
                CoapMessage(
                    CON,
                    PUT,
                    mid & 0xFFFF,
                    mid.to_bytes(4, "big"),
                    tuple(options),
                    draw(st.sampled_from(NAMES)),
                )
            )
        else:
            mtype = draw(st.sampled_from([CON, NON]))
            if kind == 2:  # a Discover
                options.append((ACCEPT, uint_bytes(LINK_FORMAT)))
            requests.append(CoapMessage(mtype, GET, mid & 0xFFFF, mid.to_bytes(4, "big"), tuple(options)))
    return requests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=sequences())
def test_both_paths_answer_sequences_of_reads_and_writes_alike(
    twins: TwinServers, requests: list[CoapMessage]
) -> None:
    for request in requests:
        with_fast_path, aiocoap_only = twins.exchange(request)
        assert _comparable(with_fast_path) == _comparable(aiocoap_only)


def test_the_sequences_were_replayed_in_part(twins: TwinServers) -> None:
    """Runs after the property test (file order): some of its reads came from kept replies."""
    assert twins.servers[0].fast_paths[0].replayed > 0
