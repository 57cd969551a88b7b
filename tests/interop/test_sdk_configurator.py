"""The real SDK's configurator (npm @iotize/tap 2.7.0, ``tap.configurator.setup`` / ``applyConfig``)
provisions the emulator, in each security mode, over TCP and WebSocket; the device then behaves as
configured.

One Node run per mode and transport (the SDK driver runs every step on one Tap object):

1. admin logs in with the factory password and runs the configurator on a tap-config of three profiles
   (one with a user), two bundles and six variables of six types: factory reset, in SCRAM a new key
   from ``/1024//47`` in clear, every call (``/1024//10`` ``/6`` ``/9`` ``/42``, groups, bundles,
   access lists, variables), logout; then logs in with the new password and applies the config;
2. every group (and anonymous) reads and writes through ``tap.data``: what its access lists allow
   succeeds, the rest is refused with 0x81;
3. a multi-request frame (``executeMultipleCalls``) answers each of its sub-requests;
4. a reboot answers, drops the connection and keeps the state (the SDK reconnects and logs in as a
   configured user); a factory reset answers, keeps the caller's connection as admin and brings back
   the profile (the configured groups and data are gone).

A device booted from the same file (``--tap-config``) holds the same groups and rights.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sdk import require_sdk, run_sdk_async
from test_sdk_emulator import HOST, LOGOUT, TRANSPORTS, call, login, ok

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.codec import tlv
from tap_emulator.config import SecurityMode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(150)]

UNAUTHORIZED, NOT_FOUND, CONTENT = 0x81, 0x84, 0x45
ADMIN = 0xFFFF
SDK_TIMEOUT = 90
NEW_ADMIN_PASSWORD = "newadmin"

SECURITY = {
    SecurityMode.NONE: {"scramActivated": False, "hashPassword": False},
    SecurityMode.HASH: {"scramActivated": False, "hashPassword": True},
    SecurityMode.SCRAM: {"scramActivated": True, "hashPassword": True},
}

# Bundle 1 "sensors": tech writes, viewer and anonymous read. Bundle 2 "control": operator writes, tech
# reads. Admin holds both (the SDK sends its entry as the 3 bytes 61 FF 03).
BUNDLES: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": "sensors",
        "dataLog": {"period": 10},
        "acls": {
            "tech": {"read": True, "write": True},
            "viewer": {"read": True, "write": False},
            "anonymous": {"read": True, "write": False},
            "admin": {"read": True, "write": True},
        },
        "variables": [
            {"id": 10, "address": "0x20000000", "dataType": "FLOAT32", "domain": "TARGET",
             "meta": {"name": "temperature", "unit": "C"}},
            {"id": 11, "address": "0x20000004", "dataType": "UINT16", "domain": "TARGET",
             "meta": {"name": "humidity", "unit": "%"}},
            {"id": 12, "address": "0x20000008", "dataType": "INT8", "domain": "TARGET", "length": 4,
             "meta": {"name": "offsets"}},
        ],
    },
    {
        "id": 2,
        "name": "control",
        "dataLog": {"period": 0},
        "acls": {
            "tech": {"read": True, "write": False},
            "operator": {"read": True, "write": True},
            "admin": {"read": True, "write": True},
        },
        "variables": [
            {"id": 20, "address": "0x20000010", "dataType": "UINT32", "domain": "TARGET",
             "meta": {"name": "setpoint"}},
            {"id": 21, "address": "0x20000014", "dataType": "BOOLEAN", "domain": "TARGET",
             "meta": {"name": "running"}},
            {"id": 22, "address": "0x20000018", "dataType": "ASCII", "domain": "TARGET", "length": 8,
             "meta": {"name": "label"}},
        ],
    },
]  # fmt: skip

PROFILES: list[dict[str, Any]] = [
    {"username": "admin", "password": NEW_ADMIN_PASSWORD, "lifeTime": 600},
    {
        "username": "tech",
        "id": 1,
        "password": "techpw",
        "lifeTime": 120,
        "users": [{"username": "bob", "id": 11, "password": "bobpw"}],
    },
    {"username": "viewer", "id": 2, "password": "viewpw", "lifeTime": 60},
    {"username": "operator", "id": 3, "password": "operpw", "lifeTime": 60},
    {"username": "anonymous"},
]


def tap_config(mode: SecurityMode) -> dict[str, Any]:
    return {
        "meta": {},
        "config": {
            "version": "1.2.3",
            "application": {"name": "Emulated demo"},
            "tap": {"security": SECURITY[mode], "scram": {"hashIteration": 1000}},
            "data": {"profiles": PROFILES, "bundles": BUNDLES},
        },
    }


def data_api_config() -> dict[str, Any]:
    """config.data as ``tap.data.configureWithDataConfig`` takes it (names, types, lengths)."""
    return {
        "bundles": [
            {
                "id": b["id"],
                "name": b["name"],
                "variables": [
                    {
                        "id": v["id"],
                        "dataType": v["dataType"],
                        "length": v.get("length", 1),
                        "meta": v["meta"],
                    }
                    for v in b["variables"]
                ],
            }
            for b in BUNDLES
        ]
    }


DATA = call("data.configureWithDataConfig", data_api_config())


def read_bundle(name: str) -> dict[str, Any]:
    return {"call": "data.bundle", "args": [name], "then": {"call": "read", "args": []}}


def read_variable(name: str) -> dict[str, Any]:
    return {"call": "data.variable", "args": [name], "then": {"call": "read", "args": []}}


def write_variable(name: str, value: Any) -> dict[str, Any]:
    return {"call": "data.variable", "args": [name], "then": {"call": "write", "args": [value]}}


def forget_session() -> list[dict[str, Any]]:
    """What an app does after its connection was dropped: drop the SDK's keys and cached login mode."""
    return [{"call": "encryption.stop"}, {"call": "auth.clearCache"}]


