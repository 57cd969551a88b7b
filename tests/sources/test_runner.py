"""The runner: one task for every source, driven by a manual clock into a recording sink (no sleeps)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from manual_clock import ORIGIN, ManualClock

from tap_emulator.sources import (
    Constant,
    Counter,
    EndMode,
    Generator,
    MonotonicClock,
    RandomWalk,
    Replay,
    SampleSchedule,
    Sine,
    SourceConfig,
    SourceRunner,
)
from tap_emulator.sources.runner import MAX_CATCH_UP_SECONDS


class RecordingSink:
    def __init__(self, clock: ManualClock, variables: set[int] | None = None) -> None:
        self.clock = clock
        self.variables = variables
        self.writes: list[tuple[float, int, float]] = []  # (seconds since origin, variable, value)

    def source_write(self, variable_id: int, value: float) -> bool:
        if self.variables is not None and variable_id not in self.variables:
            return False
        self.writes.append((self.clock.now() - ORIGIN, variable_id, value))
        return True

    def of(self, variable: int) -> list[tuple[float, float]]:
        return [(t, v) for t, var, v in self.writes if var == variable]


def sources(*generators: Generator) -> list[SourceConfig]:
    return [SourceConfig(index + 1, type(g).__name__.lower(), g) for index, g in enumerate(generators)]


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock()


async def test_start_writes_the_values_due_at_zero_before_returning(clock: ManualClock) -> None:
    sink = RecordingSink(clock)
    runner = SourceRunner(
        sources(Constant(5), Counter(start=3), Sine(period=4, offset=1), Replay((1.0,), (9.0,))),
        sink,
        clock,
    )
    runner.start()
    try:
        assert sorted(sink.writes) == [(0, 1, 5), (0, 2, 3), (0, 3, 1)]  # the replay's first point is at 1 s
        assert runner.running
    finally:
        await runner.stop()
    assert not runner.running


async def test_every_source_is_written_when_due_from_one_task(clock: ManualClock) -> None:
    sink = RecordingSink(clock)
    replay = Replay((0.5, 1.25, 2.0), (10.0, 20.0, 30.0))
    tasks_before = len(asyncio.all_tasks())
    runner = SourceRunner(sources(Counter(period=1), replay, *[Counter(period=0.5)] * 40), sink, clock)
    runner.start()
    try:
        assert len(asyncio.all_tasks()) == tasks_before + 1  # 42 sources, one task
        await clock.settle(runner)
        while (wake := clock.next_wake) is not None and wake <= ORIGIN + 3:
            await clock.advance_to(runner, wake)  # exactly at each deadline the runner asked for
        assert sink.of(1) == [(0, 0), (1, 1), (2, 2), (3, 3)]
        # The replay is written at its points with its points' values, exactly.
        assert sink.of(2) == [(0.5, 10.0), (1.25, 20.0), (2.0, 30.0)]
        assert sink.of(42) == [(i * 0.5, i) for i in range(7)]
        assert {t for t, _ in sink.of(2)} <= {t for t, _, _ in sink.writes}
    finally:
        await runner.stop()


async def test_a_late_wake_writes_only_each_source_s_latest_value(clock: ManualClock) -> None:
    sink = RecordingSink(clock)
    runner = SourceRunner(sources(Counter(period=1), Replay((0.0, 1.0, 2.0), (1.0, 2.0, 3.0))), sink, clock)
    runner.start()
    try:
        await clock.advance_to(runner, ORIGIN + 3.5)  # three periods late
        assert sink.writes[2:] == [(3.5, 1, 3), (3.5, 2, 3.0)]
        assert clock.next_wake == ORIGIN + 4
        await clock.advance_to(runner, ORIGIN + 4)
        assert clock.next_wake == ORIGIN + 5
        assert sink.writes[-1] == (4, 1, 4)
    finally:
        await runner.stop()


async def test_after_a_long_stall_sources_resume_where_they_were(clock: ManualClock) -> None:
    sink = RecordingSink(clock)
    runner = SourceRunner(sources(Counter(period=1)), sink, clock)
    runner.start()
    try:
        await clock.advance_to(runner, ORIGIN + 1)
        await clock.advance_to(runner, ORIGIN + 1001)  # a suspended machine
        # The sample due at 2 s counts as MAX_CATCH_UP_SECONDS late, not 999 s: the counter reads 7.
        assert sink.of(1)[-1] == (1001, 2 + MAX_CATCH_UP_SECONDS)
        assert clock.next_wake == ORIGIN + 1002
        await clock.advance_to(runner, ORIGIN + 1002)
        assert sink.of(1)[-1] == (1002, 3 + MAX_CATCH_UP_SECONDS)
    finally:
        await runner.stop()


async def test_the_task_ends_once_every_source_is_done(clock: ManualClock) -> None:
    sink = RecordingSink(clock)
    runner = SourceRunner(sources(Constant(1), Replay((0.0, 2.0), (4.0, 5.0))), sink, clock)
    runner.start()
    await clock.advance_to(runner, ORIGIN + 2)
    assert not runner.running and clock.next_wake is None
    assert sink.writes == [(0, 1, 1), (0, 2, 4.0), (2, 2, 5.0)]
    await runner.stop()


async def test_restart_begins_every_source_again_from_zero(clock: ManualClock) -> None:
    sink = RecordingSink(clock)
    walk = RandomWalk(seed=3, step=1, minimum=0, maximum=10, start=5, period=1)
    runner = SourceRunner(sources(Counter(start=7), walk), sink, clock)
    runner.start()
    for second in range(1, 4):
        await clock.advance_to(runner, ORIGIN + second)
    first_run = [v for _, v in sink.of(2)]
    sink.writes.clear()
    await runner.restart()
    assert sink.writes == [(3, 1, 7), (3, 2, 5)]
    for second in range(4, 7):
        await clock.advance_to(runner, ORIGIN + second)
    assert [v for _, v in sink.of(1)] == [7, 8, 9, 10]
    assert [v for _, v in sink.of(2)] == first_run  # the same seeded walk
    await runner.stop()
    with pytest.raises(RuntimeError):
        runner.start()
        runner.start()
    await runner.stop()


async def test_a_missing_variable_is_logged_once_and_the_others_go_on(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingSink(clock, variables={1})
    runner = SourceRunner(sources(Counter(), Counter()), sink, clock)
    with caplog.at_level(logging.WARNING, logger="tap_emulator.sources.runner"):
        runner.start()
        for second in range(1, 4):
            await clock.advance_to(runner, ORIGIN + second)
    await runner.stop()
    assert sink.of(1) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["value source of variable 2: the device has no such variable"]


async def test_a_failing_sink_does_not_stop_the_runner(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(RecordingSink):
        def source_write(self, variable_id: int, value: float) -> bool:
            if variable_id == 2:
                raise OverflowError("boom")
            return super().source_write(variable_id, value)

    sink = Failing(clock)
    runner = SourceRunner(sources(Counter(), Counter()), sink, clock)
    with caplog.at_level(logging.ERROR, logger="tap_emulator.sources.runner"):
        runner.start()
        for second in range(1, 3):
            await clock.advance_to(runner, ORIGIN + second)
        assert runner.running
    await runner.stop()
    assert sink.of(1) == [(0, 0), (1, 1), (2, 2)]
    assert len(caplog.records) == 1 and "variable 2: write failed" in caplog.records[0].getMessage()


def test_the_schedule_merges_streams_in_time_order() -> None:
    schedule = SampleSchedule(
        sources(Counter(period=2), Replay((0.5, 1.0, 3.0), (1.0, 2.0, 3.0), end=EndMode.HOLD)), origin=10
    )
    assert schedule.deadline() == 10
    assert schedule.take_due(10) == [(1, 0)]
    assert schedule.deadline() == 10.5
    assert schedule.take_due(10.4) == []
    assert schedule.take_due(10.5) == [(2, 1.0)]
    assert schedule.take_due(11) == [(2, 2.0)]
    # Late: one write per source (its latest), in the order they fell due (the counter at 2, replay at 3).
    assert schedule.take_due(13) == [(1, 1), (2, 3.0)]
    assert schedule.deadline() == 14
    assert schedule.take_due(14) == [(1, 2)]


async def test_the_real_clock_returns_at_once_for_a_past_deadline() -> None:
    clock = MonotonicClock()
    now = clock.now()
    await asyncio.wait_for(clock.sleep_until(now - 1), 1)
    assert clock.now() >= now


async def test_a_failing_generator_stops_the_runner_with_one_log_line(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def value_at(self, t: float) -> float | None:
            return 0.0

        def samples(self) -> Iterator[tuple[float, float]]:
            yield 0.0, 1.0
            yield 1.0, 2.0
            raise ZeroDivisionError("a generator bug")

    sink = RecordingSink(clock)
    runner = SourceRunner([SourceConfig(1, "broken", Broken())], sink, clock)
    with caplog.at_level(logging.ERROR, logger="tap_emulator.sources.runner"):
        runner.start()
        await clock.advance_to(runner, ORIGIN + 1)
    assert not runner.running
    assert sink.writes == [(0, 1, 1.0)]  # the stream broke while the runner looked past 1 s
    assert [r.getMessage() for r in caplog.records] == ["the value sources stopped"]
    await runner.stop()
