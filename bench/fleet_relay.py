"""Fleet relay benchmarks: getName through the broker for a random device of a fleet on one
`FleetRelay` connection, against one device alone on its own connection, in the same run.

Why in process: what is compared is the relay's cost of carrying N devices' topics (the broker's
routing over N subscriptions, the fleet's topic lookup, one connection's queue) against one device,
not process start-up. Both relays and the app (the SDK's role, played with the project's own relay
codec over aiomqtt, one request outstanding as the SDK has) share one event loop; both sides of the
comparison pay that equally. The random devices are drawn first and each gets one command before
the timed rounds (its face is built at its first command: that cold round trip is reported apart);
then rounds of single-device and random-device getName alternate.

Also here, for the report and for F4's fleet bench: subscribe time for N topics, `relay_keys` time,
and the memory of an idle device record. `MemoryDevice` is a `RelayDevice` over a ``:memory:`` state
built at its first command; the fleet tests use it too.

Not in the default ``make bench`` set: ``fleet_relay_getname(settings, count=...)`` is the hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import resource
import statistics
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

import aiomqtt

from bench.results import MetricResult, Target
from bench.runner import Settings
from tap_emulator.app import build_tap_face, open_device
from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.codec.mqtt_relay import RelayError, RelayMessage, decode, encode
from tap_emulator.config import PROFILES_DIR, Profile, load_profile
from tap_emulator.faces.mqtt import FleetRelay, relay_keys
from tap_emulator.faces.mqtt.client import BrokerSettings
from tap_emulator.faces.tap import TapFace

BROKER: Final = ("127.0.0.1", 1883)
NET_KEY: Final = "testnetkey"  # the default profile's, and the SDK's default
GET_NAME: Final = encode_request(TapRequest(Method.GET, 1025, 0, 0))  # group.getName(0), anonymous
CONTENT: Final = 0x45
ANSWERS: Final = "IOTIZE_DEV/+/+/ANSWER"


class MemoryDevice:
    """A `RelayDevice` whose tree (default profile, its own serial, a ``:memory:`` state) and face are
    built at its first command; until then it is its serial, its K and a profile reference."""

    __slots__ = ("_face", "_profile", "relay_key", "serial_number")

    def __init__(self, profile: Profile, serial: str, key: str) -> None:
        self.serial_number = serial
        self.relay_key = key
        self._profile = profile
        self._face: TapFace | None = None

    @property
    def built(self) -> bool:
        return self._face is not None

    def face(self) -> TapFace:
        if self._face is None:
            profile = replace(
                self._profile, device=replace(self._profile.device, serial_number=self.serial_number)
            )
            self._face = build_tap_face(open_device(profile, ":memory:"), profile)
        return self._face

    def close(self) -> None:
        if self._face is not None:
            self._face.tree.state.close()
            self._face = None


def default_profile() -> Profile:
    return load_profile(str(PROFILES_DIR / "default.toml"))


def fleet_serials(count: int, prefix: str | None = None) -> list[str]:
    """Serials of their own for this run (the broker is shared), ``prefix`` + a six-digit index."""
    prefix = prefix or "EMUB" + uuid.uuid4().hex[:6].upper()
    return [f"{prefix}{index:06d}" for index in range(count)]


def broker_settings(host: str = BROKER[0], port: int = BROKER[1]) -> BrokerSettings:
    return BrokerSettings(host, port, f"tap-emulator-fleet-{uuid.uuid4().hex[:12]}")


class RelayApp:
    """The app side: one broker connection, requests to any device's COMMAND topic, answers matched
    by (topic, reference id)."""

    def __init__(self, host: str = BROKER[0], port: int = BROKER[1]) -> None:
        self.host, self.port = host, port
        self._reference = 0
        self._waiting: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[RelayApp]:
        async with aiomqtt.Client(
            self.host, self.port, identifier=f"bench-app-{uuid.uuid4().hex[:12]}"
        ) as client:
            await client.subscribe(ANSWERS, qos=0)
            self._client = client
            self._reader = asyncio.ensure_future(self._read(client))
            try:
                yield self
            finally:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await self._reader
                self._client = None

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                answer = decode(bytes(message.payload))
            except RelayError:
                continue
            waiter = self._waiting.pop((message.topic.value, answer.reference_id), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(answer.frame)

    async def request(self, topics: tuple[str, str], frame: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body) of the answer to ``frame`` sent on ``topics`` (command, answer)."""
        if self._client is None:
            raise RuntimeError("the app is not connected")
        self._reference = self._reference % 0xFFFF + 1
        key = (topics[1], self._reference)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[key] = waiter
        try:
            await self._client.publish(topics[0], encode(RelayMessage(1, self._reference, frame)), qos=0)
            async with asyncio.timeout(timeout):
                return decode_response(await waiter)
        finally:
            self._waiting.pop(key, None)

    async def seconds(self, topics: tuple[str, str], frame: bytes = GET_NAME) -> float:
        started = time.perf_counter()
        status, _ = await self.request(topics, frame)
        elapsed = time.perf_counter() - started
        if status != CONTENT:
            raise RuntimeError(f"getName answered {status:#04x}")
        return elapsed


@dataclass(slots=True)
class GetNameResult:
    single_p50: float
    random_p50: float
    cold_p50: float
    samples: int
    subscribe_seconds: float

    @property
    def ratio(self) -> float:
        return self.random_p50 / self.single_p50


def _fake_key(serial: str) -> str:
    """A well-formed K that costs nothing to make (for timing subscriptions, not for the SDK)."""
    return uuid.uuid5(uuid.NAMESPACE_OID, serial).hex.upper()


