"""The MQTT relay of a fleet: one broker connection carrying every device's COMMAND topic.

Why it exists: ten thousand devices each on a connection of their own would cost ten thousand sockets,
tasks and keepalives, and a broker restart would be ten thousand reconnections. Here one `MqttRelay`
serves a router whose topics are every device's; a command finds its device by a dict lookup on the
topic. A device costs a small record (its topic string and the device object the caller gave) until
its first command: only then does the fleet ask the device for its `TapFace` (``RelayDevice.face``,
where the caller builds the tree) and make its `RelayEndpoint`. The bounds are the connection's
(``max_in_flight`` commands at a time for the whole fleet) and each endpoint's (senders, idle time).

K (the topic's key, 5,000 PBKDF2 rounds a device) is the heavy part of a device's topics: `relay_keys`
computes many at once on a small thread pool (hashlib releases the GIL), so a fleet's start-up does not
hold the event loop, and its caller can cache them (with a digest of the net key) between runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, Protocol

from tap_emulator.codec.mqtt_relay import ANSWER, COMMAND, relay_key, relay_topics
from tap_emulator.faces.mqtt.client import (
    CONNECT_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_SUBSCRIBE_BATCH,
    Backoff,
    BrokerSettings,
    MqttRelay,
)
from tap_emulator.faces.mqtt.relay import DEFAULT_IDLE_SECONDS, DEFAULT_MAX_SESSIONS, RelayEndpoint
from tap_emulator.faces.tap.session import TapFace
from tap_emulator.logsafety import RateLimitedLog

__all__ = ["KEY_WORKERS", "FleetRelay", "RelayDevice", "relay_keys"]

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

KEY_WORKERS: Final = 2  # threads deriving keys: the machines this runs on have few cores to share
_KEYS_PER_JOB: Final = 64  # serials per pool job: few futures, and the loop hears back often
_KEY_PATTERN: Final = re.compile(r"[0-9A-F]{32}")
_TOPIC_FORBIDDEN: Final = frozenset("/+#\0")


async def relay_keys(
    net_key: str,
    serials: Iterable[str],
    *,
    executor: concurrent.futures.Executor | None = None,
) -> dict[str, str]:
    """K of every serial (``relay_key``'s rule, the one place it lives), derived off the event loop.

    The work runs on ``executor`` when given (a process's shared worker), else on a pool of
    `KEY_WORKERS` threads made for this call and shut down after it. Duplicate serials are derived once.
    """
    unique = list(dict.fromkeys(serials))
    for serial in unique:
        if not isinstance(serial, str) or not serial:
            raise ValueError(f"a serial number must be non-empty text, not {serial!r}")
    if not isinstance(net_key, str):
        raise ValueError("the net key must be text")
    if not unique:
        return {}
    pool = executor or concurrent.futures.ThreadPoolExecutor(
        max_workers=min(KEY_WORKERS, os.cpu_count() or 1), thread_name_prefix="relay-keys"
    )
    loop = asyncio.get_running_loop()
    try:
        jobs = [
            loop.run_in_executor(pool, _derive, net_key, unique[start : start + _KEYS_PER_JOB])
            for start in range(0, len(unique), _KEYS_PER_JOB)
        ]
        keys: dict[str, str] = {}
        for part in await asyncio.gather(*jobs):
            keys.update(part)
        return keys
    finally:
        if executor is None:
            pool.shutdown(wait=False, cancel_futures=True)


def _derive(net_key: str, serials: Sequence[str]) -> dict[str, str]:
    return {serial: relay_key(net_key, serial) for serial in serials}


class RelayDevice(Protocol):
    """A device as the fleet relay sees it: its serial, its K, and its face built on demand."""

    @property
    def serial_number(self) -> str: ...

    @property
    def relay_key(self) -> str:
        """K for this device's topics (`relay_keys` computes it; the caller may have cached it)."""
        ...

    def face(self) -> TapFace:
        """The device's Tap face (its tree, login limiter, sessions), built at its first command."""
        ...


@dataclass(slots=True)
class _Member:
    """One device on the relay: all an idle device costs besides the object the caller gave."""

    device: RelayDevice
    command: str  # the answer topic is derived from it when a command is answered
    endpoint: RelayEndpoint | None = None


class FleetRelay:
    """Many devices' relay topics on one broker connection, until `stop`.

    `add` and `remove` work before `start` and while running; while running, the topic changes go out at
    once, batched (adds made in one go share SUBSCRIBE packets), and `settled` waits for them. Every
    (re)connection subscribes every device's topic.
    """

    def __init__(
        self,
        broker: BrokerSettings | Callable[[], BrokerSettings],
        *,
        clock: Callable[[], float],
        backoff: Backoff | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        subscribe_batch: int = DEFAULT_SUBSCRIBE_BATCH,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        if max_sessions < 1 or idle_seconds <= 0:
            raise ValueError("max sessions must be at least 1 and the idle time positive")
        settings = broker if callable(broker) else (lambda: broker)
        self.relay = MqttRelay(
            settings, self, backoff=backoff, max_in_flight=max_in_flight, subscribe_batch=subscribe_batch
        )
        self._clock = clock
        self._max_sessions = max_sessions
        self._idle_seconds = idle_seconds
        self._by_topic: dict[str, _Member] = {}
        self._by_serial: dict[str, _Member] = {}
        self._changes: deque[tuple[bool, str]] = deque()  # (subscribe?, topic), in the order asked
        self._flusher: asyncio.Task[None] | None = None
        self._running = False

    def __len__(self) -> int:
        return len(self._by_serial)

    def __contains__(self, serial: object) -> bool:
        return serial in self._by_serial

    @property
    def faces_built(self) -> int:
        """Devices that have had a command, so their face and endpoint exist."""
        return sum(1 for member in self._by_serial.values() if member.endpoint is not None)

    def built(self, serial: str) -> bool:
        member = self._by_serial.get(serial)
        return member is not None and member.endpoint is not None

    def topics(self, serial: str) -> tuple[str, str]:
        """(command topic, answer topic) of a device on the relay; KeyError for another serial."""
        command = self._by_serial[serial].command
        return command, _answer_topic(command)

    def add(self, device: RelayDevice) -> None:
        """Put ``device`` on the relay; ValueError for a serial already there or unfit for a topic."""
        self.add_many([device])

    def add_many(self, devices: Iterable[RelayDevice]) -> None:
        """`add` for many; all or nothing (every device is checked before any is added)."""
        members: dict[str, _Member] = {}
        for device in devices:
            serial, key = device.serial_number, device.relay_key
            if not isinstance(serial, str) or not serial or _TOPIC_FORBIDDEN & set(serial):
                raise ValueError(f"serial {serial!r} cannot be part of a topic (empty, or /, +, #, NUL)")
            if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
                raise ValueError(f"the relay key of {serial} is not 32 uppercase hex digits")
            if serial in self._by_serial or serial in members:
                raise ValueError(f"device {serial} is already on the relay")
            members[serial] = _Member(device, relay_topics(serial, key).command)
        for serial, member in members.items():
            self._by_serial[serial] = member
            self._by_topic[member.command] = member
            self._changed(True, member.command)

    def remove(self, serial: str) -> bool:
        """Take a device off the relay (its sessions end); False when it was not on it. Commands of it
        being served still get their answers."""
        member = self._by_serial.pop(serial, None)
        if member is None:
            return False
        del self._by_topic[member.command]
        if member.endpoint is not None:
            member.endpoint.close()
        self._changed(False, member.command)
        return True

    async def start(self, timeout: float = 30.0, *, connect_timeout: float | None = CONNECT_TIMEOUT) -> None:
        """Connect and subscribe every device added so far; ConnectionError if the broker has not
        accepted a connection within ``connect_timeout`` (None: ``timeout``) or the subscriptions are
        not done within ``timeout`` (after that, outages are retried for ever)."""
        self._running = True
        self._changes.clear()  # the first connection subscribes what is listed then
        try:
            await self.relay.start(timeout, connect_timeout=connect_timeout)
        except BaseException:
            self._running = False
            raise

    async def settled(self) -> None:
        """Return once the topic changes asked for so far have been sent and confirmed (or, without a
        connection, left to the next one, which subscribes every listed topic)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def stop(self) -> None:
        self._running = False
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        self._changes.clear()
        await self.relay.stop()
        for member in self._by_serial.values():
            if member.endpoint is not None:
                member.endpoint.close()
                member.endpoint = None

    # RelayRouter
    def subscriptions(self) -> Sequence[str]:
        return list(self._by_topic)

    def route(self, topic: str) -> Callable[[bytes], Awaitable[tuple[str, bytes] | None]] | None:
        member = self._by_topic.get(topic)
        return None if member is None else partial(self._serve, member)

    async def _serve(self, member: _Member, payload: bytes) -> tuple[str, bytes] | None:
        endpoint = member.endpoint
        if endpoint is None:
            serial = member.device.serial_number
            try:
                face = member.device.face()
            except Exception as exc:
                # Its next command tries again. One line a while for the fleet, not one a command.
                _limited.log(
                    logging.ERROR,
                    ("face failed",),
                    "mqtt: device %s could not start its face: %s: %s",
                    serial,
                    type(exc).__name__,
                    exc,
                )
                log.debug("mqtt: device %s: face failure", serial, exc_info=True)
                return None
            endpoint = member.endpoint = RelayEndpoint(
                face,
                serial,
                clock=self._clock,
                max_sessions=self._max_sessions,
                idle_seconds=self._idle_seconds,
            )
        answer = await endpoint.handle(payload)
        return None if answer is None else (_answer_topic(member.command), answer)

    def _changed(self, subscribe: bool, topic: str) -> None:
        if not self._running:
            return  # the first connection subscribes every listed topic
        self._changes.append((subscribe, topic))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="mqtt fleet topics")

    async def _flush(self) -> None:
        """Send the topic changes in the order asked, consecutive ones of a kind in shared packets."""
        await asyncio.sleep(0)  # the adds of the caller's current step join this batch
        while self._changes:
            subscribe = self._changes[0][0]
            topics: list[str] = []
            while self._changes and self._changes[0][0] == subscribe:
                topics.append(self._changes.popleft()[1])
            if subscribe:
                await self.relay.subscribe(topics)
            else:
                await self.relay.unsubscribe(topics)


def _answer_topic(command: str) -> str:
    return command[: -len(COMMAND)] + ANSWER
