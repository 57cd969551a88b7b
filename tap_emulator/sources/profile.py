"""The ``[[sources]]`` tables of a device profile, checked and turned into generators.

A source is declared as data (``variable``, ``kind`` and the kind's parameters, README "Value
sources"); this module is the one place that reads them, including a replay's CSV file, so every
mistake is reported with the profile, the source's position and the key (or the CSV line) at fault.
Errors are ``SourceError``; the profile loader re-raises them as its ``ConfigError`` (exit 2).
Everything a profile can grow is bounded: the number of sources, a CSV's size and points, and the
shortest period (the runner's wake-up rate).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tap_emulator.sources.generators import (
    Constant,
    Counter,
    EndMode,
    Generator,
    Interpolation,
    RandomWalk,
    Replay,
    Sine,
)

__all__ = [
    "MAX_REPLAY_BYTES",
    "MAX_REPLAY_POINTS",
    "MAX_SAMPLES_PER_SECOND",
    "MAX_SOURCES",
    "MAX_TOTAL_REPLAY_POINTS",
    "MIN_PERIOD",
    "SOURCE_KINDS",
    "SourceConfig",
    "SourceError",
    "parse_sources",
    "read_replay_csv",
]

MAX_SOURCES = 256
MIN_PERIOD = 0.01  # seconds: the shortest period or interval of any source (at most 100 samples/s each)
MAX_REPLAY_BYTES = 4 * 1024 * 1024
MAX_REPLAY_POINTS = 100_000
MAX_TOTAL_REPLAY_POINTS = 1_000_000  # over every replay of a profile (about 50 MB of floats at most)
# Over every source: a write through the variable handler costs about 0.1 ms, so this keeps the sources
# under a tenth of a core.
MAX_SAMPLES_PER_SECOND = 1000
MAX_VARIABLE_ID = 0xFFFF


class SourceError(ValueError):
    """A ``[[sources]]`` table or its CSV is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One source of the profile: which variable it writes, and how its value moves."""

    variable: int
    kind: str
    generator: Generator


class _Table:
    """One source table: typed reads that name the key on error, and a check for unknown keys."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where
        self.read: set[str] = {"variable", "kind"}

    def error(self, key: str, message: str) -> SourceError:
        return SourceError(f"{self.where} '{key}': {message}")

    def number(self, key: str, default: float | None = None, *, required: bool = False) -> float:
        self.read.add(key)
        if key not in self.raw:
            if required or default is None:
                raise self.error(key, "is missing")
            return default
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(key, "must be a finite number")
        return float(value)

    def optional_number(self, key: str) -> float | None:
        self.read.add(key)
        return self.number(key) if key in self.raw else None

    def period(self, key: str, default: float | None = None) -> float:
        value = self.number(key, default)
        if value < MIN_PERIOD:
            raise self.error(key, f"must be at least {MIN_PERIOD} seconds")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        self.read.add(key)
        if key not in self.raw:
            raise self.error(key, "is missing")
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"must be an integer in {low}..{high}")
        return value

    def choice(self, key: str, options: type[Interpolation] | type[EndMode]) -> Any:
        self.read.add(key)
        names = [option.value for option in options]
        value = self.raw.get(key, names[0])
        if value not in names:
            raise self.error(key, f"must be one of {', '.join(repr(n) for n in names)}")
        return options(value)

    def text(self, key: str) -> str:
        self.read.add(key)
        value = self.raw.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string" if key in self.raw else "is missing")
        return value

    def check_no_other_keys(self) -> None:
        unknown = sorted(set(self.raw) - self.read)
        if unknown:
            raise SourceError(f"{self.where}: unknown key(s) {', '.join(repr(k) for k in unknown)}")


def _constant(table: _Table, base_dir: Path) -> Generator:
    return Constant(table.number("value", required=True))


def _counter(table: _Table, base_dir: Path) -> Generator:
    start = table.number("start", 0.0)
    step = table.number("step", 1.0)
    if step == 0:
        raise table.error("step", "must not be 0")
    wrap = table.optional_number("wrap")
    if wrap is not None and (wrap - start) * step <= 0:
        raise table.error("wrap", "must lie beyond 'start' in the direction of 'step'")
    return Counter(start=start, step=step, period=table.period("period", 1.0), wrap=wrap)


def _sine(table: _Table, base_dir: Path) -> Generator:
    period = table.period("period")
    return Sine(
        period=period,
        amplitude=table.number("amplitude", 1.0),
        offset=table.number("offset", 0.0),
        phase=table.number("phase", 0.0),
        interval=table.period("interval", max(MIN_PERIOD, period / 20)),
    )


def _random_walk(table: _Table, base_dir: Path) -> Generator:
    seed = table.integer("seed", 0, 2**63 - 1)
    step = table.number("step", required=True)
    if step <= 0:
        raise table.error("step", "must be greater than 0")
    low, high = table.number("min", required=True), table.number("max", required=True)
    if low >= high:
        raise table.error("max", "must be greater than 'min'")
    start = table.number("start", (low + high) / 2)
    if not low <= start <= high:
        raise table.error("start", "must lie in min..max")
    return RandomWalk(seed, step, low, high, start, table.period("period", 1.0))