@contextlib.asynccontextmanager
async def device(
    tmp_path: Path, mode: SecurityMode, tap_config_path: str | None = None
) -> AsyncIterator[Emulator]:
    require_sdk()
    emulator = Emulator(
        ServeOptions(
            tap_config=tap_config_path,
            state=str(tmp_path / "device.sqlite3"),
            coap=None,
            tcp=Endpoint(HOST, 0),
            ws=Endpoint(HOST, 0),
            http=None,
            security=None if tap_config_path else mode,
            store="off",
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def run(emulator: Emulator, transport: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    address = emulator.tcp_address if transport == "tcp" else emulator.ws_address
    assert address is not None
    return await run_sdk_async(steps, transport=transport, host=HOST, port=address[1], timeout=SDK_TIMEOUT)


class Script:
    """Steps with a label each, so checks read ``result["tech writes temperature"]``."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.labels: list[str] = []

    def add(self, label: str, *steps: dict[str, Any]) -> None:
        for index, step in enumerate(steps):
            self.steps.append(step)
            self.labels.append(label if index == len(steps) - 1 else f"{label} ({index})")

    def results(self, raw: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        assert len(raw) == len(self.steps), raw[-1]
        return dict(zip(self.labels, raw, strict=True))


def rights_steps(script: Script) -> None:
    """Each group reads and writes through tap.data; the expectations are in `check_rights`."""
    script.add("anonymous reads sensors", DATA, read_bundle("sensors"))
    script.add("anonymous writes temperature", write_variable("temperature", 1.5))
    script.add("anonymous reads setpoint", read_variable("setpoint"))
    script.add("tech logs in", login("tech", "techpw"))
    script.add("tech writes temperature", write_variable("temperature", 30.25))
    script.add("tech writes offsets", write_variable("offsets", [-3, -1, 1, 3]))
    script.add("tech reads control", read_bundle("control"))
    script.add("tech writes setpoint", write_variable("setpoint", 7))
    script.add("tech logs out", LOGOUT)
    script.add("bob logs in", login("bob", "bobpw"))
    script.add("bob writes humidity", write_variable("humidity", 55))
    script.add("bob writes running", write_variable("running", 1))
    script.add("bob logs out", LOGOUT)
    script.add("viewer logs in", login("viewer", "viewpw"))
    script.add("viewer reads sensors", read_bundle("sensors"))
    script.add("viewer writes humidity", write_variable("humidity", 1))
    script.add("viewer reads control", read_bundle("control"))
    script.add("viewer logs out", LOGOUT)
    script.add("operator logs in", login("operator", "operpw"))
    script.add("operator writes setpoint", write_variable("setpoint", 2024))
    script.add("operator writes running", write_variable("running", 1))
    script.add("operator reads control", read_bundle("control"))
    script.add("operator reads temperature", read_variable("temperature"))
    script.add("operator logs out", LOGOUT)


def check_rights(r: dict[str, dict[str, Any]]) -> None:
    def refused(label: str) -> None:
        assert not r[label]["ok"] and r[label]["status"] == UNAUTHORIZED, (label, r[label])

    assert ok(r["anonymous reads sensors"]) == {"temperature": 0.0, "humidity": 0, "offsets": [0, 0, 0, 0]}
    refused("anonymous writes temperature")
    refused("anonymous reads setpoint")
    ok(r["tech writes temperature"]), ok(r["tech writes offsets"])
    assert ok(r["tech reads control"]) == {"setpoint": 0, "running": False, "label": ""}
    refused("tech writes setpoint")
    ok(r["bob writes humidity"])  # a user holds its profile's rights through its alias
    refused("bob writes running")
    assert ok(r["viewer reads sensors"]) == {"temperature": 30.25, "humidity": 55, "offsets": [-3, -1, 1, 3]}
    refused("viewer writes humidity")
    refused("viewer reads control")
    ok(r["operator writes setpoint"]), ok(r["operator writes running"])
    assert ok(r["operator reads control"]) == {"setpoint": 2024, "running": True, "label": ""}
    refused("operator reads temperature")


MULTI = {
    "call": "multi",
    "calls": [
        {"service": "variable", "fn": "getValueCall", "args": [10]},
        {"service": "variable", "fn": "getValueCall", "args": [20]},  # control: tech only reads
        {"service": "variable", "fn": "getValueCall", "args": [99]},  # no such variable
        {"service": "bundle", "fn": "getNameCall", "args": [2]},
        {"service": "interface", "fn": "getCurrentGroupIdCall", "args": []},
    ],
}


def check_multi(result: dict[str, Any]) -> None:
    answers = ok(result)
    assert [a["status"] for a in answers] == [CONTENT, CONTENT, NOT_FOUND, CONTENT, CONTENT]
    assert answers[0]["body"] == {"hex": struct.pack(">f", 30.25).hex()}
    assert answers[1]["body"] == {"hex": (2024).to_bytes(4, "big").hex()}
    assert answers[3]["body"] == "control"
    assert answers[4]["body"] == 1  # tech's group id


@pytest.mark.parametrize("mode", list(SECURITY), ids=[m.value for m in SECURITY])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_sdk_configurator_provisions_the_device_and_the_device_behaves_as_configured(
    tmp_path: Path, transport: str, mode: SecurityMode
) -> None:
    script = Script()
    script.add("admin logs in", login("admin", "admin"))
    script.add("configure", {"call": "configure", "config": tap_config(mode)})
    script.add("admin logs in again", login("admin", NEW_ADMIN_PASSWORD))
    script.add("apply", call("configurator.applyConfig", "1.2.3"))
    script.add("config version", call("interface.getConfigVersion"))
    script.add("app name", call("interface.getAppName"))
    script.add("security options", call("interface.getSecurityOptions"))
    script.add("acl of admin", call("variable.getCurrentAccess", 20))
    script.add("admin logs out", LOGOUT)
    rights_steps(script)
    script.add("tech multi", login("tech", "techpw"), MULTI)
    script.add("tech logs out after multi", LOGOUT)
    # Reboot: answered, then the connection drops; the state stays.
    script.add("admin reboots", login("admin", NEW_ADMIN_PASSWORD), call("device.reboot"))
    script.add("after reboot", call("interface.getCurrentGroupId"))
    script.add("reconnect", {"call": "disconnect"}, *forget_session(), {"call": "connect"})
    script.add("bob after reboot", login("bob", "bobpw"), DATA, read_variable("temperature"))
    script.add("bob logs out after reboot", LOGOUT)
    # Factory reset: answered, the caller's connection stays admin's, the profile is back.
    script.add("admin resets", login("admin", NEW_ADMIN_PASSWORD), call("device.factoryReset"))
    script.add("still admin", call("interface.getCurrentGroupId"))
    script.add("tech is gone", call("group.getName", 1))
    script.add("no variable", call("variable.getValue", 10))
    script.add("factory config version", call("interface.getConfigVersion"))
    script.add("admin logs out after reset", LOGOUT)
    script.add("factory admin", *forget_session(), login("admin", "admin"))
    script.add("factory admin logs out", LOGOUT)
    script.add("tech refused", login("tech", "techpw"))

    async with device(tmp_path, mode) as emulator:
        r = script.results(await run(emulator, transport, script.steps))
        assert emulator.tree is not None
        # Python's view of the device after the factory reset: the profile's groups only.
        assert sorted(emulator.tree.live_instances(1025)) == [0, 0xFFFE, 0xFFFF]

    for label in ("admin logs in", "admin logs in again", "apply"):
        ok(r[label])
    configured = ok(r["configure"])["calls"]
    assert configured[0] == "3 /1024//10" and configured[-1] == "3 /1024//10"
    assert configured.count("2 /1029/{variableId}/65535") == 6
    assert configured.count("3 /1028/{bundleId}/0") == 7  # one access-list entry per acl, admin's included
    assert ("3 /1024//6" in configured[:3]) is (mode is SecurityMode.SCRAM)  # the 1-byte 0x10 write
    assert ok(r["config version"]) == "1.2.3"
    assert ok(r["app name"]) == "Emulated demo"
    options = ok(r["security options"])
    assert (options["scramActivated"], options["hashPassword"]) == (
        SECURITY[mode]["scramActivated"],
        SECURITY[mode]["hashPassword"],
    )
    assert ok(r["acl of admin"]) == {"header": 0x61, "groupId": ADMIN, "write": True, "read": True}
    check_rights(r)
    check_multi(r["tech multi"])

    ok(r["admin reboots"])
    assert not r["after reboot"]["ok"], r["after reboot"]  # the device dropped the connection
    assert ok(r["bob after reboot"]) == 30.25
    ok(r["admin resets"])
    assert ok(r["still admin"]) == ADMIN
    assert r["tech is gone"]["status"] == NOT_FOUND
    assert r["no variable"]["status"] == NOT_FOUND
    assert ok(r["factory config version"]) == "0.0.0"
    ok(r["factory admin"])
    assert not r["tech refused"]["ok"]
    assert r["tech refused"]["error"]["code"] == "TapAuthErrorInvalidCredentials", r["tech refused"]


async def test_a_device_booted_from_the_tap_config_file_holds_what_the_configurator_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tap-config.json"
    path.write_text(json.dumps(tap_config(SecurityMode.SCRAM)), encoding="utf-8")
    script = Script()
    script.add("admin logs in", login("admin", NEW_ADMIN_PASSWORD))
    script.add("config version", call("interface.getConfigVersion"))
    script.add("app name", call("interface.getAppName"))
    script.add("bundle 1 values", call("bundle.getValues", 1))
    script.add("admin logs out", LOGOUT)
    rights_steps(script)
    async with device(tmp_path, SecurityMode.SCRAM, str(path)) as emulator:
        r = script.results(await run(emulator, "tcp", script.steps))
        assert emulator.tree is not None and emulator.tree.security_mode is SecurityMode.SCRAM
    ok(r["admin logs in"])
    assert ok(r["config version"]) == "1.2.3"
    assert ok(r["app name"]) == "Emulated demo"
    (node,) = tlv.decode(bytes.fromhex(ok(r["bundle 1 values"])["hex"]))
    assert [c.id for c in node.value if isinstance(c, tlv.TlvNode)] == [10, 11, 12]
    check_rights(r)
