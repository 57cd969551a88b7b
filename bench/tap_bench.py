"""Tap-face benchmarks (filled in as the Tap face lands)."""

from __future__ import annotations

from bench.results import MetricResult, Target
from bench.runner import Settings


def tap_tcp(settings: Settings) -> MetricResult:
    return MetricResult("tap_tcp_ratio", "", "req/s", Target(">=", 0.5)).skip("Tap TCP face not built yet")


def tap_encrypted(settings: Settings) -> MetricResult:
    return MetricResult("tap_encrypted_ratio", "", "req/s", Target(">=", 0.6)).skip(
        "Tap TCP face not built yet"
    )
