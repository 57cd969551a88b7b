"""The trace (tap_emulator.trace) and ``tap-emulator trace replay``: bounded file and ring, subscribers,
and a CoAP trace replayed against another device reproduces its writes and statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import aiocoap

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.trace import MAX_SUBSCRIBERS, Trace

REPO = Path(__file__).resolve().parents[2]


def test_the_file_rotates_past_its_bound_and_the_ring_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    trace = Trace(str(path), keep=5, max_bytes=2000, clock=lambda: 1.0)
    for i in range(100):
        trace.record("coap", "127.0.0.1:1", f"/1025/{i}/0", "GET", 0x45)
    trace.close()
    assert path.stat().st_size <= 2000 and (tmp_path / "t.jsonl.1").stat().st_size <= 2000
    assert [e["path"] for e in trace.recent] == [f"/1025/{i}/0" for i in range(95, 100)]
    last = json.loads(path.read_text().splitlines()[-1])
    assert last == {
        "time": 1.0, "face": "coap", "peer": "127.0.0.1:1", "session": None, "path": "/1025/99/0",
        "method": "GET", "status": "2.05", "request_bytes": 0, "response_bytes": 0, "latency_ms": 0.0,
        "fault": None,
    }  # fmt: skip


def test_inactive_until_a_sink_a_subscriber_or_enable() -> None:
    trace = Trace()
    states = [trace.active]
    with trace.subscribe() as queue:
        assert queue is not None
        states.append(trace.active)
        trace.record("tcp", "p", "/3//0", "GET", 0x45, session=3)
        assert queue.get_nowait()["session"] == 3
    states.append(trace.active)
    trace.enable()
    states.append(trace.active)
    assert states == [False, True, False, True]


def test_subscribers_are_capped() -> None:
    trace = Trace()
    with contextlib.ExitStack() as stack:
        queues = [stack.enter_context(trace.subscribe()) for _ in range(MAX_SUBSCRIBERS + 1)]
    assert queues[-1] is None and all(q is not None for q in queues[:-1])


async def start(tmp_path: Path, name: str, trace: str | bool = False) -> Emulator:
    emulator = Emulator(
        ServeOptions(
            state=str(tmp_path / f"{name}.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None, ws=None, http=None, store="off", trace=trace,
        ),
        announce=lambda _line: None,
    )  # fmt: skip
    await emulator.start()
    return emulator


async def test_a_coap_trace_replayed_against_a_fresh_device_reproduces_it(tmp_path: Path) -> None:
    trace_path = tmp_path / "bench.jsonl"
    recorded = await start(tmp_path, "a", str(trace_path))
    context = await aiocoap.Context.create_client_context()
    try:
        assert recorded.coap_address is not None
        uri = f"coap://127.0.0.1:{recorded.coap_address[1]}"
        for code, path, body in (
            (aiocoap.POST, "/1025/12/65535", b""),
            (aiocoap.PUT, "/1025/12/0", b"replayed"),
            (aiocoap.POST, "/1025/12/2", b"a-password"),
            (aiocoap.GET, "/1025/12/0", b""),
            (aiocoap.GET, "/1025/99/0", b""),
        ):
            await asyncio.wait_for(
                context.request(aiocoap.Message(code=code, uri=uri + path, payload=body)).response, 5
            )
    finally:
        await context.shutdown()
        await recorded.stop()
    assert "a-password" not in trace_path.read_text() and b"a-password".hex() not in trace_path.read_text()
    fresh = await start(tmp_path, "b")
    try:
        assert fresh.coap_address is not None
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tap_emulator", "trace", "replay", str(trace_path),
            "--to", f"127.0.0.1:{fresh.coap_address[1]}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert fresh.tree is not None
        name = fresh.tree.live(1025, 12)
    finally:
        await fresh.stop()
    text = out.decode()
    assert process.returncode == 0, text + err.decode()
    assert "PUT /1025/12/0 -> 2.04" in text and "GET /1025/99/0 -> 4.04" in text
    assert "4 request(s) replayed, 0 answered differently, 1 skipped" in text
    assert name is not None and "replayed" in json.dumps(name.values)


async def test_replay_of_a_file_that_is_not_a_trace_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tap_emulator", "trace", "replay", str(bad), "--to", "127.0.0.1:9",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2 and "not a trace event" in err.decode()
