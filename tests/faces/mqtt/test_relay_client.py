"""The broker connection's pieces that need no broker: reconnect backoff, and the client library's
per-message warnings held to one line per kind."""

from __future__ import annotations

import logging

import pytest

from tap_emulator.faces.mqtt.client import PAHO_LOGGER, Backoff


def test_backoff_doubles_to_its_ceiling_with_bounded_jitter_and_resets() -> None:
    backoff = Backoff(first=0.2, most=1.0, jitter=lambda: 0.0)
    assert [round(backoff.delay(), 3) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.delay() == 0.2
    jittered = Backoff(first=1.0, most=1.0, jitter=lambda: 1.0)
    assert jittered.delay() == pytest.approx(1.2)  # at most 20 % more


def test_the_client_librarys_repeated_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    paho = logging.getLogger(PAHO_LOGGER)
    for _ in range(500):
        paho.warning("Message queue is full. Discarding message.")
    lines = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].name == "tap_emulator.faces.mqtt.client"
    paho.debug("Received PUBLISH (d0, q0, r0, m0)")  # DEBUG stays below the logger's level
    assert not any("Received PUBLISH" in r.getMessage() for r in caplog.records)