def _replay(table: _Table, base_dir: Path) -> Generator:
    name = table.text("file")
    path = base_dir / name
    times, values = read_replay_csv(path, f"{table.where} 'file'")
    interpolation = table.choice("interpolation", Interpolation)
    end = table.choice("end", EndMode)
    duration = table.optional_number("duration")
    if end is EndMode.LOOP:
        if duration is None:
            if len(times) < 2:
                raise table.error("duration", "is needed to loop a single point")
            duration = times[-1] + (times[-1] - times[-2])  # the last point lasts as long as the one before
        elif duration <= times[-1]:
            raise table.error("duration", f"must be longer than the last time ({times[-1]} s)")
    elif duration is not None:
        raise table.error("duration", "applies only with end = 'loop'")
    interval = table.period("interval", 1.0)
    return Replay(times, values, interpolation, end, duration if end is EndMode.LOOP else None, interval)


_KINDS: dict[str, Callable[[_Table, Path], Generator]] = {
    "constant": _constant,
    "counter": _counter,
    "sine": _sine,
    "random-walk": _random_walk,
    "replay": _replay,
}


def parse_sources(raw: object, where: str, base_dir: Path) -> tuple[SourceConfig, ...]:
    """The profile's ``sources`` array (``[[sources]]``); a replay's ``file`` is relative to
    ``base_dir`` (the profile's folder). At most one source per variable."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SourceError(f"{where}: 'sources' must be an array of tables ([[sources]])")
    if len(raw) > MAX_SOURCES:
        raise SourceError(f"{where}: at most {MAX_SOURCES} [[sources]]")
    sources: list[SourceConfig] = []
    replay_points = 0
    for position, entry in enumerate(raw, start=1):
        sw = f"{where} [[sources]] #{position}"
        if not isinstance(entry, dict):
            raise SourceError(f"{sw}: must be a table")
        table = _Table(entry, sw)
        variable = table.integer("variable", 0, MAX_VARIABLE_ID)
        kind = entry.get("kind")
        if not isinstance(kind, str) or kind not in _KINDS:
            known = ", ".join(repr(k) for k in _KINDS)
            raise table.error("kind", f"{kind!r} is not a source kind (known: {known})")
        generator = _KINDS[kind](table, base_dir)
        table.check_no_other_keys()
        if isinstance(generator, Replay):
            replay_points += len(generator.times)
            if replay_points > MAX_TOTAL_REPLAY_POINTS:
                raise table.error(
                    "file", f"the replays hold more than {MAX_TOTAL_REPLAY_POINTS} points in all"
                )
        if any(s.variable == variable for s in sources):
            raise table.error("variable", f"variable {variable} already has a source")
        sources.append(SourceConfig(variable, kind, generator))
    rate = sum(_samples_per_second(s.generator) for s in sources)
    if rate > MAX_SAMPLES_PER_SECOND:
        raise SourceError(
            f"{where}: the [[sources]] take {rate:.0f} samples a second in all, more than "
            f"{MAX_SAMPLES_PER_SECOND}: lengthen some periods or intervals"
        )
    return tuple(sources)


def _samples_per_second(generator: Generator) -> float:
    """A source's average sample rate (a replay's over its rows, or its linear interval)."""
    if isinstance(generator, Counter | RandomWalk):
        return 1 / generator.period
    if isinstance(generator, Sine):
        return 1 / generator.interval
    if isinstance(generator, Replay):
        if generator.interpolation is Interpolation.LINEAR:
            return 1 / generator.interval
        span = (generator.duration or generator.times[-1]) - generator.times[0]
        return len(generator.times) / span if span > 0 else 0.0
    return 0.0  # a constant: once


def _csv_number(cell: str, what: str, at: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise SourceError(f"{at}: {what} {cell[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise SourceError(f"{at}: {what} must be finite")
    return value


def read_replay_csv(path: Path, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``time,value`` rows (seconds from the source's start, strictly increasing). Blank lines and lines
    starting with ``#`` are skipped; a first row that is not numeric is a header."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_REPLAY_BYTES + 1)
    except FileNotFoundError:
        raise SourceError(f"{where}: {path} not found") from None
    except OSError as exc:
        raise SourceError(f"{where}: {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_REPLAY_BYTES:
        raise SourceError(f"{where}: {path} is larger than {MAX_REPLAY_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{where}: {path} is not UTF-8 text") from None
    times: list[float] = []
    values: list[float] = []
    header_allowed = True
    try:
        rows: Sequence[list[str]] = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise SourceError(f"{where}: {path}: {exc}") from None
    for line, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        at = f"{where}: {path.name} line {line}"
        if len(cells) != 2:
            raise SourceError(f"{at}: expected 2 columns (time,value), found {len(cells)}")
        if header_allowed and not _is_number(cells[0]):
            header_allowed = False
            continue
        header_allowed = False
        t = _csv_number(cells[0], "time", at)
        if t < 0:
            raise SourceError(f"{at}: time must be >= 0")
        if times and t <= times[-1]:
            raise SourceError(f"{at}: time {t} is not after the previous row's {times[-1]} (unordered)")
        if len(times) == MAX_REPLAY_POINTS:
            raise SourceError(f"{where}: {path} has more than {MAX_REPLAY_POINTS} points")
        times.append(t)
        values.append(_csv_number(cells[1], "value", at))
    if not times:
        raise SourceError(f"{where}: {path} has no (time, value) rows")
    return tuple(times), tuple(values)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


SOURCE_KINDS = tuple(_KINDS)
