"""The fleet relay: many devices on one broker connection, with real devices (trees over ``:memory:``
states, built at a device's first command) and real brokers.

Mosquitto on 127.0.0.1:1883 carries the fleet tests (each run's serials are its own); the broker
restart runs a private ``mosquitto`` on a free port, as the single-device outage test does, and kills
it (SIGKILL) during traffic. The app side is `bench.fleet_relay.RelayApp` (the project's relay codec
over aiomqtt, answers matched by topic and reference id).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
from private_broker import PrivateBroker

from bench.fleet_relay import (
    GET_NAME,
    NET_KEY,
    MemoryDevice,
    RelayApp,
    broker_settings,
    default_profile,
    fleet_serials,
)
from tap_emulator.codec.apdu import Method, TapRequest, encode_request
from tap_emulator.codec.mqtt_relay import relay_key
from tap_emulator.config import Profile, SecurityMode
from tap_emulator.faces.mqtt import FleetRelay, relay_keys
from tap_emulator.faces.mqtt.client import Backoff
from tap_emulator.faces.tap import TapFace
from tap_emulator.security import USERNAME_LENGTH

pytestmark = pytest.mark.timeout(120)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "mqtt-relay.txt"
BROKER = ("127.0.0.1", 1883)
GROUP_OBJECT, LOGIN_OBJECT, LOGIN = 1025, 1024, 0
SUPERVISOR = 0xFFFE
CONTENT, CHANGED = 0x45, 0x44


def require_broker() -> None:
    try:
        socket.create_connection(BROKER, timeout=1).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto is not listening on 127.0.0.1:1883 ({exc}); .ci/run starts it")


def get_name(group: int) -> bytes:
    return encode_request(TapRequest(Method.GET, GROUP_OBJECT, group, 0))


def put_name(group: int, name: str) -> bytes:
    return encode_request(TapRequest(Method.PUT, GROUP_OBJECT, group, 0, name.encode()))


def login_frame(name: str, password: str) -> bytes:
    body = name.encode().ljust(USERNAME_LENGTH, b"\0") + password.encode().ljust(16, b"\0")
    return encode_request(TapRequest(Method.POST, LOGIN_OBJECT, None, LOGIN, body))


def plain_profile() -> Profile:
    """The default profile with plain login (the test logs in with the codec, not through SCRAM)."""
    profile = default_profile()
    return replace(profile, security=replace(profile.security, mode=SecurityMode.NONE))


async def memory_fleet(count: int, profile: Profile | None = None) -> list[MemoryDevice]:
    profile = profile or default_profile()
    serials = fleet_serials(count)
    keys = await relay_keys(NET_KEY, serials)
    return [MemoryDevice(profile, serial, keys[serial]) for serial in serials]


@contextlib.contextmanager
def closing(devices: list[MemoryDevice]) -> Iterator[None]:
    try:
        yield
    finally:
        for device in devices:
            device.close()


@contextlib.asynccontextmanager
async def running(fleet: FleetRelay) -> AsyncIterator[FleetRelay]:
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


# relay_keys


def _topic_vectors() -> list[tuple[str, str, str]]:
    rows = [line.split() for line in VECTORS.read_text().splitlines() if line.startswith("topic ")]
    return [("" if net == "-" else net, serial, command.split("/")[2]) for _, net, serial, command, _ in rows]


async def test_relay_keys_are_the_sdks_single_device_vectors() -> None:
    vectors = _topic_vectors()
    assert len(vectors) >= 3
    for net_key, serial, key in vectors:
        assert await relay_keys(net_key, [serial]) == {serial: key}
    # Many at once, duplicates once, every one by relay_key's rule.
    serials = [*fleet_serials(150), "EMU0000000001", "EMU0000000001"]
    keys = await relay_keys("testnetkey", serials)
    assert len(keys) == 151
    assert keys["EMU0000000001"] == dict((s, k) for n, s, k in vectors if n == "testnetkey")["EMU0000000001"]
    assert all(keys[serial] == relay_key("testnetkey", serial) for serial in random.sample(serials, 10))
    assert await relay_keys("testnetkey", []) == {}


async def test_relay_keys_refuse_what_is_not_a_serial() -> None:
    with pytest.raises(ValueError, match="serial number"):
        await relay_keys("k", ["EMU1", ""])
    with pytest.raises(ValueError, match="serial number"):
        await relay_keys("k", ["EMU1", 7])  # type: ignore[list-item]


# FleetRelay without a broker


def test_add_refuses_bad_devices_all_or_nothing() -> None:
    profile = default_profile()
    key = relay_key(NET_KEY, "EMU1")
    fleet = FleetRelay(broker_settings(), clock=time.monotonic)
    fleet.add(MemoryDevice(profile, "EMU1", key))
    bad = [
        (MemoryDevice(profile, "EMU/2", key), "cannot be part of a topic"),
        (MemoryDevice(profile, "EMU+", key), "cannot be part of a topic"),
        (MemoryDevice(profile, "", key), "cannot be part of a topic"),
        (MemoryDevice(profile, "EMU3", key.lower()), "32 uppercase hex"),
        (MemoryDevice(profile, "EMU3", "XYZ"), "32 uppercase hex"),
        (MemoryDevice(profile, "EMU1", key), "already on the relay"),
    ]
    for device, message in bad:
        with pytest.raises(ValueError, match=message):
            fleet.add_many([MemoryDevice(profile, "EMU9", relay_key(NET_KEY, "EMU9")), device])
        assert "EMU9" not in fleet and len(fleet) == 1  # nothing of the batch was added
    assert fleet.topics("EMU1") == (
        f"IOTIZE_DEV/EMU1_DEV/{key}/COMMAND",
        f"IOTIZE_DEV/EMU1_DEV/{key}/ANSWER",
    )
    assert fleet.remove("EMU1") and not fleet.remove("EMU1")
    assert list(fleet.subscriptions()) == [] and fleet.route(f"IOTIZE_DEV/EMU1_DEV/{key}/COMMAND") is None


async def test_a_device_whose_face_fails_answers_nothing_and_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryDevice):
        __slots__ = ("attempts",)

        def face(self) -> TapFace:
            self.attempts: int = getattr(self, "attempts", 0) + 1
            raise RuntimeError("state file gone")

    device = Broken(default_profile(), "EMUBROKEN", relay_key(NET_KEY, "EMUBROKEN"))
    fleet = FleetRelay(broker_settings(), clock=time.monotonic)
    fleet.add(device)
    handler = fleet.route(fleet.topics("EMUBROKEN")[0])
    assert handler is not None
    assert await handler(b"00") is None and await handler(b"00") is None
    assert device.attempts == 2 and not fleet.built("EMUBROKEN")
    assert sum("could not start its face" in r.getMessage() for r in caplog.records) == 1


# FleetRelay on Mosquitto


async def test_a_200_device_fleet_answers_every_device_and_builds_only_commanded_faces() -> None:
    require_broker()
    devices = await memory_fleet(200)
    fleet = FleetRelay(broker_settings(), clock=time.monotonic, subscribe_batch=64)  # 4 SUBSCRIBEs
    fleet.add_many(devices)
    with closing(devices):
        async with running(fleet), RelayApp().connected() as app:
            assert fleet.relay.connected and len(fleet) == 200 and fleet.faces_built == 0
            asked = random.sample(devices, 20)
            for device in asked:
                status, body = await app.request(fleet.topics(device.serial_number), GET_NAME)
                assert (status, body) == (CONTENT, b"anonymous")
            assert fleet.faces_built == 20
            assert {d.serial_number for d in devices if d.built} == {d.serial_number for d in asked}
            # Every other device answers too, its own tree behind it (the serial is its own).
            rest = [d for d in devices if not d.built]

            async def ask(device: MemoryDevice) -> None:
                assert await app.request(fleet.topics(device.serial_number), GET_NAME) == (
                    CONTENT,
                    b"anonymous",
                )
                assert device.face().tree.serial_number == device.serial_number

            for start in range(0, len(rest), 30):
                await asyncio.gather(*(ask(device) for device in rest[start : start + 30]))
            assert fleet.faces_built == 200
            assert fleet.relay.connections == 1


async def test_devices_added_and_removed_while_connected_are_subscribed_and_unsubscribed_at_once() -> None:
    require_broker()
    devices = await memory_fleet(12)
    first, later = devices[:2], devices[2:]
    fleet = FleetRelay(broker_settings(), clock=time.monotonic)
    fleet.add_many(first)
    with closing(devices):
        async with running(fleet), RelayApp().connected() as app:
            for device in later:  # one at a time, as devices come up: they share SUBSCRIBE packets
                fleet.add(device)
            await fleet.settled()
            for device in later:
                assert (await app.request(fleet.topics(device.serial_number), GET_NAME))[0] == CONTENT
            gone = later[0]
            topics = fleet.topics(gone.serial_number)
            assert fleet.remove(gone.serial_number)
            await fleet.settled()
            with pytest.raises(TimeoutError):
                await app.request(topics, GET_NAME, timeout=0.5)  # nobody listens there any more
            fleet.add(gone)  # back again, a fresh record: its next command builds its face again
            await fleet.settled()
            assert (await app.request(topics, GET_NAME))[0] == CONTENT
            assert fleet.relay.connections == 1


async def test_a_broker_restart_during_traffic_resubscribes_every_device_and_keeps_acknowledged_writes(
    tmp_path: Path,
) -> None:
    broker = PrivateBroker(tmp_path)
    broker.start()
    try:
        await broker.wait_listening()
        devices = await memory_fleet(200, plain_profile())
        fleet = FleetRelay(
            broker_settings(port=broker.port),
            clock=time.monotonic,
            backoff=Backoff(first=0.05, most=0.5),
            subscribe_batch=50,
        )
        fleet.add_many(devices)
        writer = devices[17]
        with closing(devices):
            async with running(fleet):
                writer_topics = fleet.topics(writer.serial_number)
                async with RelayApp(port=broker.port).connected() as app:
                    assert (await app.request(writer_topics, login_frame("admin", "admin")))[0] == CHANGED
                    assert (await app.request(writer_topics, put_name(SUPERVISOR, "kept")))[0] == CHANGED
                    answered = await _traffic_until_killed(app, fleet, devices, broker)
                assert answered >= 20
                await wait_for(lambda: not fleet.relay.connected, 10)
                broker.start()
                await broker.wait_listening()
                await wait_for(lambda: fleet.relay.connected and fleet.relay.connections == 2, 20)
                async with RelayApp(port=broker.port).connected() as app:
                    # Every device was subscribed again: each answers.
                    for start in range(0, len(devices), 40):
                        batch = devices[start : start + 40]
                        answers = await asyncio.gather(
                            *(app.request(fleet.topics(d.serial_number), GET_NAME) for d in batch)
                        )
                        assert all(status == CONTENT for status, _ in answers)
                    # The rename acknowledged before the outage is there; the sender's session too.
                    assert await app.request(writer_topics, get_name(SUPERVISOR)) == (CONTENT, b"kept")
                    assert (await app.request(writer_topics, put_name(SUPERVISOR, "after")))[0] == CHANGED
                supervisor = writer.face().tree.live(GROUP_OBJECT, SUPERVISOR)
                assert supervisor is not None and supervisor.values[0] == "after"
    finally:
        broker.kill()


async def _traffic_until_killed(
    app: RelayApp, fleet: FleetRelay, devices: list[MemoryDevice], broker: PrivateBroker
) -> int:
    """getName to random devices, several in flight; the broker is killed in the middle of it. The
    answers that arrived before."""
    answered = 0
    draw = random.Random(3)

    async def one() -> None:
        nonlocal answered
        with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
            device = draw.choice(devices)
            if (await app.request(fleet.topics(device.serial_number), GET_NAME, timeout=1.0))[0] == CONTENT:
                answered += 1

    for round_ in range(20):
        requests = asyncio.gather(*(one() for _ in range(5)))
        if round_ == 10:
            await asyncio.sleep(0.001)  # the round's commands are on their way
            broker.kill()
        await requests
    return answered


async def test_a_device_added_while_the_connection_subscribes_is_subscribed_by_it() -> None:
    """The connection subscribes a snapshot of the fleet's topics; one added before its SUBACKs are in
    is neither in the snapshot nor sent on a connection in use, and must not be lost between the two."""
    require_broker()
    devices = await memory_fleet(101)
    fleet = FleetRelay(broker_settings(), clock=time.monotonic, subscribe_batch=5)  # 20 SUBSCRIBEs
    fleet.add_many(devices[:100])
    late = devices[100]
    subscribe_all = fleet.relay._subscribe_all
    added: list[bool] = []

    async def add_while_subscribing(client: aiomqtt.Client, topics: list[str]) -> None:
        # Called first for the snapshot: the add lands while it is being subscribed (polling for that
        # window from outside can miss it: twenty SUBSCRIBEs take a few ms on an idle machine).
        if not added:
            assert fleet.relay._late is not None
            fleet.add(late)
            added.append(True)
        await subscribe_all(client, topics)

    fleet.relay._subscribe_all = add_while_subscribing  # type: ignore[method-assign,assignment]
    with closing(devices):
        starting = asyncio.ensure_future(fleet.start())
        try:
            await starting
            await fleet.settled()
            async with RelayApp().connected() as app:
                assert (await app.request(fleet.topics(late.serial_number), GET_NAME))[0] == CONTENT
                assert (await app.request(fleet.topics(devices[0].serial_number), GET_NAME))[0] == CONTENT
            assert fleet.relay.connections == 1
        finally:
            await fleet.stop()


async def test_the_connect_timeout_bounds_the_connection_not_the_subscriptions() -> None:
    """A fleet's start: without a broker it fails after the connect timeout, however long its
    subscriptions are allowed; once connected, SUBACKs slower than the connect timeout are waited for."""
    require_broker()
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        nobody = FleetRelay(broker_settings(port=holder.getsockname()[1]), clock=time.monotonic)
        async with asyncio.timeout(30):  # far below the 600 s allowed for subscribing
            with pytest.raises(ConnectionError, match="not reachable"):
                await nobody.start(timeout=600, connect_timeout=0.3)
    devices = await memory_fleet(3)
    fleet = FleetRelay(broker_settings(), clock=time.monotonic)
    fleet.add_many(devices)
    subscribe_all = fleet.relay._subscribe_all

    async def slow(client: aiomqtt.Client, topics: list[str]) -> None:
        await asyncio.sleep(1.0)  # connected, subscribing for longer than the connect timeout
        await subscribe_all(client, topics)

    fleet.relay._subscribe_all = slow  # type: ignore[method-assign,assignment]
    with closing(devices):
        try:
            await fleet.start(timeout=30, connect_timeout=0.3)
            assert fleet.relay.connected and fleet.relay.connections == 1
        finally:
            await fleet.stop()
