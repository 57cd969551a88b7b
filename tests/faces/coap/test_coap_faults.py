"""Faults on the CoAP face with real clients (aiocoap, libcoap's coap-client-notls, raw datagrams):
drop (the client retransmits), forced status, delay, duplicate, corrupt, offline; the same seed twice
gives the same outcome, and no fault loses an acknowledged write."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.constants import TransportTuning
from rawcoap import GET
from rawcoap import request as raw_request

from tap_emulator.faults import FaultInjector, parse_fault_plan
from tap_emulator.state import DeviceState
from tap_emulator.testing import EmulatedTap


class QuickRetries(TransportTuning):  # type: ignore[misc]
    """Retransmit a lost CON after 50-75 ms instead of 2-3 s, so a drop costs the test little."""

    ACK_TIMEOUT = 0.05
    MAX_RETRANSMIT = 8


def device(tmp_path: Path, plan: dict[str, Any] | None = None, name: str = "d") -> EmulatedTap:
    return EmulatedTap(faces=("coap",), state=tmp_path / f"{name}.sqlite3", faults=plan)


async def request(
    context: Any, tap: EmulatedTap, method: str, path: str, payload: bytes = b"", timeout: float = 10
) -> Any:
    message = aiocoap.Message(
        code=getattr(aiocoap, method),
        uri=tap.coap_uri + path,
        payload=payload,
        transport_tuning=QuickRetries(),
    )
    return await asyncio.wait_for(context.request(message).response, timeout)


def faults_seen(tap: EmulatedTap) -> list[tuple[str, str | None, str | None]]:
    return [(e["path"], e["status"], e["fault"]) for e in tap.trace]


DROPS = {"seed": 11, "rules": [{"face": "coap", "drop": 0.4}]}


async def run_writes(tmp_path: Path, name: str) -> tuple[list[str], list[Any]]:
    context = await aiocoap.Context.create_client_context()
    try:
        async with device(tmp_path, DROPS, name) as tap:
            codes = []
            for i in range(12):
                response = await request(context, tap, "PUT", "/1025/0/0", f"name-{i}".encode())
                codes.append(str(response.code))
            final = await request(context, tap, "GET", "/1025/0/0")
            seen = faults_seen(tap)
    finally:
        await context.shutdown()
    return [*codes, final.payload.decode()], seen


async def test_drops_are_retransmitted_by_aiocoap_and_one_seed_gives_one_outcome(tmp_path: Path) -> None:
    first = await run_writes(tmp_path, "a")
    second = await run_writes(tmp_path, "b")
    codes, seen = first
    assert codes == ["2.04 Changed"] * 12 + ["name-11"]
    drops = [s for s in seen if s[2] == "drop"]
    assert drops and all(status is None for _, status, _ in drops)
    assert len(seen) > 13  # the dropped datagrams are in the trace, then the retransmission's answer
    assert second == first  # same seed, same traffic: the same datagrams were dropped


async def test_no_fault_loses_an_acknowledged_write(tmp_path: Path) -> None:
    plan = {
        "seed": 5,
        "rules": [{"face": "coap", "drop": 0.3, "duplicate": 0.3, "corrupt": 0.3, "delay_ms": 5}],
    }
    context = await aiocoap.Context.create_client_context()
    acknowledged: list[str] = []
    try:
        async with device(tmp_path, plan) as tap:
            for i in range(10):
                with contextlib.suppress(TimeoutError, aiocoap.error.Error):
                    response = await request(context, tap, "PUT", "/1025/0/0", f"w{i}".encode(), timeout=3)
                    if response.code.is_successful():
                        acknowledged.append(f"w{i}")
    finally:
        await context.shutdown()
    assert acknowledged
    state = DeviceState(str(tmp_path / "d.sqlite3"), clock=lambda: 0.0)
    try:
        stored = state.load().instances[(1025, 0)].values[0]
    finally:
        state.close()
    # The durable name is the last acknowledged write or a later one (a write whose answer was lost).
    assert int(stored[1:]) >= int(acknowledged[-1][1:])


async def test_forced_status_on_one_path_only(tmp_path: Path) -> None:
    plan = {"rules": [{"face": "coap", "path": "/1025/*/0", "status": "5.03"}]}
    context = await aiocoap.Context.create_client_context()
    try:
        async with device(tmp_path, plan) as tap:
            refused = await request(context, tap, "PUT", "/1025/0/0", b"never")
            other = await request(context, tap, "GET", "/3//0")
            tap.clear_faults()
            name = await request(context, tap, "GET", "/1025/0/0")
    finally:
        await context.shutdown()
    assert str(refused.code) == "5.03 Service Unavailable"
    assert other.code.is_successful()
    assert name.payload != b"never"  # the refused write was never served
    assert ("/1025/0/0", "5.03", "status 5.03") in faults_seen(tap)


def udp_exchange(port: int, datagram: bytes, expect: int, timeout: float = 3.0) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, ("127.0.0.1", port))
        return [sock.recv(2048) for _ in range(expect)]


async def test_duplicate_and_corrupt_answers_on_the_wire(tmp_path: Path) -> None:

    datagram = raw_request(GET, "/3//0", 0x1234, b"\x01\x02")
    async with device(tmp_path, {"rules": [{"face": "coap", "duplicate": 1.0}]}) as tap:
        port = int(tap.coap_uri.rsplit(":", 1)[1])
        one, two = await asyncio.to_thread(udp_exchange, port, datagram, 2)
        assert one == two and one[1] == 0x45  # the same 2.05 answer, twice
        tap.set_faults({"seed": 2, "rules": [{"face": "coap", "corrupt": 1.0}]})
        other = raw_request(GET, "/3//0", 0x2345, b"\x01\x02")
        [bad] = await asyncio.to_thread(udp_exchange, port, other, 1)
        tap.clear_faults()
        # The client's retransmission gets the true answer from the duplicate cache.
        [good] = await asyncio.to_thread(udp_exchange, port, other, 1)
    assert len(bad) == len(good) and sum(a != b for a, b in zip(bad, good, strict=True)) == 1
    assert good[1] == 0x45


async def test_offline_nothing_answers_then_it_answers_again(tmp_path: Path) -> None:

    async with device(tmp_path) as tap:
        port = int(tap.coap_uri.rsplit(":", 1)[1])
        tap.offline(30.0)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(udp_exchange, port, raw_request(GET, "/3//0", 1, b"\x09"), 1, 0.3)
        tap.clear_faults()
        [answer] = await asyncio.to_thread(udp_exchange, port, raw_request(GET, "/3//0", 2, b"\x09"), 1)
    assert answer[1] == 0x45
    assert any(fault == "offline" for _, _, fault in faults_seen(tap))


def first_dropped_seed() -> int:
    """A seed whose first CoAP request is dropped and whose second passes (found, not guessed)."""
    for seed in range(1000):
        injector = FaultInjector(lambda: 0.0)
        injector.set_plan(parse_fault_plan({"seed": seed, "rules": [{"face": "coap", "drop": 0.5}]}))
        if injector.decide("coap", "/3//0").drop and not injector.decide("coap", "/3//0").drop:
            return seed
    raise AssertionError("no such seed")


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin is not installed")
async def test_libcoap_retransmits_a_dropped_request_and_sees_a_forced_status(tmp_path: Path) -> None:
    seed = first_dropped_seed()
    plan = {
        "seed": seed,
        "rules": [{"face": "coap", "path": "/1025/*", "status": "5.03"}, {"face": "coap", "drop": 0.5}],
    }

    def coap_client(port: int, path: str) -> str:
        done = subprocess.run(
            ["coap-client-notls", "-v", "6", "-B", "10", f"coap://127.0.0.1:{port}{path}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return done.stdout + done.stderr

    async with device(tmp_path, plan) as tap:
        port = int(tap.coap_uri.rsplit(":", 1)[1])
        firmware = await asyncio.to_thread(coap_client, port, "/3//0")
        refused = await asyncio.to_thread(coap_client, port, "/1025/0/0")
    assert "c:2.05" in firmware and "IOTIZE" in firmware
    assert "c:5.03" in refused
    seen = faults_seen(tap)
    assert seen[0] == ("/3//0", None, "drop") and seen[1][:2] == ("/3//0", "2.05")


async def test_faults_on_a_wildcard_bind_the_udp6_transport(tmp_path: Path) -> None:
    """A wildcard bind uses aiocoap's udp6 transport, hooked by the same fault layer."""
    from tap_emulator.app import Emulator, Endpoint, ServeOptions

    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / "w.sqlite3"), coap=Endpoint("0.0.0.0", 0), tcp=None, ws=None, http=None,
            store="off",
        ),
        announce=lambda _line: None,
    )  # fmt: skip
    await emulator.start()
    try:
        emulator.trace.enable()
        emulator.faults.set_plan(
            parse_fault_plan({"seed": 3, "rules": [{"face": "coap", "duplicate": 1.0, "status": "5.03"}]})
        )
        assert emulator.coap_address is not None
        datagram = raw_request(GET, "/3//0", 0x3456, b"\x07")
        one, two = await asyncio.to_thread(udp_exchange, emulator.coap_address[1], datagram, 2)
        emulator.faults.set_plan(parse_fault_plan({"seed": 3, "rules": [{"face": "coap", "corrupt": 1.0}]}))
        other = raw_request(GET, "/3//0", 0x4567, b"\x07")
        [bad] = await asyncio.to_thread(udp_exchange, emulator.coap_address[1], other, 1)
        emulator.faults.clear()
        [good] = await asyncio.to_thread(udp_exchange, emulator.coap_address[1], other, 1)
    finally:
        await emulator.stop()
    assert one == two and one[1] == 0xA3  # 5.03, twice
    assert sum(a != b for a, b in zip(bad, good, strict=True)) == 1 and good[1] == 0x45
