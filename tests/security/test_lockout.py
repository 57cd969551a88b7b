"""The device-wide login lockout, driven by explicit times (no clock of its own)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.security.lockout import LoginLockout


def test_third_failure_starts_the_lockout_for_the_configured_time() -> None:
    lockout = LoginLockout(3, 60)
    assert lockout.record_failure(0) is False
    assert lockout.record_failure(1) is False
    assert not lockout.is_locked(1)
    assert lockout.record_failure(2) is True
    assert lockout.is_locked(2)
    assert lockout.seconds_left(32) == pytest.approx(30)
    assert lockout.is_locked(61.9)
    assert not lockout.is_locked(62)
    assert lockout.failures == 0  # the count starts again after a lockout


def test_attempts_while_locked_do_not_extend_it() -> None:
    lockout = LoginLockout(1, 10)
    lockout.record_failure(0)
    for t in range(1, 10):
        assert lockout.record_failure(t) is False
    assert not lockout.is_locked(10)


def test_success_resets_the_count() -> None:
    lockout = LoginLockout(3, 60)
    lockout.record_failure(0)
    lockout.record_failure(0)
    lockout.record_success()
    lockout.record_failure(0)
    lockout.record_failure(0)
    assert not lockout.is_locked(0)
    assert lockout.failures == 2


def test_zero_failures_disables_the_lockout() -> None:
    lockout = LoginLockout(0, 60)
    for t in range(100):
        assert lockout.record_failure(t) is False
    assert not lockout.is_locked(100)
    assert lockout.seconds_left(100) == 0


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        LoginLockout(-1, 1)
    with pytest.raises(ValueError):
        LoginLockout(1, -1)


@given(st.integers(1, 10), st.floats(0.1, 1000), st.lists(st.floats(0, 10), max_size=40))
def test_locked_exactly_when_n_failures_fall_before_the_window_ends(
    limit: int, window: float, gaps: list[float]
) -> None:
    lockout = LoginLockout(limit, window)
    now, count, until = 0.0, 0, None
    for gap in gaps:
        now += gap
        if until is not None and now >= until:
            until, count = None, 0
        started = lockout.record_failure(now)
        if until is None:
            count += 1
            if count >= limit:
                until = now + window
                assert started
        assert lockout.is_locked(now) == (until is not None and now < until)
