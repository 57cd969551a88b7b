"""``python -m bench [--quick] [--only NAME ...] [--out PATH]``: run the benchmarks, print the table."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import coap_bench, fleet_bench, http_bench, sync_bench, tap_bench
from bench.procs import REPO, ServerError
from bench.results import MetricResult, format_table, write_json
from bench.runner import Settings

Benchmark = Callable[[Settings], list[MetricResult]]


def _one(fn: Callable[[Settings], MetricResult]) -> Benchmark:
    return lambda settings: [fn(settings)]


# Name -> (metric names it produces, the function). Order is the table order.
BENCHMARKS: dict[str, tuple[tuple[str, ...], Benchmark]] = {
    "coap_get": (
        ("coap_get_ratio", "coap_get_libcoap_ratio", "coap_get_p99_ratio", "coap_get_fast_path_ratio"),
        coap_bench.coap_get,
    ),
    "tap_tcp": (("tap_tcp_ratio",), _one(tap_bench.tap_tcp)),
    "tap_encrypted": (("tap_encrypted_ratio",), _one(tap_bench.tap_encrypted)),
    "tap_bundle_values": (("tap_bundle_values_ratio",), _one(tap_bench.tap_bundle_values)),
    "durable_put": (("durable_put_ratio", "durable_put_get_ratio"), coap_bench.durable_put),
    "loop_isolation": (("loop_isolation_ratio",), _one(coap_bench.loop_isolation)),
    "coap_rss": (("coap_rss_mb",), _one(coap_bench.coap_rss)),
    "coap_rss_flood": (("coap_rss_flood_ratio",), _one(coap_bench.coap_rss_flood)),
    "coap_rss_observers": (("coap_rss_observers_ratio",), _one(coap_bench.coap_rss_observers)),
    "sync_lag": (("sync_lag_ratio",), _one(sync_bench.sync_lag)),
    "http_lists": (("http_native_devices_ratio", "http_seed_list_ratio"), http_bench.http_lists),
    "fleet": (fleet_bench.METRICS, fleet_bench.fleet),
}

DEFAULT_OUT = REPO / "bench" / "results.json"


def run(names: Sequence[str], settings: Settings) -> list[MetricResult]:
    results: list[MetricResult] = []
    for name in names:
        metric_names, benchmark = BENCHMARKS[name]
        started = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            produced = benchmark(settings)
        except (ServerError, OSError, RuntimeError) as exc:
            traceback.print_exc(file=sys.stderr)
            produced = [
                _failed(metric, f"{type(exc).__name__}: {exc}".splitlines()[0]) for metric in metric_names
            ]
        for metric in produced:
            metric.details.setdefault("seconds", round(time.monotonic() - started, 1))
        results += produced
    return results


def _failed(name: str, reason: str) -> MetricResult:
    from bench.results import Target

    return MetricResult(name, "", "", Target(">=", float("nan"))).skip(f"benchmark failed ({reason})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="each benchmark for about a second (smoke test)")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only these (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per run")
    parser.add_argument(
        "--generators", type=int, default=None, help="CoAP load generator processes per run (default 2)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tap-bench-", dir=REPO / "bench"))
    settings = Settings.quick(work) if args.quick else Settings.full(work)
    if args.rounds is not None or args.seconds is not None or args.generators is not None:
        settings = Settings(
            rounds=args.rounds or settings.rounds,
            seconds=args.seconds or settings.seconds,
            warmup=settings.warmup,
            rss_seconds=settings.rss_seconds,
            outstanding=settings.outstanding,
            work=work,
            small=settings.small,
            generators=args.generators or settings.generators,
        )
    names = args.only or list(BENCHMARKS)
    started = time.monotonic()
    try:
        results = run(names, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(format_table(results))
    meta = {
        "quick": args.quick,
        "rounds": settings.rounds,
        "seconds_per_run": settings.seconds,
        "outstanding": settings.outstanding,
        "coap_generators": settings.generators,
        "elapsed_seconds": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "interleaving": "A B A B: each round runs the baseline(s), then the subject; figures are medians",
    }
    write_json(args.out, results, meta)
    print(f"\n{len(results)} metrics in {elapsed:.0f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
