"""Wiring: one emulated device = state + tree + the faces and tasks the options ask for.

Kept apart from the CLI so tests and benchmarks start a whole device in-process with the same code
path as ``tap-emulator serve``, and stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tap_emulator.config import (
    ANONYMOUS_GROUP,
    ConfigError,
    Profile,
    SecurityMode,
    load_profile,
    parse_broker_url,
)
from tap_emulator.faces.tap.connections import ConnectionLimits, fit_to_file_limit
from tap_emulator.faults import FaultInjector, load_fault_plan
from tap_emulator.model import DeviceModel, default_model
from tap_emulator.security.worker import DerivationWorker
from tap_emulator.state import MEMORY, DeviceState, StateError
from tap_emulator.sync import SyncSettings, SyncTask, store_url_for
from tap_emulator.trace import Trace
from tap_emulator.tree import MAINTENANCE, READ_ONLY_MAINTENANCE, Caller, DeviceTree, Offload, run_in_thread

if TYPE_CHECKING:
    from tap_emulator.control import DeviceControl
    from tap_emulator.faces.coap.registration import Registration, ServerUri
    from tap_emulator.faces.coap.server import CoapServer
    from tap_emulator.faces.http.cloud_config import CloudConfig
    from tap_emulator.faces.mqtt import DeviceRelay
    from tap_emulator.faces.tap.session import TapFace
    from tap_emulator.sources import SourceRunner

__all__ = [
    "CloudOnly",
    "CoapAccess",
    "DeviceRuntime",
    "Emulator",
    "Endpoint",
    "ServeOptions",
    "build_tap_face",
    "call_maybe_async",
    "close_in_reverse",
    "default_state_path",
    "format_address",
    "is_loopback",
    "load_device_profile",
    "open_device",
    "parse_endpoint",
    "say_api_access",
    "warn_coap_access",
]

log = logging.getLogger(__name__)


COAP_PORT = 5683  # RFC 7252
TAP_TCP_PORT = 2000  # what a Wi-Fi TapNLink listens on
TAP_WS_PORT = 2001
HTTP_PORT = 8080  # the emulated cloud: native API and seed faces
_DEVICE_BROKER: tuple[str, int] = ("", 0)  # the relay on the broker of the device's own settings


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


def parse_endpoint(text: str, default_port: int) -> Endpoint | None:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``off``; ``[::1]:PORT`` for IPv6. ValueError if malformed."""
    if text == "off":
        return None
    host, port_text = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        host = "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number in 0..65535")
    if not _is_address(host):
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name this machine resolves")
    return Endpoint(host, int(port_text))


def _is_address(host: str) -> bool:
    """An IP literal, a wildcard, or a name that resolves (``--coap notaport`` is a usage error)."""
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return False
    return True


def format_address(address: tuple[str, int]) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets (``[::1]:5683``), as ``parse_endpoint`` reads it."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CoapAccess(enum.Enum):
    """Who the CoAP face acts as (it has no login): ``--coap-access``."""

    MAINTENANCE = "maintenance"  # full rights, like a debug port on the bench
    READ_ONLY = "read-only"  # maintenance reads, no change of any kind
    ANONYMOUS = "anonymous"  # the profile's rights for anonymous (group 0)

    @property
    def caller(self) -> Caller:
        if self is CoapAccess.MAINTENANCE:
            return MAINTENANCE
        if self is CoapAccess.READ_ONLY:
            return READ_ONLY_MAINTENANCE
        return Caller(ANONYMOUS_GROUP)

    @classmethod
    def default_for(cls, host: str) -> CoapAccess:
        """Maintenance on a loopback bind, read-only on any other (a wildcard or a LAN address)."""
        return cls.MAINTENANCE if is_loopback(host) else cls.READ_ONLY


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; wildcards and every other address are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_ACCESS_MEANS = {
    CoapAccess.MAINTENANCE: "anyone who reaches it acts with maintenance rights, writes included",
    CoapAccess.READ_ONLY: "reads only; every write is refused",
    CoapAccess.ANONYMOUS: "the profile's anonymous rights",
}


