"""Smoke test of ``python -m bench --quick``: every benchmark runs briefly and reports a well-formed result.

Timings are not asserted (the machines are shared and noisy); what is checked is that each metric of
the issue's table is present once, carries its target, and is either measured with positive figures
and a consistent ratio or says why it was not measured.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METRICS = [
    "coap_get_ratio",
    "coap_get_libcoap_ratio",
    "coap_get_p99_ratio",
    "coap_get_fast_path_ratio",
    "tap_tcp_ratio",
    "tap_encrypted_ratio",
    "tap_bundle_values_ratio",
    "durable_put_ratio",
    "durable_put_get_ratio",
    "loop_isolation_ratio",
    "coap_rss_mb",
    "coap_rss_flood_ratio",
    "coap_rss_observers_ratio",
    "sync_lag_ratio",
    "http_native_devices_ratio",
    "http_seed_list_ratio",
    *(
        f"fleet_{count}_{metric}"
        for count in (1_000, 10_000)
        for metric in ("startup_s", "warm_startup_s", "rss_per_device_kb", "getname_ratio")
    ),
]


@pytest.mark.timeout(240)
def test_quick_bench_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads(out.read_text())
    names = [m["name"] for m in document["metrics"]]
    assert names == METRICS
    assert document["meta"]["quick"] is True
    for metric in document["metrics"]:
        assert metric["target"]["op"] in (">=", "<=")
        assert metric["target"]["applies_to"] in ("ratio", "value")
        assert metric["name"] in completed.stdout  # the printed table has a row per metric
        if metric["not_measured"] is not None:
            assert metric["not_measured"].strip()
            assert metric["met"] is None
            continue
        assert metric["value"] > 0 and metric["baseline"] > 0, metric
        assert math.isclose(metric["ratio"], metric["value"] / metric["baseline"], rel_tol=1e-9)
        subject = metric["ratio"] if metric["target"]["applies_to"] == "ratio" else metric["value"]
        bound = metric["target"]["bound"]
        assert metric["met"] == (subject >= bound if metric["target"]["op"] == ">=" else subject <= bound)
        # Each side's generator reports its CPU share, and no request was answered with an error.
        for side in ("baseline", *[k for k in metric["details"] if k not in ("baseline", "seconds")]):
            details = metric["details"].get(side)
            if isinstance(details, dict) and "generator_cpu_share" in details:
                assert 0 <= details["generator_cpu_share"] < 4
                assert details["errors"] == 0, (metric["name"], side, details)
                assert details["completed"] > 0, (metric["name"], side, details)
