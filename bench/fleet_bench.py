"""Fleet benchmarks: ``tap-emulator fleet`` processes of N = 1,000 and 10,000 devices against a fleet of
one, in the same run: start-up time, resident memory per idle device, and relayed getName p50 for a
random device through the broker (Mosquitto on 127.0.0.1:1883).

Why processes: start-up and RSS are what a user of the command sees, interpreter and all; the fleet of
one gives the fixed part (interpreter, imports, worker process not counted: it is a process of its own),
so ``(RSS(N) - RSS(1)) / (N - 1)`` is what one more idle device costs. Start-up is measured cold (a fresh
state file: seeding and every relay key derived) and warm (the same file again: keys from the meta), to
the ``listening mqtt`` line, which comes once every device is subscribed. getName runs with the app
side of `bench.fleet_relay` (the project's relay codec over aiomqtt, one request outstanding, as the SDK
has): each random device gets one untimed command first (its tree and face are built then), then the
timed rounds alternate the device alone and random devices of the fleet.

The store is the default one (SQLite beside the state file), so the sync task's per-device cost is in
the RSS; RSS is read once the store holds every device (after the cold start, so the allocator's
leftovers of seeding count too; the warm start's figure, without them, is in the details).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import time
import uuid
from pathlib import Path

from bench.fleet_relay import GET_NAME, RelayApp
from bench.procs import Server, ServerError, start_server
from bench.results import MetricResult, Target
from bench.runner import Settings
from tap_emulator.codec.mqtt_relay import relay_key, relay_topics
from tap_emulator.config import DEFAULT_NET_KEY

BROKER_URL = "mqtt://127.0.0.1:1883"
STARTUP_TARGET_S = 20.0  # for 10,000 devices (the issue's); printed against every N
RSS_TARGET_KB = 50.0
GETNAME_TARGET = 2.0
WARM_SETTLE_S = 3.0  # after a warm start, before its RSS is read (no seeding's garbage in it)


def _fleet_args(count: int, serial_format: str, state: Path) -> list[str]:
    return [
        "-m",
        "tap_emulator",
        "fleet",
        "--count",
        str(count),
        "--serial-format",
        serial_format,
        "--state",
        str(state),
        "--mqtt",
        BROKER_URL,
        "-q",
    ]


def _start(name: str, count: int, serial_format: str, state: Path, cwd: Path) -> tuple[Server, float]:
    """A fleet process and the seconds from its spawn to its ``listening mqtt`` line."""
    started = time.perf_counter()
    server = start_server(
        name, _fleet_args(count, serial_format, state), expect={"mqtt"}, cwd=cwd, timeout=300.0
    )
    return server, time.perf_counter() - started - 0.2  # start_server waits 0.2 s after the line


GROUPS_PER_DEVICE = 3  # the default profile's
COUNTS = (1_000, 10_000)
METRICS = tuple(
    f"fleet_{count}_{metric}"
    for count in COUNTS
    for metric in ("startup_s", "warm_startup_s", "rss_per_device_kb", "getname_ratio")
)


def _wait_synced(store: Path, count: int, timeout: float = 300.0) -> None:
    """Until the store beside the state file holds every group of ``count`` devices (the sync task is
    then idle but for heartbeats)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists():
            try:
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as conn:
                    (held,) = conn.execute("SELECT count(*) FROM access_groups").fetchone()
                if held >= GROUPS_PER_DEVICE * count:
                    return
            except sqlite3.Error:
                pass
        time.sleep(0.5)
    raise ServerError(f"the store {store} did not get the groups of {count} devices in {timeout:.0f} s")


def _topics(serial: str) -> tuple[str, str]:
    topics = relay_topics(serial, relay_key(DEFAULT_NET_KEY, serial))
    return topics.command, topics.answer


