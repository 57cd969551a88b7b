"""Value sources on a real device: the runner writes through the variable handler of the real tree, and
real aiocoap observers of the variable (resource and instance), of a variable sharing its bytes and of
the bundle's values are notified. The runner's clock is the manual one, so what is notified when is
exact; the app wiring (start with the device, restart on reboot, stop) is checked on sources whose
values do not move during a test.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from manual_clock import ORIGIN, ManualClock

from tap_emulator.app import Emulator, Endpoint, ServeOptions, open_device
from tap_emulator.codec import tlv
from tap_emulator.config import Profile, load_profile
from tap_emulator.faces.coap import start_coap_server
from tap_emulator.sources import Replay, SourceRunner
from tap_emulator.state import MEMORY
from tap_emulator.tree import MAINTENANCE

TIMEOUT = 5.0
OCTETS = 42  # application/octet-stream: the value's bytes (text/plain would be their hex)
SENML_CBOR = 112

PROFILE = """
[device]
model = "x"
serial_number = "SRC1"
firmware_version = "1"

[[groups]]
id = 0
name = "anonymous"
password = ""

[[groups]]
id = 65535
name = "admin"
password = "admin"

[target]
memory_base = 0x20000000
memory_size = 0x1000

[[data.bundles]]
id = 5
name = "plant"
[data.bundles.acls.anonymous]
read = true
write = false
[[data.bundles.variables]]
id = 1
address = 0x20000000
dataType = "UINT16"
[[data.bundles.variables]]
id = 2
address = 0x20000004
dataType = "FLOAT32"

[[data.bundles]]
id = 6
name = "view"
[[data.bundles.variables]]
id = 3
address = 0x20000000
dataType = "UINT16"
meta = { name = "the counter's bytes, seen by another variable" }

[[sources]]
variable = 1
kind = "counter"
start = 7
period = 1