async def subscribe_seconds(count: int, *, host: str = BROKER[0], port: int = BROKER[1]) -> float:
    """Seconds from `FleetRelay.start` to every one of ``count`` devices' topics subscribed."""
    profile = default_profile()
    fleet = FleetRelay(broker_settings(host, port), clock=time.monotonic)
    fleet.add_many(MemoryDevice(profile, serial, _fake_key(serial)) for serial in fleet_serials(count))
    started = time.perf_counter()
    await fleet.start(timeout=120)
    elapsed = time.perf_counter() - started
    await fleet.stop()
    return elapsed


async def relay_keys_seconds(count: int) -> float:
    started = time.perf_counter()
    keys = await relay_keys(NET_KEY, fleet_serials(count))
    elapsed = time.perf_counter() - started
    if len(keys) != count:
        raise RuntimeError("relay_keys lost serials")
    return elapsed


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def idle_record_bytes(count: int) -> tuple[float, float]:
    """(bytes allocated, RSS growth) per idle device on a FleetRelay, over ``count`` devices: the
    device object with its serial and K strings, the relay's record, its topic and dict entries.
    Two fleets, as tracemalloc's own bookkeeping would inflate the RSS reading."""
    profile = default_profile()

    def fleet() -> FleetRelay:
        relay = FleetRelay(broker_settings(), clock=time.monotonic)
        relay.add_many(MemoryDevice(profile, serial, _fake_key(serial)) for serial in fleet_serials(count))
        if len(relay) != count:
            raise RuntimeError("devices were not added")
        return relay

    held: list[FleetRelay] = []  # alive while measured
    gc.collect()
    before_rss = _rss_bytes()
    held.append(fleet())
    grown = _rss_bytes() - before_rss
    held.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held.append(fleet())
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        held.clear()
    return allocated / count, grown / count


async def getname_round_trips(
    count: int, *, samples: int = 200, rounds: int = 4, host: str = BROKER[0], port: int = BROKER[1]
) -> GetNameResult:
    """getName p50 for a random device of a ``count``-device fleet vs one device alone, interleaved in
    ``rounds``; each random device has had its first (cold, reported apart) command before."""
    if count < 1 or samples < 1 or rounds < 1:
        raise ValueError("count, samples and rounds must be at least 1")
    profile = default_profile()
    serials = fleet_serials(count + 1)
    keys = await relay_keys(NET_KEY, serials)
    devices = [MemoryDevice(profile, serial, keys[serial]) for serial in serials]
    alone = FleetRelay(broker_settings(host, port), clock=time.monotonic)
    alone.add(devices[0])
    fleet = FleetRelay(broker_settings(host, port), clock=time.monotonic)
    fleet.add_many(devices[1:])
    started = time.perf_counter()
    await fleet.start(timeout=120)
    subscribed = time.perf_counter() - started
    await alone.start()
    single: list[float] = []
    relayed: list[float] = []
    cold: list[float] = []
    draw = random.Random(15)
    try:
        async with RelayApp(host, port).connected() as app:
            solo = alone.topics(devices[0].serial_number)
            await app.seconds(solo)  # its face, too, is built at its first command
            per_round = max(1, samples // rounds)
            picks = [fleet.topics(draw.choice(serials[1:])) for _ in range(per_round * rounds)]
            for topics in dict.fromkeys(picks):  # each picked device's first command, timed apart
                cold.append(await app.seconds(topics))
            for round_ in range(rounds):
                for _ in range(per_round):
                    single.append(await app.seconds(solo))
                for topics in picks[round_ * per_round : (round_ + 1) * per_round]:
                    relayed.append(await app.seconds(topics))
    finally:
        await fleet.stop()
        await alone.stop()
        for device in devices:
            device.close()
    return GetNameResult(
        statistics.median(single),
        statistics.median(relayed),
        statistics.median(cold),
        len(relayed),
        subscribed,
    )


def fleet_relay_getname(settings: Settings, count: int = 1000) -> MetricResult:
    """The bench hook: ``fleet_relay_getname_ratio`` (random-of-``count`` p50 / single p50)."""
    metric = MetricResult(
        "fleet_relay_getname_ratio",
        f"getName p50 through the broker, a random device of {count} on one FleetRelay vs one device alone",
        "ms",
        Target("<=", 2.0),
    )
    samples = 60 if settings.small else 400
    result = asyncio.run(getname_round_trips(count, samples=samples, rounds=max(1, settings.rounds)))
    metric.details.update(
        devices=count,
        samples=result.samples,
        cold_first_command_p50_ms=round(result.cold_p50 * 1000, 3),
        subscribe_seconds=round(result.subscribe_seconds, 3),
    )
    return metric.settle(result.random_p50 * 1000, result.single_p50 * 1000)


async def _report(counts: Sequence[int]) -> None:
    for count in counts:
        print(f"subscribe {count} topics: {await subscribe_seconds(count):.3f} s")
    print(f"relay_keys 10000 serials: {await relay_keys_seconds(10_000):.2f} s")
    allocated, grown = idle_record_bytes(10_000)
    print(f"idle device on the relay: {allocated:.0f} bytes allocated, {grown:.0f} bytes RSS (of 10000)")
    result = await getname_round_trips(1000, samples=400)
    print(
        f"getName p50: single {result.single_p50 * 1000:.3f} ms,"
        f" random of 1000 {result.random_p50 * 1000:.3f} ms"
        f" (ratio {result.ratio:.2f}), first command of a device {result.cold_p50 * 1000:.3f} ms"
    )


if __name__ == "__main__":
    asyncio.run(_report((1_000, 10_000)))
