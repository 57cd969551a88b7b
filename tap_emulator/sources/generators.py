"""The value sources' generators: what value a source gives at a time, and when it has a new one.

Sans-IO, as the codecs are: a generator has no clock, no task and no sink. Time is seconds since the
source started (a float ``t >= 0``), passed in. Each generator answers two questions:

- ``value_at(t)``: the value the source holds at time ``t`` (``None`` before its first sample);
- ``samples()``: its sample instants and values in order, ``(t, value)``, computed by index (``k *
  period``, a CSV row's own time) so a scheduled value is exact and not an accumulation of float steps.

Both are deterministic (the random walk draws from its own seeded generator), so a restarted source
replays the same values. The runner (``runner.py``) merges the ``samples()`` of every source into one
schedule; tests call these directly with any ``t``.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Constant",
    "Counter",
    "EndMode",
    "Generator",
    "Interpolation",
    "RandomWalk",
    "Replay",
    "Sine",
]

# t / period lands a hair below an integer for some float periods (0.1 * 3 / 0.1); an instant within
# this many periods of a sample index counts as that sample.
_INDEX_SLACK = 1e-9


# The relative rounding of a time offset by a whole number of loop cycles.
_ROUNDING = 1e-12


def _index(t: float, period: float) -> int:
    """The last sample index at or before ``t`` on a grid of ``period``."""
    return math.floor(t / period + _INDEX_SLACK)


class Generator(Protocol):
    def value_at(self, t: float) -> float | None: ...

    def samples(self) -> Iterator[tuple[float, float]]: ...


@dataclass(frozen=True, slots=True)
class Constant:
    """One value, written once when the source starts."""

    value: float

    def value_at(self, t: float) -> float | None:
        return self.value

    def samples(self) -> Iterator[tuple[float, float]]:
        yield 0.0, self.value


@dataclass(frozen=True, slots=True)
class Counter:
    """``start``, then ``step`` more every ``period`` seconds. With ``wrap``, the counter goes back to
    ``start`` instead of reaching or passing ``wrap`` (start=0, step=1, wrap=4: 0 1 2 3 0 1 ...)."""

    start: float = 0.0
    step: float = 1.0
    period: float = 1.0
    wrap: float | None = None

    @property
    def values_per_cycle(self) -> int | None:
        """How many distinct values before a wrap (None: no wrap)."""
        if self.wrap is None:
            return None
        steps = (self.wrap - self.start) / self.step
        nearest = round(steps)
        # A wrap that start + k * step reaches up to float rounding (0.1 steps, a large start) is reached.
        if math.isclose(steps, nearest, rel_tol=1e-6):
            return max(1, nearest)
        return max(1, math.ceil(steps))

    def _value(self, index: int) -> float:
        cycle = self.values_per_cycle
        return self.start + (index if cycle is None else index % cycle) * self.step

    def value_at(self, t: float) -> float | None:
        return self._value(_index(t, self.period))

    def samples(self) -> Iterator[tuple[float, float]]:
        for index in itertools.count():
            yield index * self.period, self._value(index)


@dataclass(frozen=True, slots=True)
class Sine:
    """``offset + amplitude * sin(2π t / period + phase)``, ``phase`` in degrees, sampled every
    ``interval`` seconds."""

    period: float
    amplitude: float = 1.0
    offset: float = 0.0
    phase: float = 0.0
    interval: float = 1.0

    def _at(self, t: float) -> float:
        angle = 2 * math.pi * (t / self.period) + math.radians(self.phase)
        return self.offset + self.amplitude * math.sin(angle)

    def value_at(self, t: float) -> float | None:
        return self._at(t)

    def samples(self) -> Iterator[tuple[float, float]]:
        for index in itertools.count():
            yield index * self.interval, self._at(index * self.interval)


@dataclass(frozen=True, slots=True)
class RandomWalk:
    """Starts at ``start`` and moves by a uniform draw in [-step, step] every ``period`` seconds,
    reflected back into [minimum, maximum]. The draws come from ``random.Random(seed)``, whose sequence
    Python keeps stable across versions, so one seed gives one walk everywhere."""

    seed: int
    step: float
    minimum: float
    maximum: float
    start: float
    period: float = 1.0

    def _walk(self) -> Iterator[float]:
        draws = random.Random(self.seed)
        value = self.start
        span = self.maximum - self.minimum
        while True:
            yield value
            value += draws.uniform(-self.step, self.step)
            if not self.minimum <= value <= self.maximum:
                # Reflect at the bounds, as often as a step larger than the span needs: reflections
                # repeat every two spans, so fold modulo that.
                folded = (value - self.minimum) % (2 * span)
                value = self.minimum + (folded if folded <= span else 2 * span - folded)
                # Guard the float edge where a reflection lands a ulp outside.
                value = min(self.maximum, max(self.minimum, value))

    def value_at(self, t: float) -> float | None:
        """Walks from the seed up to ``t``: linear in the number of steps, as a walk must be."""
        return next(itertools.islice(self._walk(), _index(t, self.period), None))

    def samples(self) -> Iterator[tuple[float, float]]:
        for index, value in enumerate(self._walk()):
            yield index * self.period, value


class Interpolation(enum.Enum):
    """Between two CSV points: keep the earlier value (``hold``, the default) or draw the line."""

    HOLD = "hold"
    LINEAR = "linear"


class EndMode(enum.Enum):
    """After the last CSV point: keep its value (``hold``, the default) or start again (``loop``)."""

    HOLD = "hold"
    LOOP = "loop"


@dataclass(frozen=True, slots=True)
class Replay:
    """A recorded series of ``(time, value)`` points, times in seconds from the source's start, strictly
    increasing. The source holds nothing before the first point and is exact at every point. With
    ``LINEAR`` it also samples every ``interval`` seconds between points. With ``LOOP`` the series
    repeats every ``duration`` seconds (longer than the last time), the next cycle's first point coming
    after the last point as any point follows its predecessor."""

    times: tuple[float, ...]
    values: tuple[float, ...]
    interpolation: Interpolation = Interpolation.HOLD
    end: EndMode = EndMode.HOLD
    duration: float | None = None  # the cycle length when looping
    interval: float = 1.0  # the sampling between points when linear

    def __post_init__(self) -> None:
        if not self.times or len(self.times) != len(self.values):
            raise ValueError("a replay needs as many values as times, at least one")
        if any(b <= a for a, b in itertools.pairwise(self.times)):
            raise ValueError("replay times must be strictly increasing")
        if self.end is EndMode.LOOP and (self.duration is None or self.duration <= self.times[-1]):
            raise ValueError("a looping replay needs a duration longer than its last time")

    def _next_point(self, index: int) -> tuple[float, float] | None:
        """The point after point ``index`` of cycle 0, as (time, value) on cycle 0's time base."""
        if index + 1 < len(self.times):
            return self.times[index + 1], self.values[index + 1]
        if self.end is EndMode.LOOP:
            assert self.duration is not None
            return self.duration + self.times[0], self.values[0]
        return None

    def _between(self, index: int, local: float) -> float:
        """The value at ``local`` (cycle 0's time base) from point ``index`` on, before the next."""
        following = self._next_point(index)
        if self.interpolation is Interpolation.HOLD or following is None:
            return self.values[index]
        t0, v0 = self.times[index], self.values[index]
        t1, v1 = following
        return v0 + (v1 - v0) * (local - t0) / (t1 - t0)

    def value_at(self, t: float) -> float | None:
        if t < self.times[0]:
            return None
        if self.end is not EndMode.LOOP:
            return self._between(bisect.bisect_right(self.times, t) - 1, t)
        assert self.duration is not None
        first, duration = self.times[0], self.duration
        local = t - math.floor((t - first) / duration) * duration
        # ``t - cycle * duration`` is rounded: an instant within that rounding of a point is the point.
        rounding = _ROUNDING * max(1.0, abs(t))
        if local >= first + duration - rounding or local < first:
            return self.values[0]  # the next cycle's first point
        index = bisect.bisect_right(self.times, local) - 1
        if index + 1 < len(self.times) and self.times[index + 1] - local <= rounding:
            return self.values[index + 1]
        return self._between(index, local)

    def samples(self) -> Iterator[tuple[float, float]]:
        for cycle in itertools.count():
            base = cycle * self.duration if self.duration is not None else 0.0
            for index, (t0, v0) in enumerate(zip(self.times, self.values, strict=True)):
                yield base + t0, v0
                following = self._next_point(index)
                if self.interpolation is Interpolation.LINEAR and following is not None:
                    t1, v1 = following
                    for step in itertools.count(1):
                        local = t0 + step * self.interval
                        if local >= t1 - _INDEX_SLACK * self.interval:
                            break
                        yield base + local, v0 + (v1 - v0) * (local - t0) / (t1 - t0)
            if self.end is not EndMode.LOOP:
                return
