"""RateLimitedLog: one line per key per interval, a count of what was held back, bounded keys."""

from __future__ import annotations

import logging

import pytest

from tap_emulator.logsafety import EpisodeLog, RateLimitedLog


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_collapses_into_one_line_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limited = RateLimitedLog(logging.getLogger("t.burst"), interval=10, clock=clock)
    with caplog.at_level(logging.DEBUG, "t.burst"):
        written = [limited.warning("peer", "bad datagram from %s", "p") for _ in range(1000)]
        clock.now = 10.0
        limited.warning("peer", "bad datagram from %s", "p")
    assert written.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "bad datagram from p",
        "bad datagram from p (999 similar lines suppressed)",
    ]


def test_keys_are_independent_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limited = RateLimitedLog(logging.getLogger("t.keys"), interval=10, max_keys=2, clock=clock)
    with caplog.at_level(logging.DEBUG, "t.keys"):
        assert limited.info("a", "a")
        assert limited.info("b", "b")
        assert not limited.info("a", "a")
        assert limited.info("c", "c")  # drops "a", the oldest key
        assert limited.info("a", "a")  # so "a" is new again
    assert len(caplog.records) == 4


def test_a_disabled_level_costs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("t.off"), interval=0)
    with caplog.at_level(logging.WARNING, "t.off"):
        assert not limited.debug("k", "hidden")
    assert caplog.records == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("t"), interval=-1)
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("t"), max_keys=0)


def test_an_episode_logs_its_start_once_and_its_end_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    episodes = EpisodeLog(logging.getLogger("t.episode"))
    with caplog.at_level(logging.DEBUG, "t.episode"):
        assert not episodes.recovered("fine again")  # no episode running: nothing to say
        logged = [episodes.failed("SQLITE_FULL", "disk full: %s", "state") for _ in range(500)]
        assert episodes.failing
        assert episodes.failed("SQLITE_IOERR", "i/o error")  # another cause is news
        assert episodes.recovered("writes succeed again")
        assert not episodes.recovered("nothing to end")  # the episode is over
        assert episodes.failed("SQLITE_FULL", "disk full: %s", "state")  # a new episode
    assert logged.count(True) == 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "disk full: state"),
        (logging.ERROR, "i/o error"),
        (logging.WARNING, "writes succeed again (after 501 failure(s))"),
        (logging.ERROR, "disk full: state"),
    ]
