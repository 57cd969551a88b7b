"""The broker connection's pieces that need no broker: reconnect backoff, and the client library's
per-message warnings held to one line per kind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt
import pytest

from tap_emulator.faces.mqtt.client import PAHO_LOGGER, Backoff, BrokerSettings, MqttRelay


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


class _StuckRouter:
    """Every command waits until released: what a flood of slow commands looks like."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.served = 0

    def subscriptions(self) -> Sequence[str]:
        return ["cmd"]

    def route(self, topic: str) -> Callable[[bytes], Awaitable[tuple[str, bytes] | None]] | None:
        return self._serve if topic == "cmd" else None

    async def _serve(self, payload: bytes) -> tuple[str, bytes] | None:
        await self.release.wait()
        self.served += 1
        return None


async def test_commands_in_flight_are_capped_and_the_rest_dropped(caplog: pytest.LogCaptureFixture) -> None:
    router = _StuckRouter()
    relay = MqttRelay(lambda: BrokerSettings("127.0.0.1", 1, "x"), router, max_in_flight=8)
    for mid in range(50):
        relay._dispatch(aiomqtt.Message("cmd", b"00", 0, False, mid, None))
        relay._dispatch(aiomqtt.Message("other", b"00", 0, False, mid, None))  # no device there
    assert len(relay._handlers) == 8
    assert sum("too many commands in flight" in r.getMessage() for r in caplog.records) == 1
    router.release.set()
    await relay.stop()
    assert router.served <= 8


class _UnconfirmingClient:
    """A connection that stays up but never confirms a topic change (the SUBACK timed out)."""

    def __init__(self) -> None:
        self.asked: list[object] = []

    async def subscribe(self, topics: object, **_: object) -> None:
        self.asked.append(topics)
        raise aiomqtt.MqttError("Operation timed out")

    async def unsubscribe(self, topics: object, **_: object) -> None:
        self.asked.append(topics)
        raise aiomqtt.MqttError("Operation timed out")


async def test_a_topic_change_the_broker_does_not_confirm_reconnects_so_no_topic_is_left_out() -> None:
    relay = MqttRelay(lambda: BrokerSettings("127.0.0.1", 1, "x"), _StuckRouter(), subscribe_batch=2)
    client = _UnconfirmingClient()
    relay._client = client  # type: ignore[assignment]
    await relay.subscribe(["a", "b", "c"])
    assert relay._change.is_set()  # the reconnection subscribes every listed topic again
    relay._change.clear()
    await relay.unsubscribe(["a"])
    assert relay._change.is_set()
    # A connection already gone is simply re-made: no second request for it.
    relay._change.clear()
    relay._client = None
    await relay.subscribe(["d"])
    assert not relay._change.is_set() and len(client.asked) == 3
