"""CoAP benchmarks: GET throughput and p99 against two peers (bare aiocoap, libcoap's C coap-server),
durable PUTs against :memory: state and against GETs, loop isolation, memory under load, after a
block1 flood and with thousands of observers.

Each comparison interleaves its sides round by round (A B C A B C ...) in one run, and the GET and
PUT comparisons drive each server from ``Settings.generators`` generator processes; ratios within a run
are the figures to read, as absolute rates move with whatever else the machine is running."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bench.coap_floods import ObserverCrowd, block1_flood
from bench.coap_wire import GET, POST, PUT, RequestTemplate
from bench.loadgen import SideLoad, coap_load, coap_load_parallel
from bench.procs import LIBCOAP_RESOURCE, Server, emulator_server, start_libcoap_server, start_server
from bench.results import MetricResult, Target
from bench.runner import Run, Settings, interleave, measured, median, summary
from bench.servers import BARE_PAYLOAD

GET_PATH = "/1025/0/0"  # name of the anonymous group: readable without login
NAME_PATH = "/1025/65534/0"  # name of the supervisor group
PASSWORD_PATH = "/1025/65534/2"  # password: set by POST (execute)
TEXT_PLAIN = 0
ISOLATION_RATE = 500.0  # GETs per second while measuring latency: light load, so p99 shows the loop
PASSWORD_BATCH = 20


def _start_emulator(settings: Settings, name: str, state: str, *extra: str) -> Server:
    return start_server(
        name,
        emulator_server("--state", state, *extra),
        expect={"coap"},
        cwd=settings.work,
    )


def _start_bare(settings: Settings) -> Server:
    return start_server(
        "bare-aiocoap", ["-m", "bench.servers", "aiocoap"], expect={"coap"}, cwd=settings.work
    )


def _driver(settings: Settings, server: Server, build: Callable[[int, bytes], bytes]) -> Callable[[], Run]:
    """One measured run against ``server``, from ``settings.generators`` generator processes."""

    def drive() -> Run:
        return measured(
            server,
            lambda: coap_load_parallel(
                server.endpoints["coap"],
                build,
                processes=settings.generators,
                seconds=settings.seconds,
                outstanding=settings.outstanding,
                warmup=settings.warmup,
            ),
        )

    return drive


def _get_driver(settings: Settings, server: Server, path: str = GET_PATH) -> Callable[[], Run]:
    return _driver(settings, server, RequestTemplate(GET, path).build)


def _rate(runs: list[Run]) -> float:
    return median([r.result.rate for r in runs])


def _p99_ms(runs: list[Run]) -> float:
    return median([r.result.percentile(0.99) * 1000 for r in runs])


def _report_generators(name: str, runs: dict[str, list[Run]], processes: int) -> None:
    """The generators' own CPU share per side (1.0 = one core): near ``processes`` means they, not the
    server, were the limit."""
    shares = ", ".join(
        f"{side} {max(r.result.cpu_share for r in side_runs):.2f}" for side, side_runs in runs.items()
    )
    print(
        f"[bench] {name}: generator CPU share ({processes} processes) {shares}", file=sys.stderr, flush=True
    )


def coap_get(settings: Settings) -> list[MetricResult]:
    throughput = MetricResult(
        "coap_get_ratio",
        f"emulator GET {GET_PATH} req/s at {settings.outstanding} outstanding "
        "vs bare aiocoap (udp6, one resource, same payload size)",
        "req/s",
        Target(">=", 5.0),
    )
    versus_libcoap = MetricResult(
        "coap_get_libcoap_ratio",
        f"same runs: emulator GET req/s vs libcoap's coap-server (C, {LIBCOAP_RESOURCE}, same payload size)",
        "req/s",
        Target(">=", 0.5),
    )
    latency = MetricResult(
        "coap_get_p99_ratio", "same runs: p99 latency, emulator / bare aiocoap", "ms", Target("<=", 1.0)
    )
    fast_path = MetricResult(
        "coap_get_fast_path_ratio",
        "same runs: emulator GET req/s vs the emulator with --coap-fast-path off (aiocoap's pipeline)",
        "req/s",
        Target(">=", 1.5),
    )
    emulator = _start_emulator(settings, "emulator-get", ":memory:")
    try:
        without = _start_emulator(settings, "emulator-get-aiocoap", ":memory:", "--coap-fast-path", "off")
        try:
            bare = _start_bare(settings)
            try:
                libcoap = start_libcoap_server(settings.work, BARE_PAYLOAD)
                try:
                    runs = interleave(
                        settings.rounds,
                        {
                            "bare": _get_driver(settings, bare),
                            "libcoap": _get_driver(settings, libcoap, LIBCOAP_RESOURCE),
                            "without_fast_path": _get_driver(settings, without),
                            "emulator": _get_driver(settings, emulator),
                        },
                    )
                finally:
                    libcoap.stop()
            finally:
                bare.stop()
        finally:
            without.stop()
    finally:
        emulator.stop()
    _report_generators("coap_get", runs, settings.generators)
    details = {
        "emulator": summary(runs["emulator"]),
        "baseline": summary(runs["bare"]),
        "libcoap": summary(runs["libcoap"]),
        "without_fast_path": summary(runs["without_fast_path"]),
        "generators": settings.generators,
    }
    throughput.settle(_rate(runs["emulator"]), _rate(runs["bare"]))
    versus_libcoap.settle(_rate(runs["emulator"]), _rate(runs["libcoap"]))
    latency.settle(_p99_ms(runs["emulator"]), _p99_ms(runs["bare"]))
    fast_path.settle(_rate(runs["emulator"]), _rate(runs["without_fast_path"]))
    throughput.details = versus_libcoap.details = latency.details = fast_path.details = details
    return [throughput, versus_libcoap, latency, fast_path]


def durable_put(settings: Settings) -> list[MetricResult]:
    """PUTs on durable SQLite state (each acknowledged after its commit) vs the same PUTs on ``:memory:``
    state, and vs GETs from the same durable server."""
    versus_memory = MetricResult(
        "durable_put_ratio",
        f"PUT {NAME_PATH} req/s at {settings.outstanding} outstanding, durable SQLite state vs :memory:",
        "req/s",
        Target(">=", 0.5),
    )
    versus_get = MetricResult(
        "durable_put_get_ratio",
        f"same runs: durable PUT {NAME_PATH} req/s vs GET {GET_PATH} req/s from the same server",
        "req/s",
        Target(">=", 0.25),
    )
    names = [
        RequestTemplate(PUT, NAME_PATH, f"bench-{i}".encode(), content_format=TEXT_PLAIN) for i in range(16)
    ]

    def build(mid: int, token: bytes) -> bytes:
        return names[mid % len(names)].build(mid, token)

    state_file = settings.work / "durable" / "device.sqlite3"
    durable = _start_emulator(settings, "emulator-durable", str(state_file), "--store", "off")
    try:
        memory = _start_emulator(settings, "emulator-memory", ":memory:")
        try:
            runs = interleave(
                settings.rounds,
                {
                    "memory": _driver(settings, memory, build),
                    "durable": _driver(settings, durable, build),
                    "durable_get": _get_driver(settings, durable),
                },
            )
        finally:
            memory.stop()
    finally:
        durable.stop()
    _report_generators("durable_put", runs, settings.generators)
    versus_memory.settle(_rate(runs["durable"]), _rate(runs["memory"]))
    versus_get.settle(_rate(runs["durable"]), _rate(runs["durable_get"]))
    versus_memory.details = versus_get.details = {
        "durable": summary(runs["durable"]),
        "baseline": summary(runs["memory"]),
        "durable_get": summary(runs["durable_get"]),
    }
    return [versus_memory, versus_get]


def loop_isolation(settings: Settings) -> MetricResult:
    metric = MetricResult(
        "loop_isolation_ratio",
        f"GET p99 at {ISOLATION_RATE:g} req/s while batches of {PASSWORD_BATCH} ASCII password changes are "
        "derived, vs idle p99",
        "ms",
        Target("<=", 2.0),
    )
    get = RequestTemplate(GET, GET_PATH)
    password = RequestTemplate(POST, PASSWORD_PATH, b"bench-password", content_format=TEXT_PLAIN)
    sides: dict[str, SideLoad] = {}
    server = _start_emulator(settings, "emulator-isolation", ":memory:")

    def driver(with_derivations: bool) -> Callable[[], Run]:
        def drive() -> Run:
            side = SideLoad(password.build, PASSWORD_BATCH) if with_derivations else None
            run = measured(
                server,
                lambda: coap_load(
                    server.endpoints["coap"],
                    get.build,
                    seconds=settings.seconds,
                    outstanding=settings.outstanding,
                    rate=ISOLATION_RATE,
                    warmup=settings.warmup,
                    side=side,
                ),
            )
            if side is not None:
                previous = sides.get("derivations")
                if previous is not None:
                    side.completed += previous.completed
                    side.errors += previous.errors
                    side.lost += previous.lost
                sides["derivations"] = side
            return run

        return drive

    try:
        runs = interleave(settings.rounds, {"idle": driver(False), "derivations": driver(True)})
    finally:
        server.stop()
    busy = median([r.result.percentile(0.99) * 1000 for r in runs["derivations"]])
    idle = median([r.result.percentile(0.99) * 1000 for r in runs["idle"]])
    metric.settle(busy, idle)
    side = sides.get("derivations")
    metric.details = {
        "derivations": summary(runs["derivations"]),
        "baseline": summary(runs["idle"]),
        "password_changes": {
            "completed": side.completed if side else 0,
            "errors": side.errors if side else 0,
            "lost": side.lost if side else 0,
        },
    }
    return metric


def coap_rss(settings: Settings) -> MetricResult:
    metric = MetricResult(
        "coap_rss_mb",
        f"emulator RSS after {settings.rss_seconds:g} s of GETs at {settings.outstanding} outstanding "
        "(baseline: RSS before the load)",
        "MB",
        Target("<=", 200.0, applies_to="value"),
    )
    server = _start_emulator(settings, "emulator-rss", ":memory:")
    try:
        time.sleep(0.2)
        idle = server.rss_mb()
        template = RequestTemplate(GET, GET_PATH)
        run = measured(
            server,
            lambda: coap_load(
                server.endpoints["coap"],
                template.build,
                seconds=settings.rss_seconds,
                outstanding=settings.outstanding,
                warmup=0.0,
            ),
        )
        loaded = server.rss_mb()
    finally:
        server.stop()
    metric.settle(loaded, idle)
    metric.details = {"load": summary([run]), "requests": run.result.completed}
    return metric


FLOOD_MB = {True: 4, False: 48}  # small (quick mode), full
OBSERVERS = {True: 1000, False: 5000}


def _idle_rss(server: Server) -> float:
    time.sleep(0.3)
    return server.rss_mb()


def coap_rss_flood(settings: Settings) -> MetricResult:
    megabytes = FLOOD_MB[settings.small]
    metric = MetricResult(
        "coap_rss_flood_ratio",
        f"emulator RSS after a {megabytes} MB block1 flood (1 KB blocks, 4 transfers) at a 16-character "
        "field, vs its idle RSS",
        "MB",
        Target("<=", 1.25),
    )
    server = _start_emulator(settings, "emulator-flood", ":memory:")
    try:
        idle = _idle_rss(server)
        flood = block1_flood(server.endpoints["coap"], megabytes << 20)
        flooded = server.rss_mb()
    finally:
        server.stop()
    metric.settle(flooded, idle)
    metric.details = {"blocks": flood.blocks, "lost": flood.lost, "codes": dict(flood.codes)}
    return metric


def coap_rss_observers(settings: Settings) -> MetricResult:
    count = OBSERVERS[settings.small]
    metric = MetricResult(
        "coap_rss_observers_ratio",
        f"emulator RSS with {count:,} observers (50 per endpoint) vs its idle RSS",
        "MB",
        Target("<=", 2.5),
    )
    server = _start_emulator(settings, "emulator-observers", ":memory:")
    try:
        idle = _idle_rss(server)
        crowd = ObserverCrowd(server.endpoints["coap"], count)
        try:
            observed = server.rss_mb()
        finally:
            crowd.close()
    finally:
        server.stop()
    metric.settle(observed, idle)
    metric.details = {"observers": count, "accepted": crowd.accepted, "answered": crowd.answered}
    return metric