def warn_coap_access(
    where: str, host: str, access: CoapAccess, *, chosen: bool, oscore: bool = False
) -> None:
    """Say at start who a CoAP face lets in (it has no login): ``where`` is its address (or range)."""
    how = "chosen" if chosen else f"the default for a {'' if is_loopback(host) else 'non-'}loopback bind"
    log.warning(
        "CoAP on %s: --coap-access %s (%s): %s%s",
        where,
        access.value,
        how,
        _ACCESS_MEANS[access],
        "; requests an OSCORE context of --coap-oscore authenticates act as maintenance" if oscore else "",
    )


def default_state_path(profile: Profile) -> Path:
    """One state file per device under the working directory: ``state/{serial}.sqlite3``."""
    return Path("state") / f"{profile.device.serial_number}.sqlite3"


@dataclass(slots=True)
class ServeOptions:
    profile: str = "default"
    tap_config: str | None = None  # a tap-config.json applied over the profile (serve --tap-config)
    state: str | None = None  # None: default_state_path; ":memory:" keeps nothing
    coap: Endpoint | None = field(default_factory=lambda: Endpoint("127.0.0.1", COAP_PORT))
    coap_access: CoapAccess | None = None  # None: CoapAccess.default_for(the CoAP host)
    coap_oscore: str | None = None  # aiocoap credentials file: its OSCORE contexts get maintenance
    coap_fast_path: bool | None = None  # None: faces.coap.fast_path.fast_path_default()
    security: SecurityMode | None = None  # overrides the profile's mode when given
    store: str | None = None  # management store URL; None: beside the state file; "off": no sync
    sync: SyncSettings = field(default_factory=SyncSettings)
    tcp: Endpoint | None = field(default_factory=lambda: Endpoint("127.0.0.1", TAP_TCP_PORT))  # Tap frames
    ws: Endpoint | None = field(default_factory=lambda: Endpoint("127.0.0.1", TAP_WS_PORT))  # over WebSocket
    # The MQTT relay face: a broker URL (it wins over the device's broker settings), "off", or None: on
    # when the profile's [mqtt] says relay = true, on the broker object 1024 holds.
    mqtt: str | None = None
    trace: bool | str = False  # the trace of every face: True to the log, a path for a JSON-lines file
    faults: str | None = None  # a fault plan (TOML, see tap_emulator.faults) applied from the start
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)  # per Tap face (TCP, WebSocket)
    http: Endpoint | None = field(default_factory=lambda: Endpoint("127.0.0.1", HTTP_PORT))  # the cloud
    cloud_config: str | None = None  # credentials of the seed faces; None: resources/cloud/default.toml
    lwm2m_servers: tuple[ServerUri, ...] = ()  # LwM2M servers to register with (from the CoAP socket)
    endpoint: str | None = None  # LwM2M endpoint name; None: the serial number
    lifetime: int | None = None  # registration lifetime (s); None: what object 1 holds (300 by default)
    lwm2m_bootstrap: ServerUri | None = None  # bootstrap server: bootstrap, then register as it says


def open_device(
    profile: Profile,
    state_path: str,
    *,
    model: DeviceModel | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    offload: Offload = run_in_thread,
) -> DeviceTree:
    """Open (and seed, if fresh) the state of a device and build its tree.

    ``offload`` runs key derivations; by default a thread (the server passes its low-priority worker).
    The state is this process's own until closed (its lock): another owner's file is a StateLockError.
    """
    state = DeviceState(state_path, clock=time.time, owner=True)
    try:
        tree = DeviceTree(
            model or default_model(),
            state,
            access=profile.access,
            random_bytes=random_bytes,
            clock_ms=clock_ms,
            offload=offload,
            memory=profile.memory,
        )
        if tree.is_fresh:
            tree.seed(profile)
    except BaseException:
        state.close()
        raise
    return tree


def load_device_profile(
    name: str, *, tap_config: str | None = None, security: SecurityMode | None = None
) -> Profile:
    """The profile a device runs: ``name`` (a profile name or path), a tap-config.json over it, then
    the ``--security`` override. ConfigError naming what is wrong."""
    profile = load_profile(name)
    if tap_config is not None:
        from tap_emulator.tapconfig import load_tap_config

        profile = load_tap_config(tap_config, profile)
    if security is not None:
        profile = profile.with_security_mode(security)
    return profile


