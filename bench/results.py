"""One result per metric, the printed table and ``bench/results.json``.

A metric compares a value with a baseline measured in the same run; its target applies to the ratio
(value / baseline) except where the issue states an absolute bound (``coap_rss_mb``). A metric that
could not be measured keeps its place in the table with ``not measured: <reason>``.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, slots=True)
class Target:
    op: str  # ">=" or "<="
    bound: float
    applies_to: str = "ratio"  # or "value"

    def met(self, value: float, ratio: float) -> bool:
        subject = ratio if self.applies_to == "ratio" else value
        return not math.isnan(subject) and _COMPARE[self.op](subject, self.bound)

    def __str__(self) -> str:
        return f"{'ratio' if self.applies_to == 'ratio' else 'value'} {self.op} {self.bound:g}"


@dataclass(slots=True)
class MetricResult:
    name: str
    compares: str
    unit: str
    target: Target
    value: float | None = None
    baseline: float | None = None
    ratio: float | None = None
    met: bool | None = None
    not_measured: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def settle(self, value: float, baseline: float) -> MetricResult:
        self.value, self.baseline = value, baseline
        self.ratio = value / baseline if baseline else float("nan")
        self.met = self.target.met(value, self.ratio)
        return self

    def skip(self, reason: str) -> MetricResult:
        self.not_measured = reason
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = {
            "op": self.target.op,
            "bound": self.target.bound,
            "applies_to": self.target.applies_to,
        }
        for key in ("value", "baseline", "ratio"):
            number = data[key]
            if isinstance(number, float) and not math.isfinite(number):
                data[key] = None
        return data


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(results: list[MetricResult]) -> str:
    header = ("metric", "value", "baseline", "ratio", "target", "met", "unit")
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.not_measured is not None:
            rows.append((r.name, "-", "-", "-", str(r.target), "NOT MEASURED", r.not_measured))
            continue
        met = "yes" if r.met else "NO"
        rows.append(
            (r.name, _number(r.value), _number(r.baseline), _number(r.ratio), str(r.target), met, r.unit)
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: Path, results: list[MetricResult], meta: dict[str, Any]) -> None:
    document = {"meta": meta, "metrics": [r.to_json() for r in results]}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
