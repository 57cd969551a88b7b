"""The real SDK's MQTT relay (`@iotize/device-com-mqtt.js` 2.0.1 over npm mqtt 3.0.0) against the
emulator through Mosquitto on 127.0.0.1:1883.

Each test gives its device a serial of its own (uuid-based), so runs by others on the same broker never
share a topic. Covered: SCRAM login (encrypted channel) and every GroupService call; plain login with
the security mode overridden; the device's identity; a write refused to anonymous; the relay settings
of object 1024 (read, written, the password write-only, a net key change moving the topics); and
commands for another device, or malformed, answered by nothing; and the same GroupService run on three
random devices of a 200-device `FleetRelay` (one connection for all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sdk import hex_arg, require_sdk, run_sdk_async

from bench.fleet_relay import (
    GET_NAME,
    MemoryDevice,
    RelayApp,
    broker_settings,
    default_profile,
    fleet_serials,
)
from tap_emulator.app import Emulator, ServeOptions
from tap_emulator.codec.apdu import Method, TapRequest, encode_request
from tap_emulator.codec.mqtt_relay import RelayMessage, decode, encode, relay_key, relay_topics
from tap_emulator.config import PROFILES_DIR, SecurityMode
from tap_emulator.faces.mqtt import FleetRelay, relay_keys
from tap_emulator.security import derive_scram_keys, hash_login_password

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

BROKER = ("127.0.0.1", 1883)
BROKER_URL = "mqtt://127.0.0.1:1883"
ADMIN, SUPERVISOR = 0xFFFF, 0xFFFE
SDK_TIMEOUT = 60


def require_broker() -> None:
    try:
        socket.create_connection(BROKER, timeout=1).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto is not listening on 127.0.0.1:1883 ({exc}); .ci/run starts it")


def unique_serial() -> str:
    return "EMUT" + uuid.uuid4().hex[:12].upper()


def profile_with(tmp_path: Path, serial: str, *, relay_on: bool, net_key: str) -> str:
    """The default profile (its [mqtt] broker is Mosquitto on 127.0.0.1:1883) with a serial of its own."""
    text = (PROFILES_DIR / "default.toml").read_text().replace('"EMU0000000001"', f'"{serial}"')
    text = text.replace('net_key = "testnetkey"', f'net_key = "{net_key}"')
    if relay_on:
        text = text.replace("relay = false", "relay = true")
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return str(path)


def login(username: str, password: str) -> dict[str, Any]:
    return {"call": "auth.login", "args": [{"username": username, "password": password}]}


def call(name: str, *args: Any) -> dict[str, Any]:
    return {"call": name, "args": list(args)}


LOGOUT = {"call": "auth.logout"}
CURRENT_GROUP = {"call": "interface.getCurrentGroupId"}


def ok(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["body"]


@contextlib.asynccontextmanager
async def relayed_emulator(
    tmp_path: Path,
    *,
    security: SecurityMode | None = None,
    mqtt: str | None = BROKER_URL,
    relay_on: bool = False,
    net_key: str = "testnetkey",
) -> AsyncIterator[tuple[Emulator, str]]:
    require_sdk()
    require_broker()
    serial = unique_serial()
    lines: list[str] = []
    emulator = Emulator(
        ServeOptions(
            profile=profile_with(tmp_path, serial, relay_on=relay_on, net_key=net_key),
            state=str(tmp_path / "device.sqlite3"),
            coap=None,
            tcp=None,
            ws=None,
            http=None,
            mqtt=mqtt,
            security=security,
            store="off",
        ),
        announce=lines.append,
    )
    await emulator.start()
    try:
        assert f"listening mqtt {serial} {BROKER_URL}" in lines
        yield emulator, serial
    finally:
        await emulator.stop()


async def sdk(serial: str, steps: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
    return await run_sdk_async(
        steps,
        transport="mqtt",
        host=BROKER[0],
        port=BROKER[1],
        timeout=SDK_TIMEOUT,
        send_timeout_ms=5000,
        options={"serialNumber": serial, **options},
    )


async def every_group_service_call(serial: str) -> None:
    """SCRAM login (the encrypted channel), every GroupService call and the identity, through the SDK,
    on the device ``serial`` (alone, or one of a fleet)."""
    bob_key = derive_scram_keys(hash_login_password("bobpw"), b"\x5a\x01\x02\x03", 5000).to_password_key()
    admin = await sdk(
        serial,
        [
            call("device.getSerialNumber"),
            call("device.getManufacturer"),
            call("device.getFirmwareVersion"),
            login("admin", "admin"),
            CURRENT_GROUP,
            call("group.create", 56),
            call("group.putName", 56, "alice"),
            call("group.getName", 56),
            call("group.putSessionLifetime", 56, 3600),
            call("group.getSessionLifetime", 56),
            call("group.putAlias", 56, SUPERVISOR),
            call("group.getAlias", 56),
            call("group.changePassword", 56, "alicepw"),
            call("group.create", 57),
            call("group.putName", 57, "bob"),
            call("group.changePasswordKey", 57, hex_arg(bob_key)),
            call("group.getName", ADMIN),
            call("group.create", 56),
            LOGOUT,
        ],
    )
    assert [ok(admin[i]) for i in range(3)] == [serial, "IOTIZE", "1.118.0"]
    assert ok(admin[3])["key"] is not None  # SCRAM: the SDK encrypts from here on
    assert ok(admin[4]) == ADMIN
    assert admin[5]["status"] == 0x41
    assert [admin[i]["status"] for i in (6, 8, 10, 12, 15)] == [0x44] * 5
    assert [ok(admin[i]) for i in (7, 9, 11, 16)] == ["alice", 3600, SUPERVISOR, "admin"]
    assert not admin[17]["ok"] and admin[17]["status"] == 0x80  # the group already exists
    ok(admin[18])
    users = await sdk(
        serial,
        [
            login("alice", "alicepw"),
            CURRENT_GROUP,
            {"call": "interface.getCurrentProfileId"},
            LOGOUT,
            login("bob", "bobpw"),
            CURRENT_GROUP,
            call("group.putName", 56, "mallory"),  # bob (no profile of a writer) may not write
            LOGOUT,
            CURRENT_GROUP,
        ],
    )
    assert [ok(users[i]) for i in (1, 2, 5, 8)] == [56, SUPERVISOR, 57, 0]
    assert not users[6]["ok"] and users[6]["status"] == 0x81


async def test_scram_login_every_group_service_call_and_identity(tmp_path: Path) -> None:
    async with relayed_emulator(tmp_path) as (_emulator, serial):
        await every_group_service_call(serial)


async def test_plain_login_and_a_write_refused_to_anonymous(tmp_path: Path) -> None:
    async with relayed_emulator(tmp_path, security=SecurityMode.NONE) as (_emulator, serial):
        results = await sdk(
            serial,
            [
                call("group.putName", ADMIN, "root"),
                call("interface.getSecurityOptions"),
                login("admin", "admin"),
                CURRENT_GROUP,
                call("group.putName", SUPERVISOR, "super"),
                call("group.getName", SUPERVISOR),
                LOGOUT,
            ],
        )
    assert not results[0]["ok"] and results[0]["status"] == 0x81
    assert ok(results[1])["scramActivated"] is False  # plain login: nothing encrypted
    ok(results[2])
    assert [ok(results[i]) for i in (3, 5)] == [ADMIN, "super"]
    ok(results[6])


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_relay_settings_are_the_sdks_mqtt_service_and_a_net_key_change_moves_the_topics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with relayed_emulator(tmp_path) as (emulator, serial):
        relay = emulator.mqtt
        assert relay is not None and relay.relay.connections == 1
        first = await sdk(
            serial,
            [
                call("mqtt.getRelayNetKey"),
                call("mqtt.getBrokerHostname"),
                call("mqtt.putBrokerHostname", "broker.example"),  # anonymous may not
                login("admin", "admin"),
                call("mqtt.putBrokerHostname", "broker.example"),
                call("mqtt.getBrokerHostname"),
                call("mqtt.putBrokerPort", "18830"),
                call("mqtt.getBrokerPort"),
                call("mqtt.putBrokerPort", "http"),
                call("mqtt.getPassword"),
                call("mqtt.putPassword", "s3cret"),
            ],
        )
        assert ok(first[0]) == "testnetkey"
        assert ok(first[1]) == "127.0.0.1"  # the default profile's [mqtt] broker
        assert first[2]["status"] == 0x81
        assert ok(first[5]) == "broker.example" and ok(first[7]) == "18830"
        assert first[8]["status"] == 0x80  # not a port
        assert first[9]["status"] == 0x85  # the password is write-only
        ok(first[10])
        # --mqtt names the broker, so the device's broker host and port do not move the face (no
        # reconnect for them); its credentials do: the face reconnects with the new password.
        await wait_for(lambda: relay.relay.connections == 2 and relay.relay.connected)
        assert relay.broker() == BROKER
        second = await sdk(serial, [login("admin", "admin"), call("mqtt.putRelayNetKey", "othernetkey")])
        ok(second[1])  # answered on the old topics, then the face moves to the new ones
        new_command = relay_topics(serial, relay_key("othernetkey", serial)).command
        await wait_for(lambda: relay.topics[0] == new_command and relay.relay.connections == 3)
        await wait_for(lambda: relay.relay.connected)
        old = await sdk(serial, [call("device.getSerialNumber")], sendTimeoutMs=1500)
        new = await sdk(serial, [call("device.getSerialNumber")], netkey="othernetkey")
    assert not old[0]["ok"]
    assert ok(new[0]) == serial
    assert "s3cret" not in caplog.text and "othernetkey" not in caplog.text  # secrets are never logged


async def test_other_devices_commands_and_malformed_messages_get_no_answer(tmp_path: Path) -> None:
    async with relayed_emulator(tmp_path) as (_emulator, serial):
        topics = relay_topics(serial, relay_key("testnetkey", serial))
        wrong_key = relay_topics(serial, relay_key("wrong", serial))
        async with aiomqtt.Client(*BROKER, identifier=f"test-{uuid.uuid4().hex}") as client:
            await client.subscribe([(topics.answer, 0), (wrong_key.answer, 0)])
            frame = encode_request(TapRequest(Method.GET, 3, None, 2))  # the serial number
            await client.publish(wrong_key.command, encode(RelayMessage(1, 1, frame)))
            await client.publish(topics.command, b"not hex at all")
            await client.publish(topics.command, encode(RelayMessage(9, 77, frame))[:-2] + b"00")  # bad CRC
            await client.publish(topics.command, encode(RelayMessage(9, 78, frame)))
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
    assert message.topic.value == topics.answer
    answer = decode(bytes(message.payload))
    assert (answer.sender_id, answer.reference_id) == (9, 78)  # only the well-formed command is answered
    assert answer.frame == b"\x45" + serial.encode() + b"\x90\x00"


async def test_the_profile_can_turn_the_relay_on(tmp_path: Path) -> None:
    async with relayed_emulator(tmp_path, mqtt=None, relay_on=True, net_key="pk") as (_emulator, serial):
        results = await sdk(
            serial, [call("device.getSerialNumber"), call("mqtt.getRelayNetKey")], netkey="pk"
        )
    assert [ok(r) for r in results] == [serial, "pk"]


async def test_three_random_devices_of_a_200_device_fleet_on_one_connection() -> None:
    """The fleet relay (one broker connection, faces built at a device's first command): the SDK logs
    in, runs every GroupService call and reads the identity on three random devices of 200 (at once);
    a getName through the relay reaches each of the others."""
    require_sdk()
    require_broker()
    profile = default_profile()
    serials = fleet_serials(200)
    keys = await relay_keys("testnetkey", serials)
    devices = [MemoryDevice(profile, serial, keys[serial]) for serial in serials]
    fleet = FleetRelay(broker_settings(), clock=time.monotonic)
    fleet.add_many(devices)
    await fleet.start()
    try:
        chosen = random.sample(devices, 3)
        await asyncio.gather(*(every_group_service_call(device.serial_number) for device in chosen))
        assert {d.serial_number for d in devices if d.built} == {d.serial_number for d in chosen}
        assert fleet.faces_built == 3
        rest = [d for d in devices if not d.built]
        async with RelayApp().connected() as app:
            for start in range(0, len(rest), 40):
                answers = await asyncio.gather(
                    *(app.request(fleet.topics(d.serial_number), GET_NAME) for d in rest[start : start + 40])
                )
                assert answers == [(0x45, b"anonymous")] * len(answers)
        assert fleet.faces_built == 200 and fleet.relay.connections == 1
    finally:
        await fleet.stop()
        for device in devices:
            device.close()