def build_tap_face(
    tree: DeviceTree, profile: Profile, *, trace: Trace | None = None, faults: FaultInjector | None = None
) -> TapFace:
    """What the Tap faces of one device (TCP, WebSocket, MQTT relay) share: its sessions and its one
    login limiter (so login lockouts are per device)."""
    from tap_emulator.faces.tap import TapFace
    from tap_emulator.security.lockout import LoginLimiter

    security = profile.security
    return TapFace(
        tree,
        limiter=LoginLimiter(security.lockout),
        clock=time.monotonic,
        random_bytes=os.urandom,
        lifetime_unit_seconds=security.session_lifetime_unit_seconds,
        handshake_seconds=security.scram_handshake_seconds,
        trace=trace,
        faults=faults,
    )


async def call_maybe_async(callback: Callable[[], object]) -> None:
    """Call ``callback``; await what it returns when that is awaitable (closers and hooks are either)."""
    result = callback()
    if hasattr(result, "__await__"):
        await result


async def close_in_reverse(closers: list[Callable[[], object]], failure: str) -> None:
    """Run and empty ``closers``, the last added first (each closes what opened after the ones before it);
    one that fails is logged with ``failure`` and the others still run."""
    while closers:
        try:
            await call_maybe_async(closers.pop())
        except Exception:
            log.exception(failure)


class DeviceRuntime:
    """One running device's tree and faces, and what a reboot or factory reset does to them.

    Shared by ``serve`` (`Emulator`) and by each built device of a fleet (``tap_emulator.fleet``), so
    the life cycle of a device (object 3's reboot and factory reset) is written once.
    """

    def __init__(self, profile: Profile, *, trace: Trace, faults: FaultInjector) -> None:
        self.profile = profile
        self.trace = trace
        self.faults = faults
        self.tree: DeviceTree | None = None
        self.tap_face: TapFace | None = None
        self.coap: CoapServer | None = None
        # Called after every reboot and factory reset, once the tree holds its new state (the value
        # sources' runner restarts here); each may return an awaitable.
        self.restart_hooks: list[Callable[[], object]] = []
        self._lifecycle_tasks: set[asyncio.Task[None]] = set()

    def _tap_face(self, tree: DeviceTree) -> TapFace:
        return build_tap_face(tree, self.profile, trace=self.trace, faults=self.faults)

    def cancel_lifecycle_tasks(self) -> None:
        """A reboot still pending when the device stops does not happen."""
        for task in list(self._lifecycle_tasks):
            task.cancel()

    # ------------------------------------------------------------------ lifecycle (object 3's hook)

    async def reboot(self) -> None:
        """As a Tap reboots: every Tap session ends (connections closed), CoAP observations end, the tree
        reloads from durable state, value sources restart; the device keeps its state."""
        tree = self._running_tree()
        if self.tap_face is not None:
            self.tap_face.end_sessions()
        if self.coap is not None:
            self.coap.face.end_observations("the device rebooted")
        await tree.settle()  # what was accepted before the reboot is in the state it reloads
        tree.reload()
        await self._restarted()
        log.info("device %s rebooted", tree.serial_number)

    async def factory_reset(self, *, keep_session: object | None = None) -> None:
        """Back to the profile (tree.seed(reset=True)): observers are told, the outbox gets the rows so the
        store hears of it. Every session ends except ``keep_session`` (the SDK configurator's own
        connection, which stays usable with its rights, as the configurator expects)."""
        tree = self._running_tree()
        await tree.settle()
        tree.seed(self.profile, reset=True)  # a StateError leaves the device as it was, sessions included
        if self.tap_face is not None:
            self.tap_face.end_sessions(keep=keep_session)
        await self._restarted()
        log.info("device %s reset to its profile %s", tree.serial_number, self.profile.name)

    async def reload_config(self) -> None:
        tree = self._running_tree()
        await tree.settle()
        tree.reload()
        await self._restarted()
        log.info("device %s reloaded its configuration", tree.serial_number)

    def reboot_soon(self) -> None:
        """A reboot request: reboot once the answer is written. The answer leaves in the same turn of
        the event loop as the handler returns (both transports write before they await), and this task
        starts at the loop's next turn."""
        task = asyncio.get_running_loop().create_task(self._reboot_logged())
        self._lifecycle_tasks.add(task)
        task.add_done_callback(self._lifecycle_tasks.discard)

    async def _reboot_logged(self) -> None:
        try:
            await self.reboot()
        except StateError as exc:  # the answer is gone already: say it in the log, once
            log.error("reboot failed: %s", exc)

    def _running_tree(self) -> DeviceTree:
        if self.tree is None:
            raise RuntimeError("the device is not running")
        return self.tree

    async def _restarted(self) -> None:
        for hook in list(self.restart_hooks):
            try:
                await call_maybe_async(hook)
            except Exception:
                log.exception("a restart hook failed")


