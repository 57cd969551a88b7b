"""The real SDK (npm @iotize/tap 2.7.0) reads and writes the emulator's variables and bundles.

The emulator runs the demo profile (resources/profiles/demo.toml). Each group logs in through the SDK
and uses ``tap.service.variable`` / ``tap.service.bundle`` and ``tap.data`` (configured with the same
data config, so the SDK's own converters decode bundle values and variables): tech reads and writes
the sensors and only reads the control bundle; supervisor writes control and is refused sensors;
anonymous reads sensors only. Refusals come back as the SDK reports them (status 0x81; 0x84 as
``TapDataErrorVariableNotConfigured`` / ``TapDataErrorBundleNotConfigured``). A variable the SDK writes
is read over CoAP and notifies a CoAP observer of the variable, of ``/1029/{v}`` and of the bundle.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from sdk import hex_arg
from test_sdk_emulator import (
    HOST,
    LOGOUT,
    TRANSPORTS,
    _next,
    _observe,
    call,
    login,
    ok,
    running_emulator,
    sdk,
)

from tap_emulator.codec import tlv
from tap_emulator.config import SecurityMode, load_profile

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

UNAUTHORIZED = 0x81
DEMO = load_profile("demo")


def data_config() -> dict[str, Any]:
    """The demo profile's [data] as tap-config.json's config.data, plus a bundle the device lacks."""
    bundles: list[dict[str, Any]] = [
        {
            "id": b.id,
            "name": b.name,
            "variables": [
                {
                    "id": v.id,
                    "dataType": v.data_type,
                    "length": v.length,
                    "meta": {"name": v.name, "unit": v.unit},
                }
                for v in b.variables
            ],
        }
        for b in DEMO.data.bundles
    ]
    bundles.append(
        {
            "id": 9,
            "name": "ghost",
            "variables": [{"id": 99, "dataType": "UINT8", "meta": {"name": "phantom"}}],
        }
    )
    return {"bundles": bundles}


CONFIGURE = call("data.configureWithDataConfig", data_config())


def bundle_read(name: str) -> dict[str, Any]:
    return {"call": "data.bundle", "args": [name], "then": {"call": "read", "args": []}}


def variable_read(name: str) -> dict[str, Any]:
    return {"call": "data.variable", "args": [name], "then": {"call": "read", "args": []}}


def variable_write(name: str, value: Any) -> dict[str, Any]:
    return {"call": "data.variable", "args": [name], "then": {"call": "write", "args": [value]}}


def refused(result: dict[str, Any], status: int = UNAUTHORIZED) -> None:
    assert not result["ok"] and result["status"] == status, result


@pytest.mark.parametrize("security", [SecurityMode.SCRAM, SecurityMode.NONE], ids=["encrypted", "plain"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_group_reads_and_writes_what_its_access_lists_allow(
    tmp_path: Path, transport: str, security: SecurityMode
) -> None:
    async with running_emulator(tmp_path, profile="demo", security=security) as emulator:
        tech = await sdk(
            emulator,
            transport,
            [
                login("tech", "tech"),
                CONFIGURE,
                bundle_read("sensors"),
                variable_write("temperature", 30.25),
                variable_read("temperature"),
                call("variable.getValue", 10),
                call("variable.setValue", 11, hex_arg((77).to_bytes(2, "big"))),
                call("variable.putValue", 12, hex_arg(bytes([5, 6, 7, 8]))),
                call("bundle.getValues", 1),
                variable_read("setpoint"),  # control: tech reads
                variable_write("setpoint", 1),  # ... but does not write
                bundle_read("maintenance"),  # admin only
                call("variable.getCurrentAccess", 20),
                variable_read("phantom"),
                bundle_read("ghost"),
                call("variable.getType", 10),
                call("variable.getMeta", 10),
                call("bundle.getName", 2),
                call("variable.readProfile"),
                LOGOUT,
            ],
        )
        ok(tech[0])
        assert ok(tech[2]) == {"temperature": 21.5, "humidity": 40, "offsets": [-1, 0, 1, 2]}
        ok(tech[3])
        assert ok(tech[4]) == 30.25
        assert ok(tech[5]) == {"hex": struct.pack(">f", 30.25).hex()}
        ok(tech[6]), ok(tech[7])
        (node,) = tlv.decode(bytes.fromhex(ok(tech[8])["hex"]))
        assert [(c.id, c.value) for c in node.value if isinstance(c, tlv.TlvNode)] == [
            (10, struct.pack(">f", 30.25)),
            (11, (77).to_bytes(2, "big")),
            (12, bytes([5, 6, 7, 8])),
        ]
        assert ok(tech[9]) == 1500
        refused(tech[10])
        refused(tech[11])
        assert ok(tech[12]) == {"header": 0x41, "groupId": 3, "write": False, "read": True}
        assert tech[13]["error"]["code"] == "TapDataErrorVariableNotConfigured", tech[13]
        assert tech[14]["error"]["code"] == "TapDataErrorBundleNotConfigured", tech[14]
        assert ok(tech[15]) == {"domain": 0, "data": 19}
        assert ok(tech[16]) == {"name": "temperature", "unit": "C"}
        assert ok(tech[17]) == "control"
        (profile,) = tlv.decode(bytes.fromhex(ok(tech[18])["hex"]))  # GET /1029//4
        assert [c.id for c in profile.value if isinstance(c, tlv.TlvNode)] == [10, 11, 12, 20, 21, 22]

        supervisor = await sdk(
            emulator,
            transport,
            [
                login("supervisor", "supervisor"),
                CONFIGURE,
                variable_write("setpoint", 2024),
                bundle_read("control"),
                bundle_read("sensors"),
                variable_write("humidity", 1),
                call("variable.getCurrentAccess", 20),
                LOGOUT,
            ],
        )
        ok(supervisor[2])
        assert ok(supervisor[3]) == {"setpoint": 2024, "running": False, "label": ""}
        refused(supervisor[4])
        refused(supervisor[5])
        assert ok(supervisor[6]) == {"header": 0x61, "groupId": 0xFFFE, "write": True, "read": True}

        anonymous = await sdk(
            emulator,
            transport,
            [
                CONFIGURE,
                bundle_read("sensors"),
                variable_write("temperature", 1.0),
                variable_read("setpoint"),
            ],
        )
        assert ok(anonymous[1])["humidity"] == 77
        refused(anonymous[2])
        refused(anonymous[3])
        # The user alice holds her profile's (tech's) rights through its alias.
        alice = await sdk(
            emulator, transport, [login("alice", "alice"), CONFIGURE, variable_write("humidity", 55), LOGOUT]
        )
        ok(alice[2])
        assert emulator.tree is not None
        assert emulator.tree.memory.read(0x20000004, 2) == (55).to_bytes(2, "big")


async def test_a_variable_written_by_the_sdk_is_read_and_observed_over_coap(tmp_path: Path) -> None:
    async with running_emulator(tmp_path, profile="demo") as emulator:
        assert emulator.coap_address is not None
        base = f"coap://{HOST}:{emulator.coap_address[1]}"
        context = await aiocoap.Context.create_client_context()
        try:
            value_task, value_updates = await _observe(context, f"{base}/variable/20/value")
            bundle_task, bundle_updates = await _observe(context, f"{base}/1028/2/1")
            alias_task, alias_updates = await _observe(context, f"{base}/1029/31/4")
            assert await _next(value_updates, lambda _p: True) == (1500).to_bytes(4, "big").hex().encode()
            await _next(bundle_updates, lambda _p: True)
            await _next(alias_updates, lambda _p: True)
            results = await sdk(
                emulator,
                "tcp",
                [
                    login("supervisor", "supervisor"),
                    call("variable.setValue", 20, hex_arg((321).to_bytes(4, "big"))),
                ],
            )
            ok(results[1])
            wanted = (321).to_bytes(4, "big")
            assert await _next(value_updates, lambda p: p == wanted.hex().encode())
            # Variable 31 shares variable 20's address: its observer is told too.
            assert await _next(alias_updates, lambda p: p == wanted.hex().encode())
            bundle = await _next(bundle_updates, lambda p: wanted.hex().encode() in p)
            (node,) = tlv.decode(bytes.fromhex(bundle.decode()))
            assert node.id == 2 and node.value[0] == tlv.TlvNode(tlv.TlvType.RESOURCE_INSTANCE, 20, wanted)
            response = await asyncio.wait_for(
                context.request(aiocoap.Message(code=aiocoap.GET, uri=f"{base}/1029/20/4")).response, 5
            )
            assert response.payload == wanted.hex().encode()
            for task in (value_task, bundle_task, alias_task):
                task.cancel()
        finally:
            await context.shutdown()