async def _getname(single: str, serials: list[str], samples: int, rounds: int) -> tuple[float, float, float]:
    """(p50 alone, p50 random of the fleet, p50 of the random devices' first command), in seconds."""
    draw = random.Random(15)
    per_round = max(1, samples // rounds)
    picks = [_topics(draw.choice(serials)) for _ in range(per_round * rounds)]
    solo = _topics(single)
    alone: list[float] = []
    relayed: list[float] = []
    cold: list[float] = []
    async with RelayApp().connected() as app:
        await app.seconds(solo, GET_NAME)
        for topics in dict.fromkeys(picks):
            cold.append(await app.seconds(topics, GET_NAME))
        for round_ in range(rounds):
            for _ in range(per_round):
                alone.append(await app.seconds(solo, GET_NAME))
            for topics in picks[round_ * per_round : (round_ + 1) * per_round]:
                relayed.append(await app.seconds(topics, GET_NAME))
    return statistics.median(alone), statistics.median(relayed), statistics.median(cold)


def fleet(settings: Settings) -> list[MetricResult]:
    """``fleet_{N}_startup_s``, ``fleet_{N}_warm_startup_s``, ``fleet_{N}_rss_per_device_kb`` and
    ``fleet_{N}_getname_ratio`` for N = 1,000 and 10,000 (--quick takes fewer getName samples)."""
    results: list[MetricResult] = []
    run = uuid.uuid4().hex[:4].upper()  # serials of this run's own: the broker is shared
    work = settings.work / f"fleet-{run}"
    work.mkdir(parents=True, exist_ok=True)
    one_format = f"EMB{run}S{{:06d}}"
    one, one_start = _start("fleet-1", 1, one_format, work / "one" / "state.sqlite3", work)
    try:
        _wait_synced(work / "one" / "management-store.sqlite3", 1)
        one_rss = one.rss_mb()
        for count in COUNTS:
            results += _measure(settings, work, run, count, one_format.format(0), one_start, one_rss)
    finally:
        one.stop()
    return results


def _measure(
    settings: Settings, work: Path, run: str, count: int, single: str, one_start: float, one_rss: float
) -> list[MetricResult]:
    serial_format = f"EMB{run}N{count}{{:06d}}"
    serials = [serial_format.format(index) for index in range(count)]
    state = work / f"n{count}" / "state.sqlite3"
    startup = MetricResult(
        f"fleet_{count}_startup_s",
        f"seconds to the listening line, {count} fresh devices (seeded, every K derived) vs a fleet of one",
        "s",
        Target("<=", STARTUP_TARGET_S, "value"),
    )
    warm = MetricResult(
        f"fleet_{count}_warm_startup_s",
        f"seconds to the listening line, {count} devices from their state file again vs a fleet of one",
        "s",
        Target("<=", STARTUP_TARGET_S, "value"),
    )
    rss = MetricResult(
        f"fleet_{count}_rss_per_device_kb",
        f"(RSS of {count} idle devices - RSS of one) / {count - 1}, synced, vs the fleet of one's RSS",
        "KB",
        Target("<=", RSS_TARGET_KB, "value"),
    )
    getname = MetricResult(
        f"fleet_{count}_getname_ratio",
        f"relayed getName p50, a random device of {count} vs the fleet of one, through Mosquitto",
        "ms",
        Target("<=", GETNAME_TARGET),
    )
    server, cold_seconds = _start(f"fleet-{count}", count, serial_format, state, work)
    try:
        startup.settle(cold_seconds, one_start)
        _wait_synced(state.parent / "management-store.sqlite3", count)
        per_device_kb = (server.rss_mb() - one_rss) * 1024 / (count - 1)
        rss.settle(per_device_kb, one_rss * 1024)
        rss.details.update(fleet_rss_mb=round(server.rss_mb(), 1), one_rss_mb=round(one_rss, 1))
        samples = 60 if settings.small else 200
        alone, relayed, cold = asyncio.run(_getname(single, serials, samples, max(1, settings.rounds)))
        getname.settle(relayed * 1000, alone * 1000)
        getname.details.update(samples=samples, first_command_p50_ms=round(cold * 1000, 3))
    finally:
        server.stop(timeout=60)
    server, warm_seconds = _start(f"fleet-{count}-warm", count, serial_format, state, work)
    try:
        time.sleep(WARM_SETTLE_S)  # the sync reconciles every device against the store it already fed
        rss.details["warm_rss_per_device_kb"] = round((server.rss_mb() - one_rss) * 1024 / (count - 1), 2)
    finally:
        server.stop(timeout=60)
    warm.settle(warm_seconds, one_start)
    return [startup, warm, rss, getname]
