"""The broker connection of the MQTT relay face: subscribe, hand each command to its device, publish.

Why it is one module: the connection's life (connect, subscribe, reconnect with backoff when the broker
goes away, resubscribe, reconnect when the device's relay settings change) is the same for one device
and for a fleet; only *which* topics it subscribes to and *how* a topic finds its device differ, and
those come in as a `RelayRouter`. Topics go out in SUBSCRIBE packets of at most ``subscribe_batch``
topics, a few packets in flight at once (a fleet's 10,000 topics in 20 packets, not one packet of
700 kB nor 10,000 round trips); `subscribe`/`unsubscribe` change them on the connection in use, and a
topic the router lists while a connection is being set up is subscribed by that connection once up.

aiomqtt (over paho-mqtt 2) drives the socket from the asyncio loop (``add_reader``), not ``select()``,
so a process past 1,024 descriptors still works. Its logger is held at WARNING: paho's DEBUG lines name
every packet. Commands are served concurrently (each sender's frames stay in order in its session), at
most ``max_in_flight`` at a time per connection; past that a command is dropped with a rate-limited
warning (the SDK times out and may retry), so a flood cannot grow memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from tap_emulator.logsafety import RateLimitedLog

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_SUBSCRIBE_BATCH",
    "PAHO_LOGGER",
    "Backoff",
    "BrokerSettings",
    "MqttRelay",
    "RelayRouter",
]

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)
PAHO_LOGGER: Final = "tap_emulator.faces.mqtt.paho"


class _RateLimitPaho(logging.Filter):
    """aiomqtt warns once per message it discards (its queue full, a flood): those lines go out through
    a `RateLimitedLog`, at most one per kind every 10 s, instead of one each."""

    def filter(self, record: logging.LogRecord) -> bool:
        _limited.log(record.levelno, ("paho", record.msg), "mqtt client: %s", record.getMessage())
        return False


_paho_log = logging.getLogger(PAHO_LOGGER)
_paho_log.setLevel(logging.WARNING)
_paho_log.addFilter(_RateLimitPaho())

DEFAULT_MAX_IN_FLIGHT: Final = 256
# Seconds a start waits for the broker to accept a connection (one device's whole start; a fleet's
# subscriptions get longer once connected): a broker that cannot be reached fails the start this soon.
CONNECT_TIMEOUT: Final = 5.0
_MAX_QUEUED: Final = 1024  # messages aiomqtt holds before this face takes them
_KEEPALIVE: Final = 30
_ANSWER_WAIT: Final = 5.0  # the SDK's own request timeout: a later answer finds nobody waiting
# Topics per SUBSCRIBE: Mosquitto takes any number (its packet limit is 256 MB), stricter brokers fewer
# (AWS IoT: 8), so it is a parameter; 500 command topics make a packet of about 35 kB.
DEFAULT_SUBSCRIBE_BATCH: Final = 500
_SUBSCRIBES_IN_FLIGHT: Final = 4  # SUBSCRIBE packets awaiting their SUBACK at once
_SUBSCRIBE_WAIT: Final = 30.0  # for one SUBACK; a broker slower than this is treated as lost


def _refused(code: int | ReasonCode) -> bool:
    """A SUBACK's code for one topic says the broker refused it (0x80 and up, MQTT 3.1.1 and 5)."""
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class Backoff:
    """Reconnect delays: ``first`` doubling up to ``most``, each with up to 20 % jitter (a fleet's
    processes do not all come back in the same instant)."""

    first: float = 0.2
    most: float = 10.0
    jitter: Callable[[], float] = random.random
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def delay(self) -> float:
        self._next = self.first if self._next == 0 else min(self._next * 2, self.most)
        return self._next * (1 + 0.2 * self.jitter())


class RelayRouter(Protocol):
    """Which topics to subscribe to, and how a command finds its answer."""

    def subscriptions(self) -> Sequence[str]: ...

    def route(self, topic: str) -> Callable[[bytes], Awaitable[tuple[str, bytes] | None]] | None:
        """The handler of a command published on ``topic`` (its result: the answer topic and payload),
        or None when no device of this router listens there."""
        ...


