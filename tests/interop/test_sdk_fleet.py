"""The real SDK's MQTT relay (`@iotize/device-com-mqtt.js`) against a 200-device `Fleet` (what
``tap-emulator fleet`` runs) through Mosquitto on 127.0.0.1:1883.

Covered: every GroupService call with SCRAM login and the identity on three random devices at once
(test_sdk_mqtt's scenario, as for one device); a rename, anonymous reads on two others (each device its
own groups), only the commanded devices built, and a net key written through the SDK moving that device
(alone) to its new topics, its K cached for the next start.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from sdk import require_sdk, run_sdk_async
from test_sdk_mqtt import every_group_service_call

from tap_emulator.fleet import RELAY_KEY_META, Fleet, FleetOptions

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

BROKER = ("127.0.0.1", 1883)
BROKER_URL = "mqtt://127.0.0.1:1883"
SUPERVISOR = 0xFFFE


def require_broker() -> None:
    try:
        socket.create_connection(BROKER, timeout=1).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto is not listening on 127.0.0.1:1883 ({exc})")


def call(name: str, *args: Any) -> dict[str, Any]:
    return {"call": name, "args": list(args)}


def login(username: str, password: str) -> dict[str, Any]:
    return call("auth.login", {"username": username, "password": password})


def ok(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["body"]


async def sdk(serial: str, steps: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
    return await run_sdk_async(
        steps,
        transport="mqtt",
        host=BROKER[0],
        port=BROKER[1],
        timeout=60,
        send_timeout_ms=5000,
        options={"serialNumber": serial, **options},
    )


async def test_the_sdk_logs_in_renames_and_moves_a_net_key_on_random_devices_of_a_fleet(
    tmp_path: Path,
) -> None:
    require_sdk()
    require_broker()
    lines: list[str] = []
    fmt = "EMUS" + uuid.uuid4().hex[:6].upper() + "{:05d}"
    fleet = Fleet(
        FleetOptions(
            count=200, serial_format=fmt, state=str(tmp_path / "fleet.sqlite3"), store="off", mqtt=BROKER_URL
        ),
        announce=lines.append,
    )
    await fleet.start()
    try:
        assert lines == [f"listening mqtt 200-devices {BROKER_URL}"]
        assert fleet.built_devices() == []
        chosen, *others = random.Random(3).sample(fleet.serials, 3)
        results = await sdk(
            chosen,
            [
                call("device.getSerialNumber"),
                login("admin", "admin"),
                call("group.putName", SUPERVISOR, "night-shift"),
                call("group.getName", SUPERVISOR),
                call("mqtt.putRelayNetKey", "othernetkey"),
            ],
        )
        assert ok(results[0]) == chosen
        assert ok(results[1])["key"] is not None  # SCRAM: the SDK encrypts from here on
        ok(results[2])
        assert ok(results[3]) == "night-shift"
        ok(results[4])  # answered on the old topics; the device then moves to its new ones
        for serial in others:
            read = await sdk(serial, [call("group.getName", SUPERVISOR), call("device.getSerialNumber")])
            assert [ok(r) for r in read] == ["supervisor", serial]
        assert sorted(fleet.built_devices()) == sorted([chosen, *others])
        await fleet.settled()
        moved = await sdk(chosen, [call("group.getName", SUPERVISOR)], netkey="othernetkey")
        assert ok(moved[0]) == "night-shift"
        state_file = fleet.state_file
        assert state_file is not None
        cached = state_file.meta_of_all_sync(RELAY_KEY_META)
        assert (
            cached[chosen] != cached[others[0]]
            and cached[chosen].split(":")[1] == fleet.devices[chosen].relay_key
        )
    finally:
        await fleet.stop()


async def test_every_group_service_call_on_three_random_devices_of_a_200_device_fleet(tmp_path: Path) -> None:
    require_sdk()
    require_broker()
    fmt = "EMUS" + uuid.uuid4().hex[:6].upper() + "{:05d}"
    fleet = Fleet(
        FleetOptions(
            count=200, serial_format=fmt, state=str(tmp_path / "f.sqlite3"), store="off", mqtt=BROKER_URL
        ),
        announce=lambda _line: None,
    )
    await fleet.start()
    try:
        chosen = random.sample(fleet.serials, 3)
        await asyncio.gather(*(every_group_service_call(serial) for serial in chosen))
        assert sorted(fleet.built_devices()) == sorted(chosen)
        assert fleet.relay is not None and fleet.relay.relay.connections == 1
    finally:
        await fleet.stop()
