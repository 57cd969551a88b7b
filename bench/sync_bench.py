"""Sync-lag benchmark (filled in as the sync task lands)."""

from __future__ import annotations

from bench.results import MetricResult, Target
from bench.runner import Settings


def sync_lag(settings: Settings) -> MetricResult:
    return MetricResult("sync_lag_ratio", "", "ms", Target("<=", 2.0)).skip("not written yet")
