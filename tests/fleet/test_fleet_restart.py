"""A broker restart under a whole `Fleet` (in process, over its state file): the fleet reconnects,
resubscribes every device (built before or not) and answers again, and no acknowledged write is lost.

The broker is a private ``mosquitto`` on a free port (`PrivateBroker`): killed with SIGKILL while
getName requests to several devices and a rename are in flight, then started again on the same port.
"In flight" is made sure of by the fleet's own change event: the broker dies once the rename of that
round is durable and before its answer leaves. The app is `bench.fleet_relay.RelayApp` (answers
matched by topic and reference id), so "acknowledged" means exactly "an answer to that request
arrived". Logins are plain (``SecurityMode.NONE``): the Python app logs in with the codec; SCRAM over
the relay is the SDK interop tests'. A fleet that cannot reach its broker at start is the CLI's
(test_fleet_cli.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from private_broker import HOST, PrivateBroker

from bench.fleet_relay import GET_NAME, RelayApp
from tap_emulator.codec.apdu import Method, TapRequest, encode_request
from tap_emulator.config import SecurityMode
from tap_emulator.fleet import Fleet, FleetOptions

from .conftest import unique_format

pytestmark = pytest.mark.timeout(180)

COUNT = 50
TOUCHED = 25  # traffic before the outage goes to the first 25 devices only: the others stay unbuilt
CONTENT, CHANGED = 0x45, 0x44
GROUP, SUPERVISOR, NAME = 1025, 0xFFFE, 0
INTERFACE, LOGIN = 1024, 0


def login(name: str, password: str) -> bytes:
    """POST /1024//0: a plain login (name and password, 16 bytes each)."""
    body = name.encode().ljust(16, b"\0") + password.encode().ljust(16, b"\0")
    return encode_request(TapRequest(Method.POST, INTERFACE, None, LOGIN, body))


def put_name(name: str) -> bytes:
    return encode_request(TapRequest(Method.PUT, GROUP, SUPERVISOR, NAME, name.encode()))


GET_SUPERVISOR_NAME = encode_request(TapRequest(Method.GET, GROUP, SUPERVISOR, NAME))


async def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


def options(tmp_path: Path, fmt: str, mqtt: str) -> FleetOptions:
    return FleetOptions(
        count=COUNT,
        serial_format=fmt,
        state=str(tmp_path / "fleet.sqlite3"),
        store="off",
        mqtt=mqtt,
        security=SecurityMode.NONE,
    )


async def test_a_broker_restart_during_traffic_resubscribes_the_fleet_and_keeps_acknowledged_writes(
    tmp_path: Path,
) -> None:
    broker = PrivateBroker(tmp_path)
    broker.start()
    fmt = unique_format()
    try:
        await broker.wait_listening()
        fleet = Fleet(options(tmp_path, fmt, f"mqtt://{HOST}:{broker.port}"), announce=lambda _line: None)
        await fleet.start()
        try:
            relay = fleet.relay
            assert relay is not None and relay.relay.connections == 1 and fleet.built_devices() == []
            kept, racing = fleet.serials[0], fleet.serials[1]  # among the touched devices
            touched, untouched = fleet.serials[:TOUCHED], fleet.serials[TOUCHED:]
            async with RelayApp(port=broker.port).connected() as app:
                for serial, name in ((kept, "kept"), (racing, "first")):
                    assert (await app.request(relay.topics(serial), login("admin", "admin")))[0] == CHANGED
                    assert (await app.request(relay.topics(serial), put_name(name)))[0] == CHANGED
                draw = random.Random(15)
                answered = 0
                for _ in range(5):  # getName on several devices at once, each round
                    answers = await asyncio.gather(
                        *(app.request(relay.topics(s), GET_NAME) for s in draw.sample(touched, 6))
                    )
                    answered += sum(status == CONTENT for status, _ in answers)
                assert answered == 30
                # The round the broker dies in: a second rename of one device and getName on six
                # others, at once. The rename's change event (after its write is durable, before its
                # answer leaves) kills the broker: that request is in flight when it dies.
                unsubscribe = fleet.devices[racing].subscribe(lambda _event: broker.kill())
                try:
                    outcomes = await asyncio.gather(
                        app.request(relay.topics(racing), put_name("raced"), timeout=2.0),
                        *(
                            app.request(relay.topics(s), GET_NAME, timeout=2.0)
                            for s in draw.sample(touched, 6)
                        ),
                        return_exceptions=True,
                    )
                finally:
                    unsubscribe()
            assert broker.process is None  # killed mid-round
            assert all(isinstance(o, tuple | TimeoutError | aiomqtt.MqttError) for o in outcomes), outcomes
            assert not isinstance(outcomes[0], tuple)  # the rename was never acknowledged
            await wait_for(lambda: not relay.relay.connected, 10)
            built_before = set(fleet.built_devices())
            assert {kept, racing} <= built_before <= set(touched)

            broker.start()
            await broker.wait_listening()
            await wait_for(lambda: relay.relay.connected and relay.relay.connections == 2, 30)
            async with RelayApp(port=broker.port).connected() as app:
                # Every device was subscribed again and answers: built before the outage or not.
                for start in range(0, COUNT, 25):
                    batch = fleet.serials[start : start + 25]
                    answers = await asyncio.gather(*(app.request(relay.topics(s), GET_NAME) for s in batch))
                    assert [status for status, _ in answers] == [CONTENT] * len(batch)
                assert set(fleet.built_devices()) == set(fleet.serials)
                assert set(untouched).isdisjoint(built_before)
                # The rename acknowledged before the outage reads back through the relay.
                status, body = await app.request(relay.topics(kept), GET_SUPERVISOR_NAME)
                assert (status, body.rstrip(b"\0")) == (CONTENT, b"kept")
                # The rename in flight was written before the broker died: it is there, unacknowledged.
                status, body = await app.request(relay.topics(racing), GET_SUPERVISOR_NAME)
                assert (status, body.rstrip(b"\0")) == (CONTENT, b"raced")
                # The sender's session outlived the broker: it writes again without a new login.
                assert (await app.request(relay.topics(racing), put_name("after")))[0] == CHANGED
        finally:
            await fleet.stop()
    finally:
        broker.kill()
    # Durable: a fleet reopening the state file (relay off) holds every acknowledged write.
    reopened = Fleet(options(tmp_path, fmt, "off"), announce=lambda _line: None)
    await reopened.start()
    try:
        assert reopened.seeded == 0
        names = {
            serial: reopened.devices[serial].build().live(GROUP, SUPERVISOR).values[NAME]  # type: ignore[union-attr]
            for serial in (kept, racing, fleet.serials[-1])
        }
        assert names == {kept: "kept", racing: "after", fleet.serials[-1]: "supervisor"}
    finally:
        await reopened.stop()