[[sources]]
variable = 2
kind = "replay"
file = "points.csv"
"""
POINTS = "time,value\n0,0.1\n1.5,2.5\n2.25,-1.75\n"


def write_profile(tmp_path: Path, text: str = PROFILE) -> Path:
    (tmp_path / "points.csv").write_text(POINTS, encoding="utf-8")
    path = tmp_path / "plant.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Observer:
    """An aiocoap observation whose notifications are collected in a queue."""

    def __init__(self, context: Any, uri: str, accept: int = OCTETS) -> None:
        message = aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0)
        message.opt.accept = accept
        self.request = context.request(message)
        self.updates: asyncio.Queue[bytes] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for response in self.request.observation:
            self.updates.put_nowait(response.payload)

    async def first(self) -> bytes:
        response = await asyncio.wait_for(self.request.response, TIMEOUT)
        assert response.code == aiocoap.CONTENT, response
        return bytes(response.payload)

    async def next(self) -> bytes:
        return await asyncio.wait_for(self.updates.get(), TIMEOUT)

    def cancel(self) -> None:
        self.request.observation.cancel()
        self._task.cancel()


def bundle_values(payload: bytes) -> dict[int, bytes]:
    (bundle,) = tlv.decode(payload)
    assert isinstance(bundle.value, tuple)
    return {node.id: node.value for node in bundle.value if isinstance(node.value, bytes)}


def senml_value(payload: bytes) -> bytes:
    """Resource 4 (the value) of a SenML CBOR instance read."""
    (value,) = [r[8] for r in cbor2.loads(payload) if r.get(0) == "4"]  # name "4", data value (key 8)
    assert isinstance(value, bytes)
    return value


def f32(value: float) -> bytes:
    return struct.pack(">f", value)


async def request(client: Any, method: Any, uri: str, payload: bytes = b"") -> Any:
    message = aiocoap.Message(code=method, uri=uri, payload=payload)
    if payload:
        message.opt.content_format = OCTETS
    else:
        message.opt.accept = OCTETS
    return await asyncio.wait_for(client.request(message).response, TIMEOUT)


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


async def test_a_source_notifies_observers_of_its_variable_its_bytes_and_its_bundle(
    tmp_path: Path, client: Any
) -> None:
    profile = load_profile(str(write_profile(tmp_path)))
    tree = open_device(profile, MEMORY)
    coap = await start_coap_server(tree, "127.0.0.1", 0, caller=MAINTENANCE)
    clock = ManualClock()
    runner = SourceRunner(profile.sources, tree.variables, clock)
    base = f"coap://127.0.0.1:{coap.address[1]}"
    observers: dict[str, Observer] = {}
    try:
        runner.start()  # time 0: the counter's start and the replay's first point
        observers = {
            "counter": Observer(client, f"{base}/1029/1/4"),
            "replay": Observer(client, f"{base}/variable/2/value"),
            "same bytes": Observer(client, f"{base}/1029/3/4"),
            "bundle": Observer(client, f"{base}/1028/5/1"),
            "bundle alias": Observer(client, f"{base}/bundle/5/values"),
            "instance": Observer(client, f"{base}/1029/1", accept=SENML_CBOR),
        }
        assert await observers["counter"].first() == b"\x00\x07"
        assert await observers["replay"].first() == f32(0.1)
        assert await observers["same bytes"].first() == b"\x00\x07"
        for name in ("bundle", "bundle alias"):
            assert bundle_values(await observers[name].first()) == {1: b"\x00\x07", 2: f32(0.1)}
        assert senml_value(await observers["instance"].first()) == b"\x00\x07"

        await clock.advance_to(runner, ORIGIN + 1)  # the counter steps; the replay holds
        assert await observers["counter"].next() == b"\x00\x08"
        assert await observers["same bytes"].next() == b"\x00\x08"
        for name in ("bundle", "bundle alias"):
            assert bundle_values(await observers[name].next()) == {1: b"\x00\x08", 2: f32(0.1)}
        assert senml_value(await observers["instance"].next()) == b"\x00\x08"

        await clock.advance_to(runner, ORIGIN + 1.5)  # a CSV point, exactly its value
        assert await observers["replay"].next() == f32(2.5)
        assert bundle_values(await observers["bundle"].next()) == {1: b"\x00\x08", 2: f32(2.5)}
        await clock.advance_to(runner, ORIGIN + 2)
        await clock.advance_to(runner, ORIGIN + 2.25)
        assert await observers["counter"].next() == b"\x00\x09"
        assert await observers["replay"].next() == f32(-1.75)
        assert (await request(client, aiocoap.GET, f"{base}/1029/2/4")).payload == f32(-1.75)
        assert isinstance(profile.sources[1].generator, Replay)
    finally:
        for observer in observers.values():
            observer.cancel()
        await runner.stop()
        await coap.close()
        tree.state.close()


async def test_a_source_of_a_variable_the_device_lacks_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = PROFILE + '\n[[sources]]\nvariable = 99\nkind = "constant"\nvalue = 1\n'
    profile = load_profile(str(write_profile(tmp_path, text)))
    tree = open_device(profile, MEMORY)
    runner = SourceRunner(profile.sources, tree.variables, ManualClock())
    try:
        runner.start()
        assert runner.running
        assert "variable 99: the device has no such variable" in caplog.text
        assert tree.memory.read(0x20000000, 2) == b"\x00\x07"  # the others were written
    finally:
        await runner.stop()
        tree.state.close()


def emulator_for(profile: str | Path, tmp_path: Path) -> Emulator:
    return Emulator(
        ServeOptions(
            profile=str(profile),
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
            store="off",
        ),
        announce=lambda _line: None,
    )


async def test_the_device_runs_its_sources_restarts_them_on_reboot_and_stops_them(
    tmp_path: Path, client: Any
) -> None:
    # Periods of an hour: nothing moves on its own during the test.
    text = PROFILE.replace("period = 1\n", "period = 3600\n")
    emulator = emulator_for(write_profile(tmp_path, text), tmp_path)
    await emulator.start()
    try:
        assert emulator.sources is not None and emulator.sources.running
        assert emulator.coap_address is not None
        uri = f"coap://127.0.0.1:{emulator.coap_address[1]}/1029/1/4"
        assert (await request(client, aiocoap.GET, uri)).payload == b"\x00\x07"  # written before listening
        assert (await request(client, aiocoap.PUT, uri, b"\x01\x00")).code == aiocoap.CHANGED
        assert (await request(client, aiocoap.GET, uri)).payload == b"\x01\x00"
        await emulator.reboot()
        assert emulator.sources.running
        assert (await request(client, aiocoap.GET, uri)).payload == b"\x00\x07"  # from time 0 again
        await emulator.factory_reset()
        assert emulator.sources.running
    finally:
        await emulator.stop()
    assert not emulator.sources.running


async def test_a_device_without_sources_runs_no_runner(tmp_path: Path) -> None:
    emulator = emulator_for("default", tmp_path)
    await emulator.start()
    try:
        assert emulator.sources is None
    finally:
        await emulator.stop()


def test_the_sensors_example_declares_a_variable_for_each_source() -> None:
    profile: Profile = load_profile("sensors")
    assert {s.kind for s in profile.sources} == {"sine", "counter", "random-walk", "replay"}
    assert {s.variable for s in profile.sources} == {v.id for v in profile.data.variables}


async def test_the_sensors_example_serves_values_within_its_sources_ranges(
    tmp_path: Path, client: Any
) -> None:
    emulator = emulator_for("sensors", tmp_path)
    await emulator.start()
    try:
        assert emulator.coap_address is not None
        base = f"coap://127.0.0.1:{emulator.coap_address[1]}"
        (pressure,) = struct.unpack(">f", (await request(client, aiocoap.GET, f"{base}/1029/3/4")).payload)
        assert 990 <= pressure <= 1030
        level = int.from_bytes((await request(client, aiocoap.GET, f"{base}/1029/4/4")).payload, "big")
        assert 120 <= level <= 420
    finally:
        await emulator.stop()
