"""The broker connection of the MQTT relay face: subscribe, hand each command to its device, publish.

Why it is one module: the connection's life (connect, subscribe, reconnect with backoff when the broker
goes away, resubscribe, reconnect when the device's relay settings change) is the same for one device
and for a fleet; only *which* topics it subscribes to and *how* a topic finds its device differ, and
those come in as a `RelayRouter`.

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

from tap_emulator.logsafety import RateLimitedLog

__all__ = ["PAHO_LOGGER", "Backoff", "BrokerSettings", "MqttRelay", "RelayRouter"]

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
_MAX_QUEUED: Final = 1024  # messages aiomqtt holds before this face takes them
_KEEPALIVE: Final = 30
_ANSWER_WAIT: Final = 5.0  # the SDK's own request timeout: a later answer finds nobody waiting


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._router = router
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._max_in_flight = max_in_flight
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._change = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._client: aiomqtt.Client | None = None  # the connection in use, while subscribed
        self.connections = 0  # successful subscriptions so far (1 + the reconnects)
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    async def start(self, timeout: float = 5.0) -> None:
        """Connect and subscribe; raises ConnectionError if the first subscription is not made within
        ``timeout`` (after that, outages are retried for ever)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt relay")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            await self.stop()
            settings = self._settings()
            raise ConnectionError(
                f"MQTT broker {settings.host}:{settings.port} not reachable: {self.last_error or 'timeout'}"
            ) from None

    def reconnect(self) -> None:
        self._change.set()

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
            topics = list(self._router.subscriptions())
            if topics:
                await client.subscribe([(topic, 1) for topic in topics])
            self._backoff.reset()
            self.connections += 1
            self._client = client
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
