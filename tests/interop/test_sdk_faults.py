"""Faults on the Tap faces (TCP, WebSocket) as the real SDK sees them: a dropped request is a timeout, a
forced status is the SDK's error for that status, a corrupted answer is refused, a closed connection
fails the next call; the same seed twice gives the same results, and no acknowledged write is lost."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sdk import require_sdk, run_sdk_async
from test_sdk_emulator import ADMIN, HOST, TRANSPORTS, login

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.state import DeviceState

pytestmark = pytest.mark.interop
SEND_TIMEOUT_MS = 400


@contextlib.asynccontextmanager
async def faulty(tmp_path: Path, name: str, plan: dict[str, Any] | None = None) -> AsyncIterator[Emulator]:
    require_sdk()
    faults = None
    if plan is not None:
        faults = tmp_path / f"{name}.toml"
        faults.write_text(_toml(plan), encoding="utf-8")
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / f"{name}.sqlite3"),
            coap=None,
            tcp=Endpoint(HOST, 0),
            ws=Endpoint(HOST, 0),
            http=None,
            store="off",
            faults=None if faults is None else str(faults),
        ),
        announce=lambda _line: None,
    )
    emulator.trace.enable()
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def _toml(plan: dict[str, Any]) -> str:
    """The plan as the --faults file a user writes (a TOML subset: scalars and [[rules]] tables)."""

    def value(v: Any) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    lines = [f"seed = {plan.get('seed', 0)}"]
    for rule in plan.get("rules", []):
        lines.append("[[rules]]")
        lines += [f"{key} = {value(v)}" for key, v in rule.items()]
    return "\n".join(lines) + "\n"


async def sdk(emulator: Emulator, transport: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    address = emulator.tcp_address if transport == "tcp" else emulator.ws_address
    assert address is not None
    return await run_sdk_async(
        steps, transport=transport, host=HOST, port=address[1], timeout=30, send_timeout_ms=SEND_TIMEOUT_MS
    )


def outcome(result: dict[str, Any]) -> tuple[bool, Any, Any]:
    error = result.get("error") or {}
    return result["ok"], result.get("status"), error.get("code") if isinstance(error, dict) else error


FIRMWARE = {"call": "device.getFirmwareVersion"}
TRUE_FIRMWARE = "1.118.0"  # the default profile's
NAME = {"call": "group.getName", "args": [ADMIN]}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_forced_status_drop_and_corrupt_as_the_sdk_sees_them(tmp_path: Path, transport: str) -> None:
    plan = {
        "rules": [
            {"face": transport, "path": "/1025/*/0", "status": "5.03"},
            {"face": transport, "path": "/3//2", "drop": 1.0},
            {"face": transport, "path": "/3//3", "corrupt": 1.0},
        ]
    }
    async with faulty(tmp_path, "d", plan) as emulator:
        results = await sdk(
            emulator,
            transport,
            [
                {"call": "group.getName", "args": [0]},
                {"call": "device.getSerialNumber"},
                FIRMWARE,
                {"call": "device.getManufacturer"},
            ],
        )
        faults = [(e["path"], e["fault"]) for e in emulator.trace.recent if e["fault"]]
    # group.getName reads /1025/0/0 (the name): forced 5.03, the Tap's SERVICE_UNAVAILABLE (0xA3)
    assert outcome(results[0])[:2] == (False, 0xA3)
    assert outcome(results[1])[0] is False and "timeout" in str(results[1]["error"]).lower()
    # One flipped byte: an error status or trailer the SDK refuses, or a value that is not the firmware's.
    assert not results[2]["ok"] or results[2]["body"] != TRUE_FIRMWARE
    assert results[3]["ok"] is True  # the device still answers what no rule touches
    assert (
        ("/1025/0/0", "status 5.03") in faults
        and ("/3//2", "drop") in faults
        and ("/3//3", "corrupt") in faults
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_close_after_n_frames_fails_the_next_call(tmp_path: Path, transport: str) -> None:
    async with faulty(tmp_path, "d", {"rules": [{"face": transport, "close_after": 2}]}) as emulator:
        results = await sdk(emulator, transport, [FIRMWARE, FIRMWARE, FIRMWARE])
    assert [r["ok"] for r in results] == [True, True, False]
    assert results[0]["body"] == TRUE_FIRMWARE


RANDOM = [{"face": "tap", "drop": 0.25, "corrupt": 0.15, "delay_ms": 5, "jitter_ms": 20}]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_seed_gives_the_sdk_the_same_outcome_twice_and_loses_no_acknowledged_write(
    tmp_path: Path, transport: str
) -> None:
    steps = [login("admin", "admin")] + [
        step for i in range(8) for step in ({"call": "group.putName", "args": [0, f"n{i}"]}, NAME)
    ]
    runs = []
    for name in ("a", "b"):
        async with faulty(tmp_path, name, {"seed": 21, "rules": RANDOM}) as emulator:
            results = await sdk(emulator, transport, steps)
            faults = [(e["path"], e["fault"]) for e in emulator.trace.recent]
        runs.append(([outcome(r) for r in results], faults))
        acknowledged = [i for i in range(8) if results[1 + 2 * i]["ok"]]
        state = DeviceState(str(tmp_path / f"{name}.sqlite3"), clock=lambda: 0.0)
        try:
            stored = state.load().instances[(1025, 0)].values[0]
        finally:
            state.close()
        if acknowledged:
            assert int(stored[1:]) >= acknowledged[-1]
    assert runs[0] == runs[1]
    assert any(fault for _, fault in runs[0][1])
