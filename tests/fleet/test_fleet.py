"""`Fleet` in process: lazy devices, the relay keys cached in the state file (following each device's
own net key), a fleet that grows, the ``--security`` override of stored devices, and one device's factory
reset leaving the others alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tap_emulator.codec.mqtt_relay import relay_key, relay_topics
from tap_emulator.config import SecurityMode
from tap_emulator.fleet import RELAY_KEY_META, Fleet, FleetOptions, net_key_digest
from tap_emulator.model import Operation
from tap_emulator.tree import MAINTENANCE, Request

from .conftest import BROKER_URL, require_broker, unique_format, wait_for_store

GROUP, SUPERVISOR, NAME = 1025, 0xFFFE, 0
INTERFACE, NET_KEY = 1024, 55  # /1024//55: the relay's net key


def options(tmp_path: Path, fmt: str, count: int, **given: object) -> FleetOptions:
    values: dict[str, object] = {"store": "off", "mqtt": "off", "state": str(tmp_path / "fleet.sqlite3")}
    values.update(given)
    return FleetOptions(count=count, serial_format=fmt, **values)  # type: ignore[arg-type]


async def started(opts: FleetOptions) -> Fleet:
    fleet = Fleet(opts, announce=lambda _line: None)
    await fleet.start()
    return fleet


async def test_devices_are_built_at_first_use_only(tmp_path: Path) -> None:
    fleet = await started(options(tmp_path, unique_format(), 50))
    try:
        assert fleet.built_devices() == []
        device = fleet.devices[fleet.serials[7]]
        assert device.device_identity()["serial_number"] == fleet.serials[7]  # idle: from the profile
        tree = await device.sync_tree()
        assert fleet.built_devices() == [fleet.serials[7]]
        assert tree.device_identity() == device.device_identity()
        assert device.face().tree is tree and device.face() is device.face()
    finally:
        await fleet.stop()


async def test_the_relay_keys_are_cached_and_a_grown_fleet_derives_only_what_it_lacks(tmp_path: Path) -> None:
    require_broker()
    fmt = unique_format()
    fleet = await started(options(tmp_path, fmt, 5))  # the relay off: no key derived
    assert (fleet.seeded, fleet.keys_derived) == (5, 0)
    await fleet.stop()
    fleet = await started(options(tmp_path, fmt, 8, mqtt=BROKER_URL))
    try:
        assert (fleet.seeded, fleet.keys_derived) == (3, 8)  # 3 fresh, 5 stored without a key
        assert fleet.relay is not None and len(fleet.relay) == 8
        assert fleet.state_file is not None
        cached = fleet.state_file.meta_of_all_sync(RELAY_KEY_META)
        digest = net_key_digest("testnetkey")
        assert cached == {serial: f"{digest}:{fleet.devices[serial].relay_key}" for serial in fleet.serials}
    finally:
        await fleet.stop()
    fleet = await started(options(tmp_path, fmt, 8, mqtt=BROKER_URL))
    try:
        assert (fleet.seeded, fleet.keys_derived) == (0, 0)
        assert fleet.built_devices() == []
    finally:
        await fleet.stop()


async def test_security_override_switches_stored_devices_through_their_trees(tmp_path: Path) -> None:
    fmt = unique_format()
    await (await started(options(tmp_path, fmt, 3))).stop()
    fleet = await started(options(tmp_path, fmt, 4, security=SecurityMode.NONE))
    try:
        assert fleet.seeded == 1
        modes = {serial: device.build().security_mode for serial, device in fleet.devices.items()}
        assert set(modes.values()) == {SecurityMode.NONE}
    finally:
        await fleet.stop()
    fleet = await started(options(tmp_path, fmt, 4))
    try:  # the mode is the devices' own now: it stays without the option
        assert {device.build().security_mode for device in fleet.devices.values()} == {SecurityMode.NONE}
    finally:
        await fleet.stop()


async def test_a_factory_reset_resets_its_own_device_only(tmp_path: Path) -> None:
    fleet = await started(options(tmp_path, unique_format(), 3))
    try:
        first, second = (fleet.devices[serial] for serial in fleet.serials[:2])
        for device in (first, second):
            request = Request(Operation.WRITE, GROUP, SUPERVISOR, NAME, "renamed", caller=MAINTENANCE)
            assert (await device.build().handle(request)).status.is_success
        await first.factory_reset()
        names = [
            device.build().live(GROUP, SUPERVISOR).values[NAME]  # type: ignore[union-attr]
            for device in (first, second)
        ]
        assert names == ["supervisor", "renamed"]
        assert first.build().serial_number == fleet.serials[0]  # its own serial, not the profile's
    finally:
        await fleet.stop()


async def test_a_net_key_changed_while_the_relay_is_off_moves_the_device_at_the_next_start(
    tmp_path: Path,
) -> None:
    require_broker()
    fmt = unique_format()
    fleet = await started(options(tmp_path, fmt, 3))
    try:
        changed = fleet.serials[0]
        tree = fleet.devices[changed].build()
        write = Request(Operation.WRITE, INTERFACE, None, NET_KEY, "othernetkey", caller=MAINTENANCE)
        assert (await tree.handle(write)).status.is_success
        await fleet.settled()
    finally:
        await fleet.stop()
    fleet = await started(options(tmp_path, fmt, 3, mqtt=BROKER_URL))
    try:
        assert fleet.keys_derived == 2  # the two devices stored with the relay off; the changed one's K
        assert fleet.relay is not None  # was recorded when its net key changed
        for serial in fleet.serials:
            net_key = "othernetkey" if serial == changed else "testnetkey"
            assert fleet.relay.topics(serial)[0] == relay_topics(serial, relay_key(net_key, serial)).command
    finally:
        await fleet.stop()


async def test_syncing_every_device_builds_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    fleet = await started(options(tmp_path, unique_format(), 300, store=url))
    try:
        await asyncio.to_thread(wait_for_store, url, 300, 3 * 300)
        assert fleet.built_devices() == []  # reconciles read versions from the state; nothing to rewrite
        assert fleet.sync is not None and fleet.sync.stats.applied >= 3 * 300
    finally:
        await fleet.stop()
