"""The generators alone: each kind's value at a time and its sample stream, with no clock at all."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.sources import (
    Constant,
    Counter,
    EndMode,
    Generator,
    Interpolation,
    RandomWalk,
    Replay,
    Sine,
)


def first(generator: Generator, count: int) -> list[tuple[float, float]]:
    return list(itertools.islice(generator.samples(), count))


def test_constant_is_one_sample_at_start() -> None:
    constant = Constant(21.5)
    assert list(constant.samples()) == [(0.0, 21.5)]
    assert constant.value_at(0) == constant.value_at(1e6) == 21.5


def test_counter_steps_every_period() -> None:
    counter = Counter(start=10, step=5, period=2)
    assert first(counter, 4) == [(0, 10), (2, 15), (4, 20), (6, 25)]
    assert counter.value_at(0) == 10
    assert counter.value_at(1.999) == 10
    assert counter.value_at(2) == 15
    assert counter.value_at(7.5) == 25


def test_counter_wraps_back_to_start_before_reaching_wrap() -> None:
    counter = Counter(start=0, step=1, period=1, wrap=4)
    assert [v for _, v in first(counter, 10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    down = Counter(start=10, step=-3, period=0.5, wrap=0)  # 10 7 4 1, then 10 again
    assert [v for _, v in first(down, 6)] == [10, 7, 4, 1, 10, 7]
    assert down.value_at(2.0) == 10


def test_counter_on_a_decimal_period_lands_on_each_index() -> None:
    # 0.1 * 3 / 0.1 is 3.0000000000000004 and 0.7 / 0.1 is 6.999999999999999: both are their index.
    counter = Counter(period=0.1)
    for index, (t, value) in enumerate(first(counter, 200)):
        assert value == index
        assert counter.value_at(t) == index


def test_sine_follows_the_formula_with_phase_in_degrees() -> None:
    sine = Sine(period=8, amplitude=3, offset=20, phase=90, interval=1)
    samples = first(sine, 9)
    assert [t for t, _ in samples] == list(range(9))
    assert samples[0][1] == pytest.approx(23)  # sin(90°) = 1
    assert samples[2][1] == pytest.approx(20)  # a quarter period later
    assert samples[4][1] == pytest.approx(17)
    assert samples[8][1] == pytest.approx(23)  # one period on
    assert sine.value_at(2.5) == pytest.approx(20 + 3 * math.sin(2 * math.pi * 2.5 / 8 + math.pi / 2))
    assert Sine(period=4).value_at(1) == pytest.approx(1)  # amplitude 1, offset 0, phase 0


def test_random_walk_is_reproducible_from_its_seed() -> None:
    walk = RandomWalk(seed=42, step=2, minimum=0, maximum=10, start=5, period=0.5)
    again = RandomWalk(seed=42, step=2, minimum=0, maximum=10, start=5, period=0.5)
    other = RandomWalk(seed=43, step=2, minimum=0, maximum=10, start=5, period=0.5)
    samples = first(walk, 500)
    assert samples == first(again, 500)
    assert samples != first(other, 500)
    assert samples[0] == (0.0, 5.0)
    assert [t for t, _ in samples[:4]] == [0, 0.5, 1, 1.5]
    # The first step is the seed's first draw, as random.Random documents it.
    assert samples[1][1] == pytest.approx(5 + random.Random(42).uniform(-2, 2))
    assert all(0 <= v <= 10 for _, v in samples)
    assert all(abs(b - a) <= 2 + 1e-12 for (_, a), (_, b) in itertools.pairwise(samples))
    for t, value in samples[::37]:
        assert walk.value_at(t) == value
        assert walk.value_at(t + 0.25) == value  # held until the next step


@given(
    seed=st.integers(0, 2**32),
    step=st.floats(0.01, 50),
    low=st.floats(-100, 100),
    span=st.floats(0.01, 100),
)
def test_random_walk_stays_within_its_bounds_even_with_large_steps(
    seed: int, step: float, low: float, span: float
) -> None:
    walk = RandomWalk(seed, step, low, low + span, low, period=1)
    assert all(low <= v <= low + span for _, v in first(walk, 200))


POINTS = ((0.0, 1.0, 2.5, 4.0), (10.0, -3.0, 7.25, 100.0))


def test_replay_hold_is_exact_at_each_point_and_holds_between() -> None:
    replay = Replay(*POINTS)
    assert list(replay.samples()) == list(zip(*POINTS, strict=True))  # ends after the last point
    for t, value in zip(*POINTS, strict=True):
        assert replay.value_at(t) == value
    assert replay.value_at(0.999) == 10.0
    assert replay.value_at(2.4) == -3.0
    assert replay.value_at(1e6) == 100.0  # end = hold


def test_replay_linear_samples_between_points_and_still_hits_them() -> None:
    replay = Replay(*POINTS, interpolation=Interpolation.LINEAR, interval=0.5)
    samples = list(replay.samples())
    assert [t for t, _ in samples] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    third = 10.25 / 3
    assert [v for _, v in samples] == pytest.approx(
        [10.0, 3.5, -3.0, -3 + third, -3 + 2 * third, 7.25, 7.25 + 92.75 / 3, 7.25 + 2 * 92.75 / 3, 100.0]
    )
    # The points themselves are the CSV's values, not the end of a line's arithmetic.
    assert [samples[i][1] for i in (0, 2, 5, 8)] == [10.0, -3.0, 7.25, 100.0]
    for t, value in samples:
        assert replay.value_at(t) == pytest.approx(value)
    assert replay.value_at(1.75) == pytest.approx(-3 + 10.25 * 0.75 / 1.5)
    assert replay.value_at(50) == 100.0


def test_replay_before_its_first_point_holds_nothing() -> None:
    replay = Replay((2.0, 3.0), (1.0, 2.0))
    assert replay.value_at(1.99) is None
    assert replay.value_at(2.0) == 1.0
    assert next(replay.samples()) == (2.0, 1.0)


def test_replay_loop_repeats_every_duration_exactly() -> None:
    replay = Replay((0.5, 1.0, 2.0), (1.0, 2.0, 3.0), end=EndMode.LOOP, duration=3.0)
    samples = first(replay, 9)
    assert samples == [
        (0.5, 1.0),
        (1.0, 2.0),
        (2.0, 3.0),
        (3.5, 1.0),
        (4.0, 2.0),
        (5.0, 3.0),
        (6.5, 1.0),
        (7.0, 2.0),
        (8.0, 3.0),
    ]
    for t, value in first(replay, 3000)[::7]:
        assert replay.value_at(t) == value
    assert replay.value_at(3.2) == 3.0  # still the last point of cycle 0
    linear = Replay((0.0, 1.0), (0.0, 10.0), Interpolation.LINEAR, EndMode.LOOP, duration=2.0, interval=0.5)
    # After the last point the line runs to the next cycle's first point.
    assert first(linear, 6) == [(0, 0), (0.5, 5), (1, 10), (1.5, 5), (2, 0), (2.5, 5)]
    assert linear.value_at(1.75) == 2.5


def test_replay_rejects_what_its_parser_would() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Replay((0.0, 2.0, 1.0), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="duration"):
        Replay((0.0, 2.0), (1.0, 2.0), end=EndMode.LOOP, duration=2.0)


periods = st.floats(0.01, 1000)
numbers = st.floats(-1e6, 1e6)


@given(
    start=numbers,
    step=numbers.filter(lambda s: abs(s) > 1e-3),
    period=periods,
    wrap_after=st.none() | st.integers(1, 50),
)
def test_counter_value_at_each_sample_time_is_that_sample(
    start: float, step: float, period: float, wrap_after: int | None
) -> None:
    wrap = None if wrap_after is None else start + step * wrap_after
    counter = Counter(start, step, period, wrap)
    for t, value in first(counter, 120):
        assert counter.value_at(t) == value
    if wrap_after is not None:
        assert len({v for _, v in first(counter, 120)}) == min(wrap_after, 120)


@given(
    gaps=st.lists(st.floats(0.01, 100), min_size=1, max_size=30),
    values=st.lists(numbers, min_size=31, max_size=31),
    start=st.floats(0, 100),
    linear=st.booleans(),
    loop=st.booleans(),
)
def test_replay_value_at_each_sample_time_is_that_sample(
    gaps: list[float], values: list[float], start: float, linear: bool, loop: bool
) -> None:
    times = list(itertools.accumulate(gaps, initial=start))
    replay = Replay(
        tuple(times),
        tuple(values[: len(times)]),
        Interpolation.LINEAR if linear else Interpolation.HOLD,
        EndMode.LOOP if loop else EndMode.HOLD,
        duration=times[-1] + 1 if loop else None,
        interval=max(0.01, min(gaps) / 3),
    )
    samples = first(replay, 400)
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    points = dict(zip(times, values, strict=False))
    for t, value in samples:
        assert replay.value_at(t) == pytest.approx(value, rel=1e-9, abs=1e-6)
        if t in points:  # a CSV point is its own value, exactly
            assert value == points[t]
