"""Object 1024 (interface): the device's login settings, security options, SCRAM hash iteration, the
configuration's identity (format version, app name, config version) and the MQTT relay settings (broker,
client id, credentials, net key, topics).

Its session resources (login, logout, current group, SCRAM handshake, encrypted frames, multi-request
frames) belong to a connection, so the Tap session serves them; the dispatcher answers them 5.01 for
any other face. What this handler adds to stored values: the profile seeds the security mode, hash
iteration, app name, config version and relay settings; the rest of the device reads them through
`security_mode`, `hash_iteration` and `relay_settings`; a broker port must be decimal text naming a
port (the model only bounds its length); executing the config version (``POST``, no body) reloads the
configuration through the app's lifecycle hook, as the SDK's ``applyConfig`` ends. The broker password
is write-only (the model gives it no read) and, like every value of this object, is never synced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tap_emulator.config import MQTT_PORT, Profile, SecurityMode, parse_port
from tap_emulator.model import Operation, ValueType
from tap_emulator.tree.api import Response
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import ObjectHandler, Target
from tap_emulator.tree.status import Status

__all__ = ["InterfaceHandler", "RelaySettings"]

# Alias slugs of the relay settings, by the field of `RelaySettings` (and of config.MqttSettings).
RELAY_RESOURCES = {
    "host": "mqtt-broker-hostname",
    "port": "mqtt-broker-port",
    "client_id": "mqtt-client-id",
    "username": "mqtt-username",
    "password": "mqtt-password",
    "net_key": "mqtt-relay-net-key",
    "request_topic": "mqtt-request-topic",
    "response_topic": "mqtt-response-topic",
}


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What the MQTT relay face needs from the device; empty texts mean "the default"."""

    host: str
    port: int
    client_id: str
    username: str
    password: str = field(repr=False)
    net_key: str = field(repr=False)
    request_topic: str
    response_topic: str


def _port(text: str) -> int | None:
    """The port a broker-port text names (empty: the MQTT default), or None if it names none."""
    return MQTT_PORT if text == "" else parse_port(text)


@handles("interface")
class InterfaceHandler(ObjectHandler):
    @property
    def security_mode(self) -> SecurityMode:
        return SecurityMode.from_options(self.device_int("security-options"))

    @property
    def hash_iteration(self) -> int:
        """PBKDF2 iterations for keys derived on the device (the model's default until one is set)."""
        return self.device_int("scram-hash-iteration")

    def device_text(self, slug: str) -> str:
        resource = self.resource(slug)
        value = self.tree.device_value(self.obj.id, resource.id)
        if value is None:
            value = resource.default_value(None)
        return value if isinstance(value, str) else ""

    def relay_settings(self) -> RelaySettings:
        texts = {name: self.device_text(slug) for name, slug in RELAY_RESOURCES.items()}
        port = _port(texts.pop("port")) or MQTT_PORT
        return RelaySettings(port=port, **texts)

    def relay_resource_ids(self) -> frozenset[int]:
        """The resources whose change moves the relay face (reconnect, resubscribe)."""
        return frozenset(self.resource(slug).id for slug in RELAY_RESOURCES.values())

    def factory_values(self, profile: Profile) -> dict[int, Any]:
        mqtt = profile.mqtt
        values: dict[int, Any] = {
            self.resource("security-options").id: profile.security.mode.options,
            self.resource("scram-hash-iteration").id: profile.security.hash_iteration,
            self.resource("app-name").id: profile.application.name,
            self.resource("config-version").id: profile.application.config_version,
        }
        for name in ("host", "client_id", "username", "password", "net_key"):
            values[self.resource(RELAY_RESOURCES[name]).id] = getattr(mqtt, name)
        values[self.resource(RELAY_RESOURCES["port"]).id] = "" if not mqtt.host else str(mqtt.port)
        return values

    async def write(self, target: Target) -> Response:
        resource, form = target.resource, target.form
        assert resource is not None and form is not None
        if resource is self.resource(RELAY_RESOURCES["port"]) and (
            not isinstance(target.value, str) or _port(target.value) is None
        ):
            return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name}: not a port number")
        reload = resource.id == self.resource("config-version").id and form.value_type is ValueType.NONE
        executes = target.request.operation is Operation.EXECUTE
        if reload != executes:
            what = "a PUT needs a value" if reload else "a POST takes no body"
            return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name}: {what}")
        if not reload:
            return await super().write(target)
        await self.tree.settle()
        if self.tree.lifecycle is None:
            self.tree.reload()
        else:
            await self.tree.lifecycle.reload_config()
        return Response(Status.CHANGED)