class Emulator(DeviceRuntime):
    """A running device. ``start`` binds every endpoint or fails with nothing left open."""

    def __init__(self, options: ServeOptions, *, announce: Callable[[str], None] = print) -> None:
        self.options = options
        self.announce = announce
        profile = load_device_profile(
            options.profile, tap_config=options.tap_config, security=options.security
        )
        trace_path = options.trace if isinstance(options.trace, str) else None
        try:
            trace = Trace(trace_path, to_log=options.trace is True)
        except OSError as exc:
            raise ConfigError(f"--trace {trace_path}: {exc.strerror or exc}") from None
        faults = FaultInjector(time.monotonic)
        if options.faults is not None:
            faults.set_plan(load_fault_plan(options.faults))
        super().__init__(profile, trace=trace, faults=faults)
        self.cloud_config: CloudConfig | None = None
        if options.http is not None:
            from tap_emulator.faces.http import load_cloud_config

            self.cloud_config = load_cloud_config(options.cloud_config)
        self.coap_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.ws_address: tuple[str, int] | None = None
        self.mqtt: DeviceRelay | None = None
        self.http_address: tuple[str, int] | None = None
        self.sync: SyncTask | None = None
        self.control: DeviceControl | None = None  # the control API's view, when HTTP is on
        self.registrations: list[Registration] = []
        self.sources: SourceRunner | None = None
        self._closers: list[Callable[[], object]] = []

    async def start(self) -> None:
        state_path = self.options.state or str(default_state_path(self.profile))
        derivations = DerivationWorker()
        try:
            await derivations.start()
            tree = open_device(self.profile, state_path, offload=derivations)
        except BaseException:
            derivations.close()
            raise
        self._closers.append(derivations.close)
        self.tree = tree
        self._closers.append(tree.state.close)
        tree.lifecycle = self
        try:
            if self.options.security is not None and tree.security_mode is not self.options.security:
                await tree.set_security_mode(self.options.security)
            self._start_sync(tree, state_path)
            self._start_sources(tree)
            if self.options.coap is not None:
                await self._start_coap(tree, self.options.coap)
            await self._start_tap_faces(tree)
            await self._start_http(tree, state_path)
        except BaseException:
            await self.stop()
            raise
        # Announced only once every endpoint is bound, so a script never sees a line for a failed start.
        for kind, address in (
            ("coap udp", self.coap_address),
            ("tcp", self.tcp_address),
            ("ws", self.ws_address),
            ("http", self.http_address),
        ):
            if address is not None:
                self.announce(f"listening {kind} {format_address(address)}")
        if self.mqtt is not None:
            from tap_emulator.faces.mqtt import broker_url

            self.announce(f"listening mqtt {tree.serial_number} {broker_url(*self.mqtt.broker())}")
        log.info(
            "device %s up (state %s)", tree.serial_number, "in memory" if state_path == MEMORY else state_path
        )

    async def _start_coap(self, tree: DeviceTree, endpoint: Endpoint) -> None:
        from tap_emulator.faces.coap import start_coap_server

        access = self.options.coap_access or CoapAccess.default_for(endpoint.host)
        oscore = None
        if self.options.coap_oscore is not None:
            from tap_emulator.faces.coap.oscore import load_oscore_credentials

            oscore = load_oscore_credentials(self.options.coap_oscore)
        coap = await start_coap_server(
            tree,
            endpoint.host,
            endpoint.port,
            caller=access.caller,
            oscore=oscore,
            trace=self.trace,
            faults=self.faults,
            fast_path=self.options.coap_fast_path,
        )
        self._closers.append(coap.close)
        self.coap = coap
        self.coap_address = coap.address
        await self._start_registrations(tree, coap)
        warn_coap_access(
            format_address(coap.address),
            endpoint.host,
            access,
            chosen=self.options.coap_access is not None,
            oscore=oscore is not None,
        )

    async def _start_registrations(self, tree: DeviceTree, coap: CoapServer) -> None:
        """Register with each ``--lwm2m-server`` from the CoAP face's socket (account i is Security and
        Server instance i); each de-registers before the CoAP face closes."""
        from tap_emulator.faces.coap.registration import Registration, ensure_account

        endpoint = self.options.endpoint or tree.serial_number
        for account, uri in enumerate(self.options.lwm2m_servers):
            await ensure_account(tree, account, uri, self.options.lifetime)
            registration = Registration(coap.context, tree, account, uri, endpoint)
            registration.start()
            self.registrations.append(registration)
            self._closers.append(registration.close)
        if self.options.lwm2m_bootstrap is not None:
            task = asyncio.get_running_loop().create_task(
                self._bootstrap_then_register(tree, coap, self.options.lwm2m_bootstrap, endpoint)
            )

            async def stop_bootstrap() -> None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

            self._closers.append(stop_bootstrap)

    async def _bootstrap_then_register(
        self, tree: DeviceTree, coap: CoapServer, uri: ServerUri, endpoint: str
    ) -> None:
        """``--lwm2m-bootstrap``: bootstrap, then register with every server account it left."""
        from tap_emulator.faces.coap.registration import Registration, bootstrap

        for account, server in await bootstrap(coap.context, coap.face, tree, uri, endpoint):
            registration = Registration(coap.context, tree, account, server, endpoint)
            registration.start()
            self.registrations.append(registration)
            self._closers.append(registration.close)

    async def _start_tap_faces(self, tree: DeviceTree) -> None:
        """The Tap-native face over TCP, WebSocket and the MQTT relay; its sessions share one face."""
        from tap_emulator.faces.tap import start_tcp_server, start_ws_server

        broker = self._mqtt_broker()
        if self.options.tcp is None and self.options.ws is None and broker is None:
            return
        face = self._tap_face(tree)
        self.tap_face = face
        if self.options.tcp is not None or self.options.ws is not None:
            limits, warning = fit_to_file_limit(self.options.connections, self._faces_sharing_descriptors())
            if warning:
                log.warning("%s", warning)
            if self.options.tcp is not None:
                tcp = await start_tcp_server(face, self.options.tcp.host, self.options.tcp.port, limits)
                self._closers.append(tcp.close)
                self.tcp_address = tcp.address
            if self.options.ws is not None:
                ws = await start_ws_server(face, self.options.ws.host, self.options.ws.port, limits)
                self._closers.append(ws.close)
                self.ws_address = ws.address
        if broker is not None:
            from tap_emulator.faces.mqtt import start_device_relay

            override = None if broker is _DEVICE_BROKER else broker
            self.mqtt = await start_device_relay(face, broker=override, clock=time.monotonic)
            self._closers.append(self.mqtt.close)

    def _mqtt_broker(self) -> tuple[str, int] | None:
        """The --mqtt broker, `_DEVICE_BROKER` (the one object 1024 holds), or None (the relay is off)."""
        choice = self.options.mqtt
        if choice == "off" or (choice is None and not self.profile.mqtt.relay):
            return None
        if choice is None:
            return _DEVICE_BROKER
        return parse_broker_url(choice)

    def _faces_sharing_descriptors(self) -> int:
        """The TCP faces whose connections share the process's file limit (Tap TCP, WebSocket, HTTP)."""
        return sum(face is not None for face in (self.options.tcp, self.options.ws, self.options.http))

    async def _start_http(self, tree: DeviceTree, state_path: str) -> None:
        """The emulated cloud over the store this device syncs to (a private one when it syncs to none)."""
        from tap_emulator.faces.http import start_cloud

        if self.options.http is None or self.cloud_config is None:
            return
        # The HTTP face gets the default per-face share of the file limit, as each Tap face does.
        limits, _ = fit_to_file_limit(ConnectionLimits(), self._faces_sharing_descriptors())
        from tap_emulator.control import DeviceControl

        host = self.options.http.host
        self.control = DeviceControl(self)
        cloud = await start_cloud(
            store_url_for(self.options.store, state_path),
            host,
            self.options.http.port,
            self.cloud_config,
            local_devices={tree.serial_number: tree.state},
            max_connections=limits.max_connections or 1,
            control=self.control,
            token_required=not is_loopback(host),
        )
        self._closers.append(cloud.close)
        self.http_address = cloud.address
        say_api_access(host, self.cloud_config)

    def _start_sync(self, tree: DeviceTree, state_path: str) -> None:
        """Start pushing group changes to the management store, unless the store is off."""
        from tap_emulator.store import open_store, redact_url

        url = store_url_for(self.options.store, state_path)
        if url is None:
            return
        self.sync = SyncTask(
            tree,
            lambda: open_store(url),
            settings=self.options.sync,
            device_groups=self.profile.device_groups,
        )
        self.sync.start()
        self._closers.append(self.sync.stop)
        log.info("syncing groups to the management store %s", redact_url(url))

    def _start_sources(self, tree: DeviceTree) -> None:
        """The profile's value sources, all in one task, writing through the variable handler. Their
        first values are in place before any face listens; they start again from time 0 after a reboot
        or a factory reset."""
        from tap_emulator.sources import SourceRunner

        if not self.profile.sources:
            return
        self.sources = SourceRunner(self.profile.sources, tree.variables)
        self.sources.start()
        self._closers.append(self.sources.stop)
        self.restart_hooks.append(self.sources.restart)
        log.info("%d value source(s) running", len(self.profile.sources))

    async def stop(self) -> None:
        if self.control is not None:
            self.control.close()  # the live page's event streams end before the HTTP server stops
        self.cancel_lifecycle_tasks()
        await close_in_reverse(self._closers, "error while stopping")
        self.trace.close()


