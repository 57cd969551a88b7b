"""The MQTT relay face: a Tap reached through a broker, as `@iotize/device-com-mqtt.js` reaches one.

`tap_emulator.codec.mqtt_relay` is the sans-IO envelope and topics, `relay` one device's senders and
their Tap sessions (the same `TapFace` as TCP and WebSocket), `client` the broker connection with its
reconnects, `fleet` many devices on one connection (with `relay_keys`, K for many at once). This module
wires them for one device: the topics and broker come from object 1024 (50..59, seeded by the
profile's ``[mqtt]``), and a change of them reconnects and resubscribes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from tap_emulator.codec.mqtt_relay import relay_key, relay_topics
from tap_emulator.faces.mqtt.client import CONNECT_TIMEOUT, Backoff, BrokerSettings, MqttRelay
from tap_emulator.faces.mqtt.fleet import FleetRelay, RelayDevice, relay_keys
from tap_emulator.faces.mqtt.relay import RelayEndpoint
from tap_emulator.faces.tap.session import TapFace
from tap_emulator.tree import ChangeEvent, DeviceTree

__all__ = [
    "DeviceRelay",
    "FleetRelay",
    "RelayDevice",
    "RelayEndpoint",
    "broker_url",
    "relay_keys",
    "start_device_relay",
]

log = logging.getLogger(__name__)


def broker_url(host: str, port: int) -> str:
    return f"mqtt://[{host}]:{port}" if ":" in host else f"mqtt://{host}:{port}"


class DeviceRelay:
    """The relay face of one device: its topics, its endpoint, its broker connection."""

    def __init__(
        self,
        face: TapFace,
        *,
        broker: tuple[str, int] | None,
        clock: Callable[[], float],
        backoff: Backoff | None = None,
    ) -> None:
        self.tree: DeviceTree = face.tree
        self.serial = self.tree.serial_number
        self.endpoint = RelayEndpoint(face, self.serial, clock=clock)
        self._broker_override = broker
        self._suffix = os.urandom(4).hex()
        self._command = self._answer = ""
        self._connected_with: BrokerSettings | None = None
        self.relay = MqttRelay(self._settings_for_connect, self, backoff=backoff)
        self._unsubscribe: Callable[[], None] | None = None
        self._refresh: asyncio.Task[None] | None = None

    @property
    def topics(self) -> tuple[str, str]:
        """(command topic, answer topic) in use."""
        return self._command, self._answer

    def broker(self) -> tuple[str, int]:
        if self._broker_override is not None:
            return self._broker_override
        settings = self.tree.interface.relay_settings()
        return settings.host, settings.port

    def _settings_for_connect(self) -> BrokerSettings:
        self._connected_with = self._broker_settings()
        return self._connected_with

    def _broker_settings(self) -> BrokerSettings:
        settings = self.tree.interface.relay_settings()
        host, port = self.broker()
        password = settings.password or None
        return BrokerSettings(
            host,
            port,
            settings.client_id or f"tap-emulator-{self.serial}-{self._suffix}",
            # As the SDK: credentials only with a password; the username defaults to the serial.
            (settings.username or self.serial) if password else None,
            password,
        )

    # RelayRouter
    def subscriptions(self) -> Sequence[str]:
        return [self._command]

    def route(self, topic: str) -> Callable[[bytes], Awaitable[tuple[str, bytes] | None]] | None:
        return self._serve if topic == self._command else None

    async def _serve(self, payload: bytes) -> tuple[str, bytes] | None:
        answer_topic = self._answer  # the topics in force when the command arrived
        answer = await self.endpoint.handle(payload)
        return None if answer is None else (answer_topic, answer)

    async def _compute_topics(self) -> tuple[str, str]:
        settings = self.tree.interface.relay_settings()
        if settings.request_topic and settings.response_topic:
            return settings.request_topic, settings.response_topic
        key = await self.tree.offload(relay_key, settings.net_key, self.serial)
        derived = relay_topics(self.serial, key)
        return settings.request_topic or derived.command, settings.response_topic or derived.answer

    async def start(self, timeout: float = CONNECT_TIMEOUT) -> None:
        self._command, self._answer = await self._compute_topics()
        relay_ids = self.tree.interface.relay_resource_ids()
        interface_id = self.tree.interface_object.id

        def changed(event: ChangeEvent) -> None:
            if event.object_id == interface_id and event.resource_ids & relay_ids:
                if self._refresh is not None:
                    self._refresh.cancel()  # the newest settings win
                self._refresh = asyncio.get_running_loop().create_task(self._settings_changed())

        self._unsubscribe = self.tree.subscribe(changed)
        await self.relay.start(timeout)

    async def _settings_changed(self) -> None:
        """Reconnect when what the connection uses changed (topics, broker, client id, credentials)."""
        topics = await self._compute_topics()
        broker = self._broker_settings()
        if topics == self.topics and broker == self._connected_with:
            return
        self._command, self._answer = topics
        log.info("mqtt: relay settings of %s changed; reconnecting", self.serial)
        self.relay.reconnect()

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._refresh is not None:
            self._refresh.cancel()
        await self.relay.stop()
        self.endpoint.close()


async def start_device_relay(
    face: TapFace,
    *,
    broker: tuple[str, int] | None,
    clock: Callable[[], float],
    timeout: float = CONNECT_TIMEOUT,
    backoff: Backoff | None = None,
) -> DeviceRelay:
    """Subscribe ``face``'s device to its command topic; ConnectionError if the broker cannot be reached."""
    relay = DeviceRelay(face, broker=broker, clock=clock, backoff=backoff)
    await relay.start(timeout)
    return relay