class MqttRelay:
    """One broker connection serving a router's devices until `stop`.

    ``settings`` is read at each (re)connect, so a change of the device's broker settings applies on the
    next one; `reconnect` asks for one now (after a settings or topics change).
    """

    def __init__(
        self,
        settings: Callable[[], BrokerSettings],
        router: RelayRouter,
        *,
        backoff: Backoff | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        subscribe_batch: int = DEFAULT_SUBSCRIBE_BATCH,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_in_flight < 1 or subscribe_batch < 1:
            raise ValueError("max_in_flight and subscribe_batch must be at least 1")
        self._settings = settings
        self._router = router
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._max_in_flight = max_in_flight
        self._batch = subscribe_batch
        # Topic changes asked for while a connection subscribes its snapshot of the router's topics:
        # (subscribe?, topics), applied in order once it is up. None when no connection is being set up.
        self._late: list[tuple[bool, list[str]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._change = asyncio.Event()
        self._accepted = asyncio.Event()  # a broker has accepted a connection (CONNACK) at least once
        self._subscribed = asyncio.Event()
        self._client: aiomqtt.Client | None = None  # the connection in use, while subscribed
        self.connections = 0  # successful subscriptions so far (1 + the reconnects)
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    async def start(self, timeout: float = CONNECT_TIMEOUT, *, connect_timeout: float | None = None) -> None:
        """Connect and subscribe; raises ConnectionError if the broker has not accepted a connection
        within ``connect_timeout`` (default ``timeout``) or the first subscription is not made within
        ``timeout`` (after that, outages are retried for ever).

        The two differ for a fleet: subscribing many topics takes a while once connected, but a broker
        that cannot be reached is reported as soon as for one device."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt relay")
        try:
            async with asyncio.timeout(timeout):
                if connect_timeout is not None and connect_timeout < timeout:
                    await asyncio.wait_for(self._accepted.wait(), connect_timeout)
                await self._subscribed.wait()
        except TimeoutError:
            await self.stop()
            settings = self._settings()
            raise ConnectionError(
                f"MQTT broker {settings.host}:{settings.port} not reachable: {self.last_error or 'timeout'}"
            ) from None

    def reconnect(self) -> None:
        self._change.set()

    async def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe ``topics``, which the router has just started listing, on the connection in use.

        Without a connection there is nothing to do: every (re)connection subscribes what the router
        lists then. Never raises for the broker: a connection that drops meanwhile is re-made with
        every topic; a SUBACK that does not come in time while the connection stays up makes it
        reconnect, so a listed topic is never left unsubscribed."""
        await self._change_topics(True, list(topics))

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Unsubscribe ``topics``, which the router no longer lists (errors as for `subscribe`)."""
        await self._change_topics(False, list(topics))

    async def _change_topics(self, subscribe: bool, topics: list[str]) -> None:
        if not topics:
            return
        client = self._client
        if client is None:
            if self._late is not None:  # a connection is subscribing its snapshot: it does these next
                self._late.append((subscribe, topics))
            return
        await self._apply(client, subscribe, topics)

    async def _apply(self, client: aiomqtt.Client, subscribe: bool, topics: list[str]) -> None:
        try:
            if subscribe:
                await self._subscribe_all(client, topics)
            else:
                for start in range(0, len(topics), self._batch):
                    await client.unsubscribe(topics[start : start + self._batch], timeout=_SUBSCRIBE_WAIT)
        except aiomqtt.MqttError as exc:
            if self._client is client:  # still up, yet the broker did not confirm: start over
                log.warning("mqtt: the broker did not confirm a topic change (%s); reconnecting", exc)
                self.reconnect()

    async def _subscribe_all(self, client: aiomqtt.Client, topics: Sequence[str]) -> None:
        """SUBSCRIBE ``topics`` in packets of ``subscribe_batch``, a few awaiting their SUBACK at once.

        aiomqtt writes each packet when its call starts, so packets leave in order."""
        window = asyncio.Semaphore(_SUBSCRIBES_IN_FLIGHT)

        async def one(batch: list[tuple[str, int]]) -> None:
            async with window:
                granted = await client.subscribe(batch, timeout=_SUBSCRIBE_WAIT)
            refused = sum(1 for code in granted if _refused(code))
            if refused:
                _limited.warning(
                    ("subscribe refused",), "mqtt: the broker refused %d topic subscription(s)", refused
                )

        # QoS 1 as before: a command published with QoS 1 reaches us at least once.
        batches = [
            [(topic, 1) for topic in topics[start : start + self._batch]]
            for start in range(0, len(topics), self._batch)
        ]
        tasks = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for handler in list(self._handlers):
            handler.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))

    async def _run(self) -> None:
        while True:
            self._change.clear()  # before reading the settings: a change from now on is seen
            settings = self._settings()
            try:
                await self._connection(settings)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
            except OSError as exc:
                self.last_error = exc.strerror or str(exc)
            finally:
                self._subscribed.clear()
                self._client = None
            if self._change.is_set():
                self._backoff.reset()
                continue  # a settings change: reconnect at once
            delay = self._backoff.delay()
            _limited.warning(
                ("broker lost", settings.host, settings.port),
                "mqtt: broker %s:%d unreachable (%s); reconnecting, next try in %.1f s",
                settings.host,
                settings.port,
                self.last_error,
                delay,
            )
            await self._sleep(delay)

    async def _connection(self, settings: BrokerSettings) -> None:
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=settings.client_id,
            username=settings.username,
            password=settings.password,
            keepalive=_KEEPALIVE,
            timeout=5.0,
            logger=_paho_log,
            max_queued_incoming_messages=_MAX_QUEUED,
            # Each answer is one small packet: without this, Nagle holds it for the peer's delayed ACK
            # (40 ms a round trip on Linux).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        async with client:
            self._accepted.set()
            # The snapshot and the start of `_late` in one step: a topic listed from now on is in one.
            self._late = []
            topics = list(self._router.subscriptions())
            try:
                await self._subscribe_all(client, topics)
                self._client = client
                late, self._late = self._late, None
                for subscribe, changed_topics in late:
                    await self._apply(client, subscribe, changed_topics)
            finally:
                self._late = None
            self._backoff.reset()
            self.connections += 1
            self._subscribed.set()
            if self.connections > 1:
                log.info(
                    "mqtt: reconnected to %s:%d, %d topic(s) subscribed",
                    settings.host,
                    settings.port,
                    len(topics),
                )
            reader = asyncio.ensure_future(self._read(client))
            changed = asyncio.ensure_future(self._change.wait())
            try:
                await asyncio.wait({reader, changed}, return_when=asyncio.FIRST_COMPLETED)
                if changed.done() and self._handlers:
                    # A settings change (often the command being answered made it): the answers in
                    # progress leave on this connection before it closes.
                    await asyncio.wait(list(self._handlers), timeout=_ANSWER_WAIT)
            finally:
                self._subscribed.clear()
                self._client = None
                reader.cancel()
                changed.cancel()
                outcome = (await asyncio.gather(reader, changed, return_exceptions=True))[0]
            if isinstance(outcome, aiomqtt.MqttError | OSError):
                raise outcome  # the connection was lost: the caller backs off and reconnects

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(message)

    def _dispatch(self, message: aiomqtt.Message) -> None:
        handler = self._router.route(message.topic.value)
        if handler is None:
            return
        if len(self._handlers) >= self._max_in_flight:  # served or waiting for their sender's turn
            _limited.warning(("relay busy",), "mqtt: too many commands in flight; dropping some")
            return
        task = asyncio.get_running_loop().create_task(self._serve(handler, bytes(message.payload)))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(
        self, handler: Callable[[bytes], Awaitable[tuple[str, bytes] | None]], payload: bytes
    ) -> None:
        try:
            answer = await handler(payload)
            if answer is None:
                return
            # On the connection in use when the answer is ready: one that dropped meanwhile is
            # waited for (briefly), so a command served across a reconnect is still answered.
            async with asyncio.timeout(_ANSWER_WAIT):
                await self._subscribed.wait()
            client = self._client
            if client is not None:
                # QoS 0, as the SDK subscribes: a PUBACK the broker sent back would sit unacknowledged
                # and make Mosquitto (no TCP_NODELAY by default) hold the next command for our
                # delayed ACK: 45 ms per round trip instead of 2 ms, measured.
                await client.publish(answer[0], answer[1], qos=0)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            # The broker is away: a change the command made is durable all the same; the app timed
            # out and asks again once the face is back.
            _limited.info(("answer lost",), "mqtt: an answer was not published: %s", exc or "no broker")
        except Exception:
            log.exception("mqtt: a relay command failed")
