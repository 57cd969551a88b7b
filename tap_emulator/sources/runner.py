"""One task that drives every value source of a device: sleep until the next due sample, write it, repeat.

A device may have hundreds of sources; one asyncio task per source would cost a task each and wake
as many times. Instead ``SampleSchedule`` (sans-IO: no clock, no sink) merges the generators' sample
streams into one heap, and ``SourceRunner`` is the thin loop around it: ask the schedule for its
deadline, sleep on the injected ``Clock`` until then, hand the due values to the ``VariableSink``
(the variable handler's ``source_write``, contract C2).

When the loop wakes late, each source writes only its latest due value (observers are not flooded
with stale samples). After a stall longer than ``MAX_CATCH_UP_SECONDS`` (a suspended machine) the
sources resume from where they were, as if paused, instead of walking through every missed sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

from tap_emulator.sources.profile import SourceConfig

__all__ = [
    "MAX_CATCH_UP_SECONDS",
    "Clock",
    "MonotonicClock",
    "SampleSchedule",
    "SourceRunner",
    "VariableSink",
]

log = logging.getLogger(__name__)

MAX_CATCH_UP_SECONDS = 5.0


class VariableSink(Protocol):
    def source_write(self, variable_id: int, value: float) -> bool:
        """Write ``value`` to the variable (in memory, with change events); False if there is none."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return at or after ``deadline`` (in ``now``'s seconds)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic``, which is also asyncio's loop clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        # asyncio may wake a hair early (its clock resolution); sleep again until the deadline is past.
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(remaining)


class SampleSchedule:
    """The merged samples of every source, against a clock started at ``origin``.

    ``deadline()`` is the clock time of the next due sample (None once every source is done, e.g.
    constants and replays that hold their last point); ``take_due(now)`` returns the
    ``(variable, value)`` writes due by ``now``, in time order, one per source.
    """

    def __init__(self, sources: Sequence[SourceConfig], origin: float) -> None:
        self.origin = origin
        self._variables = [source.variable for source in sources]
        self._streams: list[Iterator[tuple[float, float]]] = [s.generator.samples() for s in sources]
        self._pending: dict[int, float] = {}  # source index -> value of its next sample
        self._heap: list[tuple[float, int]] = []  # (source time, source index)
        for index, stream in enumerate(self._streams):
            self._push(index, next(stream, None))

    def _push(self, index: int, sample: tuple[float, float] | None) -> None:
        if sample is not None:
            self._pending[index] = sample[1]
            heapq.heappush(self._heap, (sample[0], index))

    def deadline(self) -> float | None:
        return self.origin + self._heap[0][0] if self._heap else None

    def take_due(self, now: float) -> list[tuple[int, float]]:
        if self._heap:
            lag = now - self.origin - self._heap[0][0]
            if lag > MAX_CATCH_UP_SECONDS:  # resume as if paused for the stall, less the catch-up window
                self.origin += lag - MAX_CATCH_UP_SECONDS
                log.info("value sources resumed after a %.1f s stall", lag)
        source_now = now - self.origin
        writes: list[tuple[int, float]] = []
        while self._heap and self._heap[0][0] <= source_now:
            _, index = heapq.heappop(self._heap)
            value = self._pending.pop(index)
            stream = self._streams[index]
            following = next(stream, None)
            while following is not None and following[0] <= source_now:  # late: keep only the latest
                value = following[1]
                following = next(stream, None)
            writes.append((self._variables[index], value))
            self._push(index, following)
        return writes


class SourceRunner:
    """Runs a device's sources into a sink; ``start`` and ``stop`` (and ``restart``, for a reboot).

    ``start`` writes the samples due at time 0 before it returns, so a device announces its endpoints
    with its sources' first values already in place.
    """

    def __init__(
        self, sources: Sequence[SourceConfig], sink: VariableSink, clock: Clock | None = None
    ) -> None:
        self.sources = tuple(sources)
        self.sink = sink
        self.clock: Clock = clock or MonotonicClock()
        self._task: asyncio.Task[None] | None = None
        self._missing: set[int] = set()  # variables already reported absent (logged once each)
        self._failing: set[int] = set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the source runner is already started")
        schedule = SampleSchedule(self.sources, self.clock.now())
        self._write(schedule.take_due(self.clock.now()))
        self._task = asyncio.get_running_loop().create_task(self._run(schedule), name="value-sources")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def restart(self) -> None:
        """From time 0 again, as the device's sources do after a reboot."""
        await self.stop()
        self.start()

    async def _run(self, schedule: SampleSchedule) -> None:
        try:
            while (deadline := schedule.deadline()) is not None:
                await self.clock.sleep_until(deadline)
                self._write(schedule.take_due(self.clock.now()))
        except Exception:  # a generator's bug: say so once, leave the device serving
            log.exception("the value sources stopped")

    def _write(self, writes: list[tuple[int, float]]) -> None:
        for variable, value in writes:
            try:
                written = self.sink.source_write(variable, value)
            except Exception as exc:  # a sink bug must not stop the other sources
                if variable not in self._failing:
                    self._failing.add(variable)
                    log.error("value source of variable %d: write failed: %r", variable, exc)
                continue
            if not written and variable not in self._missing:
                self._missing.add(variable)
                log.warning("value source of variable %d: the device has no such variable", variable)
            elif written:
                self._missing.discard(variable)  # created since: report again if it goes away
