"""What every benchmark shares: settings, interleaved rounds, medians and per-run details."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult
from bench.procs import Server


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int  # interleaved A B rounds per comparison
    seconds: float  # measured seconds per run
    warmup: float  # unmeasured seconds before each run
    rss_seconds: float  # load before the RSS reading
    outstanding: int = 16
    work: Path = Path(".")
    small: bool = False  # smaller floods and crowds in the memory benchmarks (quick mode)
    generators: int = 2  # CoAP load generator processes per run (one cannot saturate libcoap)

    @classmethod
    def full(cls, work: Path) -> Settings:
        return cls(rounds=5, seconds=3.0, warmup=0.3, rss_seconds=60.0, work=work)

    @classmethod
    def quick(cls, work: Path) -> Settings:
        return cls(rounds=1, seconds=0.3, warmup=0.1, rss_seconds=1.0, work=work, small=True)


@dataclass(slots=True)
class Run:
    """One measured run against one server, with both sides' CPU shares."""

    result: LoadResult
    server_cpu_share: float


def measured(server: Server, drive: Callable[[], LoadResult]) -> Run:
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    result = drive()
    cpu, wall = server.cpu_seconds() - cpu_before, time.perf_counter() - started
    return Run(result, cpu / wall if wall > 0 else 0.0)


def interleave(rounds: int, sides: dict[str, Callable[[], Run]]) -> dict[str, list[Run]]:
    """Run each side once per round, in the same order every round (A B A B ...)."""
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            runs[name].append(run())
    return runs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(runs: list[Run]) -> dict[str, Any]:
    """Per-side details for results.json: rates, p99s, losses and both CPU shares, per round."""
    return {
        "rates": [round(r.result.rate, 1) for r in runs],
        "p99_ms": [round(r.result.percentile(0.99) * 1000, 3) for r in runs],
        "completed": sum(r.result.completed for r in runs),
        "errors": sum(r.result.errors for r in runs),
        "lost": sum(r.result.lost for r in runs),
        "stale": sum(r.result.stale for r in runs),
        "generator_cpu_share": round(max(r.result.cpu_share for r in runs), 3) if runs else None,
        "server_cpu_share": round(median([r.server_cpu_share for r in runs]), 3),
    }