def say_api_access(host: str, config: CloudConfig) -> None:
    """Say at start who may use the control and native APIs (open only on a loopback bind)."""
    if is_loopback(host):
        log.info("HTTP on %s: the control and native APIs are open (a loopback bind)", host)
    elif config.control_token is None:
        log.warning(
            "HTTP on %s (not loopback): the control and native APIs refuse every request: "
            "no [control] token in the cloud configuration %s",
            host,
            config.source,
        )
    else:
        log.warning(
            "HTTP on %s (not loopback): the control and native APIs require 'Authorization: Bearer' "
            "with the [control] token of %s",
            host,
            config.source,
        )


class CloudOnly:
    """``tap-emulator cloud``: the HTTP faces over a shared store, with no device of its own.

    Several of these on one PostgreSQL store agree, since every rule runs in the store's transactions.
    """

    def __init__(
        self,
        store_url: str,
        http: Endpoint,
        cloud_config: str | None = None,
        *,
        announce: Callable[[str], None] = print,
    ) -> None:
        from tap_emulator.faces.http import load_cloud_config
        from tap_emulator.sync import check_store_url

        check_store_url(store_url)
        self.store_url = store_url
        self.http = http
        self.config = load_cloud_config(cloud_config)
        self.announce = announce
        self.http_address: tuple[str, int] | None = None
        self._close: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        from tap_emulator.faces.http import start_cloud
        from tap_emulator.store import redact_url

        if self.store_url.lower().startswith("sqlite://"):
            from tap_emulator.store.urls import sqlite_path

            path = sqlite_path(self.store_url)
            if path != MEMORY:  # like serve's state directory, the store's is created when missing
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        cloud = await start_cloud(
            self.store_url,
            self.http.host,
            self.http.port,
            self.config,
            token_required=not is_loopback(self.http.host),
        )
        say_api_access(self.http.host, self.config)
        self._close = cloud.close
        self.http_address = cloud.address
        self.announce(f"listening http {format_address(cloud.address)}")
        log.info("cloud up over the management store %s", redact_url(self.store_url))

    async def stop(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            await close()
