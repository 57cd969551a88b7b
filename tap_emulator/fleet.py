"""Fleet mode: many emulated devices in one process, behind one broker, in one state file.

Why it exists: cloud-side and load tests need thousands of Taps, each with its own serial number,
groups, sessions and login lockouts, syncing to one management store. One ``serve`` process per device
would cost thousands of interpreters; here the costly parts are shared: one state file (`StateFile`,
writes of all devices group-committed together), one key-derivation worker, one sync task
(`FleetSync`), one broker connection (`FleetRelay`), one model and codecs.

Devices are lazy. An idle device is a `FleetDevice` record: its serial number, its relay key K and its
view of the state file; no task, no tree. Its tree, Tap face (own sessions, own `LoginLimiter`) and
life cycle are built at its first use: its first relay command, a reconcile of the sync that must
write, or at start when it has a CoAP or Tap TCP port of its own (``--coap-ports``/``--tcp-ports``).

Start-up is batched: serials come from one format; the factory state of every fresh device is computed
by `DeviceTree.factory_state` (the one rule `seed` writes) on a template tree and written in one
transaction; every device seeded from one profile starts with the same salt and keys for a group's
password (`SharedSeedCredentials`: one derivation per password, not one per device; a password changed
later derives its own); the relay keys K (5,000 PBKDF2 rounds each) are derived in one batch off the
event loop (`relay_keys`) and cached in each device's state meta with a digest of the net key, so a
restart derives none.

Sharding a bigger fleet over processes or machines is ``--first``/``--count`` (disjoint serials) with
one PostgreSQL store and one broker shared by all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import resource
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tap_emulator.app import (
    CoapAccess,
    DeviceRuntime,
    Endpoint,
    close_in_reverse,
    format_address,
    is_loopback,
    load_device_profile,
    say_api_access,
    warn_coap_access,
)
from tap_emulator.config import ConfigError, Profile, SecurityMode, parse_broker_url
from tap_emulator.faces.tap.connections import ConnectionLimits, fit_to_file_limit
from tap_emulator.faults import FaultInjector
from tap_emulator.model import DeviceModel, Form, ValueError_, default_model
from tap_emulator.security import SharedSeedCredentials
from tap_emulator.security.worker import DerivationWorker
from tap_emulator.state import MEMORY, Change, DeviceState
from tap_emulator.sync import SyncSettings, store_url_for
from tap_emulator.trace import Trace
from tap_emulator.tree import ChangeEvent, DeviceTree
from tap_emulator.tree.handlers.device import IDENTITY

if TYPE_CHECKING:
    from tap_emulator.faces.http.cloud_config import CloudConfig
    from tap_emulator.faces.mqtt import FleetRelay
    from tap_emulator.faces.tap import TapServer
    from tap_emulator.faces.tap.session import TapFace
    from tap_emulator.state import StateFile
    from tap_emulator.sync import FleetSync

__all__ = [
    "DEFAULT_SERIAL_FORMAT",
    "RELAY_KEY_META",
    "Fleet",
    "FleetDevice",
    "FleetOptions",
    "PortRange",
    "default_fleet_state_path",
    "fleet_serials",
    "net_key_digest",
    "parse_port_range",
]

log = logging.getLogger(__name__)

DEFAULT_SERIAL_FORMAT: Final = "EMU{:010d}"
RELAY_KEY_META: Final = "mqtt_relay_key"  # meta value: "{net key digest}:{K}"
MAX_FLEET: Final = 1_000_000  # devices in one process: far past what memory allows, a typo guard
_TOPIC_FORBIDDEN: Final = frozenset("+#\0")  # MQTT wildcards and NUL cannot be part of a serial's topic
# Descriptors a fleet needs besides its per-device sockets: the state file, the broker, the store, the
# derivation worker's pipes, stdio, a few connections.
_RESERVED_DESCRIPTORS: Final = 64
_SECURITY_CHUNK: Final = 500  # stored devices whose trees exist at once while --security rewrites them


@dataclass(frozen=True, slots=True)
class PortRange:
    """``START-END`` or ``START-`` (up to 65535): one port per device, in serial order."""

    start: int
    end: int = 65535

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.end <= 65535:
            raise ValueError(f"{self.start}-{self.end}: a port range is START-[END] within 1..65535")

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def parse_port_range(text: str) -> PortRange:
    """``20000-``, ``20000-20199`` or ``20000`` (a range of one); ValueError saying what is wrong."""
    start_text, dash, end_text = text.partition("-")
    if not start_text.isdigit() or (end_text and not end_text.isdigit()):
        raise ValueError(f"{text!r}: expected START-[END], e.g. 20000- or 20000-20199")
    start = int(start_text)
    end = int(end_text) if end_text else (65535 if dash else start)
    return PortRange(start, end)


def fleet_serials(serial_format: str, first: int, count: int, model: DeviceModel | None = None) -> list[str]:
    """The serial numbers ``serial_format.format(i)`` for i in first .. first+count-1.

    ConfigError for a format that is malformed, needs other arguments, or gives a serial that is not a
    device's (empty, too long or not ASCII for object 3's serial number resource, '/' or an MQTT
    wildcard) or the same serial twice.
    """
    if count < 1 or count > MAX_FLEET or first < 0:
        raise ConfigError(f"a fleet has 1..{MAX_FLEET} devices from a first index of 0 or more")
    try:
        fields = list(string.Formatter().parse(serial_format))
    except ValueError as exc:
        raise ConfigError(f"--serial-format {serial_format!r}: {exc}") from None
    if not any(name is not None for _, name, _, _ in fields):
        raise ConfigError(
            f"--serial-format {serial_format!r} has no field for the index, e.g. 'EMU{{:010d}}'"
        )
    form = _serial_form(model or default_model())
    serials: list[str] = []
    seen: set[str] = set()
    for index in range(first, first + count):
        try:
            serial = serial_format.format(index)
        except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"--serial-format {serial_format!r}: {type(exc).__name__}: {exc}") from None
        if serial in seen:
            raise ConfigError(f"--serial-format {serial_format!r} gives {serial!r} twice (index {index})")
        try:
            form.validate(serial)
        except ValueError_ as exc:
            raise ConfigError(f"--serial-format {serial_format!r}: serial {serial!r}: {exc}") from None
        if (
            not serial
            or not serial.isascii()
            or not serial.isprintable()
            or "/" in serial
            or _TOPIC_FORBIDDEN & set(serial)
        ):
            raise ConfigError(
                f"--serial-format {serial_format!r}: serial {serial!r} must be non-empty printable ASCII "
                "without '/', '+' or '#' (it is part of the relay topics)"
            )
        seen.add(serial)
        serials.append(serial)
    return serials


def _serial_form(model: DeviceModel) -> Form:
    device = model.object_by_alias("device")
    if device is None:
        raise ConfigError("the model has no device object (3)")
    for res in device.resources.values():
        if res.form.alias == "serial-number":
            return res.form
    raise ConfigError("the model's device object has no serial-number resource")


def default_fleet_state_path(first: int, count: int) -> Path:
    """One state file per shard under the working directory: ``state/fleet-{first}-{count}.sqlite3``."""
    return Path("state") / f"fleet-{first}-{count}.sqlite3"


def net_key_digest(net_key: str) -> str:
    """What the cached K records of the net key it was derived from (never the key itself)."""
    return hashlib.sha256(net_key.encode("utf-8")).hexdigest()[:16]


@dataclass(slots=True)
class FleetOptions:
    count: int
    first: int = 0
    profile: str = "default"
    serial_format: str = DEFAULT_SERIAL_FORMAT
    state: str | None = None  # None: default_fleet_state_path; ":memory:" keeps nothing
    store: str | None = None  # management store URL; None: beside the state file; "off": no sync
    mqtt: str | None = None  # broker URL; "off"; None: the profile's [mqtt] broker
    coap_ports: PortRange | None = None  # a CoAP UDP port per device (loopback by default)
    tcp_ports: PortRange | None = None  # a Tap TCP port per device
    host: str = "127.0.0.1"  # where the per-device ports listen
    coap_access: CoapAccess | None = None  # None: CoapAccess.default_for(host)
    security: SecurityMode | None = None  # overrides the profile's (and every stored device's) mode
    sync: SyncSettings = field(default_factory=SyncSettings)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)  # per device's TCP face
    http: Endpoint | None = None  # the emulated cloud's HTTP faces over the fleet's store (no control API)
    cloud_config: str | None = None  # credentials of the seed faces; None: resources/cloud/default.toml


class FleetDevice(DeviceRuntime):
    """One device of a fleet: idle (serial, K, state view) until first used, then its tree and face.

    Satisfies the sync's `SyncSubject` and the relay's `RelayDevice`; its life cycle (reboot, factory
    reset from object 3) is `DeviceRuntime`'s, as a ``serve`` device's.
    """

    def __init__(
        self, fleet: Fleet, serial: str, relay_key: str, key_digest: str, state: DeviceState
    ) -> None:
        super().__init__(fleet.profile.with_serial_number(serial), trace=fleet.trace, faults=fleet.faults)
        self.fleet = fleet
        self.serial_number = serial
        self.relay_key = relay_key
        self.relay_key_digest = key_digest  # of the net key K was derived from
        self.state = state
        self._listeners: list[Callable[[ChangeEvent], None]] = []

    @property
    def built(self) -> bool:
        return self.tree is not None

    def build(self) -> DeviceTree:
        """The device's tree (and Tap face), built now if it is not yet."""
        if self.tree is None:
            tree = self.fleet.open_tree(self.state, self.profile)
            tree.lifecycle = self
            tree.subscribe(self._forward)
            self.tree = tree
            self.tap_face = self._tap_face(tree)
            log.debug("fleet: device %s built", self.serial_number)
            net_key = tree.interface.relay_settings().net_key
            if self.fleet.broker is not None and net_key_digest(net_key) != self.relay_key_digest:
                self.fleet.relay_settings_changed(self)  # K was cached for another net key
        return self.tree

    # RelayDevice
    def face(self) -> TapFace:
        self.build()
        assert self.tap_face is not None
        return self.tap_face

    # SyncSubject
    def device_identity(self) -> dict[str, str]:
        """The identity by profile field name; an idle device's is its profile's (object 3's identity
        is read-only, written by the factory seed alone)."""
        if self.tree is not None:
            return self.tree.device_identity()
        return {name: str(getattr(self.profile.device, name) or "") for name in IDENTITY.values()}

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Change events of the device (an idle device has none until it is built)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def sync_tree(self) -> DeviceTree:
        return self.build()

    def _forward(self, event: ChangeEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a change listener of %s failed", self.serial_number)
        tree = self.tree
        if (
            tree is not None
            and event.object_id == tree.interface_object.id
            and event.resource_ids & tree.interface.relay_resource_ids()
        ):
            self.fleet.relay_settings_changed(self)


class Fleet:
    """A running fleet. ``start`` binds everything or fails with nothing left open; ``stop`` ends it."""

    def __init__(self, options: FleetOptions, *, announce: Callable[[str], None] = print) -> None:
        self.options = options
        self.announce = announce
        self.model = default_model()
        self.profile: Profile = load_device_profile(options.profile, security=options.security)
        self.serials = fleet_serials(options.serial_format, options.first, options.count, self.model)
        self.state_path = options.state or str(default_fleet_state_path(options.first, options.count))
        self.store_url = store_url_for(options.store, self.state_path)
        self.broker = self._broker()
        self._check_ports()
        self.trace = Trace()
        self.faults = FaultInjector(time.monotonic)
        self.seed_credentials = SharedSeedCredentials(os.urandom)
        self.devices: dict[str, FleetDevice] = {}
        self.derivations: DerivationWorker | None = None
        self.state_file: StateFile | None = None
        self.sync: FleetSync | None = None
        self.relay: FleetRelay | None = None
        self.servers: dict[str, list[tuple[str, tuple[str, int]]]] = {}  # serial -> (kind, address)
        self.http_address: tuple[str, int] | None = None
        self.cloud_config: CloudConfig | None = None
        if options.http is not None:
            from tap_emulator.faces.http import load_cloud_config

            self.cloud_config = load_cloud_config(options.cloud_config)
        self.timings: dict[str, float] = {}  # seconds each start-up step took (for the bench and logs)
        self.seeded = 0  # fresh devices seeded at the last start
        self.keys_derived = 0  # relay keys derived at the last start (the others came from the meta)
        self._closers: list[Callable[[], object]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ checks before anything opens

    def _broker(self) -> tuple[str, int] | None:
        choice = self.options.mqtt
        if choice == "off":
            return None
        if choice is not None:
            try:
                return parse_broker_url(choice)
            except ValueError as exc:
                raise ConfigError(f"--mqtt: {exc}") from None
        if not self.profile.mqtt.host:
            raise ConfigError(
                f"profile {self.profile.name} names no broker ([mqtt] broker): give --mqtt URL or --mqtt off"
            )
        return self.profile.mqtt.host, self.profile.mqtt.port

    def _check_ports(self) -> None:
        """Refuse a port range that cannot hold every device, or a file limit that cannot hold the
        sockets (the soft limit is raised toward the hard one first)."""
        count = self.options.count
        sockets = 0
        for flag, ports in (
            ("--coap-ports", self.options.coap_ports),
            ("--tcp-ports", self.options.tcp_ports),
        ):
            if ports is None:
                continue
            if ports.size < count:
                raise ConfigError(
                    f"{flag} {ports} holds {ports.size} ports, not the {count} devices of the fleet"
                )
            sockets += count
        if sockets == 0:
            return
        # A Tap TCP face keeps room for a few connections of its own.
        needed = sockets + (count * 4 if self.options.tcp_ports else 0) + _RESERVED_DESCRIPTORS
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            raise ConfigError(
                f"{count} devices with their own ports need about {needed} file descriptors; the limit is "
                f"{soft} (raise it with ulimit -n, or drop --coap-ports/--tcp-ports and use the MQTT relay)"
            )

    # ------------------------------------------------------------------ building blocks for devices

    def open_tree(self, state: DeviceState, profile: Profile) -> DeviceTree:
        """A device's tree over its state view, sharing the fleet's model, worker and seed credentials."""
        assert self.derivations is not None
        return DeviceTree(
            self.model,
            state,
            access=profile.access,
            random_bytes=os.urandom,
            clock_ms=lambda: time.time_ns() // 1_000_000,
            offload=self.derivations,
            memory=profile.memory,
            seed_credentials=self.seed_credentials,
        )

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        started = time.perf_counter()
        try:
            await self._open_state()
            await self._seed_and_key()
            self._make_devices()
            await self._apply_security_override()
            await self._start_ports()
            self._start_sync()
            await self._start_http()
            await self._start_relay()
        except BaseException:
            await self.stop()
            raise
        self.timings["total"] = time.perf_counter() - started
        # Announced once everything is up, the relay's line last (a script waits for that one).
        for serial, bound in self.servers.items():
            where = " ".join(f"{kind} {format_address(address)}" for kind, address in bound)
            self.announce(f"listening device {serial} {where}")
        if self.http_address is not None:
            self.announce(f"listening http {format_address(self.http_address)}")
        if self.relay is not None and self.broker is not None:
            from tap_emulator.faces.mqtt import broker_url

            self.announce(f"listening mqtt {len(self.devices)}-devices {broker_url(*self.broker)}")
        else:
            self.announce(f"listening fleet {len(self.devices)}-devices (relay off)")
        log.info(
            "fleet of %d devices up in %.1f s (%d seeded, %d relay keys derived; state %s; steps %s)",
            len(self.devices),
            self.timings["total"],
            self.seeded,
            self.keys_derived,
            "in memory" if self.state_path == MEMORY else self.state_path,
            " ".join(f"{step} {seconds:.2f}" for step, seconds in self.timings.items()),
        )

    async def _open_state(self) -> None:
        from tap_emulator.state import StateFile

        t = time.perf_counter()
        self.derivations = DerivationWorker()
        self._closers.append(self.derivations.close)
        await self.derivations.start()
        if self.state_path != MEMORY:
            Path(self.state_path).parent.mkdir(parents=True, exist_ok=True)
        self.state_file = await asyncio.to_thread(StateFile, self.state_path, clock=time.time, owner=True)
        self._closers.append(self.state_file.close)
        self.timings["open"] = time.perf_counter() - t

    async def _seed_and_key(self) -> None:
        """Seed the fresh devices in one transaction, their K with them; K of older devices from the
        meta (derived again, in one batch, where it is missing or was derived from another net key)."""
        from tap_emulator.state import DeviceSeed

        state_file = self.state_file
        assert state_file is not None
        t = time.perf_counter()
        known = set(await asyncio.to_thread(state_file.devices))
        cached = await asyncio.to_thread(state_file.meta_of_all_sync, RELAY_KEY_META)
        fresh = [serial for serial in self.serials if serial not in known]
        net_key = self.profile.mqtt.net_key
        digest = net_key_digest(net_key)
        digests = {digest: digest}  # one string object per distinct digest, shared by the devices
        self.keys: dict[str, tuple[str, str]] = {}  # serial -> (K, digest of the net key it came from)
        stale: list[str] = []
        for serial in self.serials:
            if serial not in known:
                continue
            recorded, _, key = cached.get(serial, "").partition(":")
            if key:
                self.keys[serial] = (key, digests.setdefault(recorded, recorded))
            else:
                stale.append(serial)
        # Devices stored while the relay was off have no K: each one's own net key (it may have
        # changed it) is read from its state, through a tree made for that and dropped.
        by_net_key: dict[str, list[str]] = {net_key: list(fresh)} if self.broker is not None else {}
        if self.broker is not None:
            for serial in stale:
                tree = self.open_tree(state_file.device(serial), self.profile)
                by_net_key.setdefault(tree.interface.relay_settings().net_key, []).append(serial)
        self.timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        # The keys derive on their threads (hashlib releases the GIL) while this thread computes the
        # factory states: the two overlap instead of adding up.
        keys_job = asyncio.ensure_future(self._derive_keys(by_net_key))
        try:
            await asyncio.sleep(0)  # the derivations are handed to their threads
            factories = self._factory_states(fresh)
            self.timings["factory"] = time.perf_counter() - t
            derived = await keys_job
        except BaseException:
            keys_job.cancel()
            raise
        self.keys_derived = len(derived)
        self.timings["relay_keys"] = time.perf_counter() - t
        t = time.perf_counter()
        seeds = []
        for serial, (changes, meta) in zip(fresh, factories, strict=True):
            if serial in derived:
                key, key_digest = derived[serial]
                meta[RELAY_KEY_META] = f"{key_digest}:{key}"
            seeds.append(DeviceSeed(serial, changes, meta))
        if seeds:
            await asyncio.to_thread(state_file.seed_many_sync, seeds)
        restored = [(serial, derived[serial]) for serial in stale if serial in derived]
        if restored:  # rare: devices stored while the relay was off

            def record() -> None:
                for serial, (key, key_digest) in restored:
                    state_file.device(serial).set_meta_sync({RELAY_KEY_META: f"{key_digest}:{key}"})

            await asyncio.to_thread(record)
        self.keys.update(derived)
        self.seeded = len(fresh)
        self.timings["seed"] = time.perf_counter() - t

    @staticmethod
    async def _derive_keys(by_net_key: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
        """serial -> (K, digest of its net key), for the serials of each net key."""
        from tap_emulator.faces.mqtt import relay_keys

        derived: dict[str, tuple[str, str]] = {}
        for net_key, serials in by_net_key.items():
            if serials:
                digest = net_key_digest(net_key)
                keys = await relay_keys(net_key, serials)
                derived.update((serial, (key, digest)) for serial, key in keys.items())
        return derived

    def _factory_states(self, serials: Sequence[str]) -> list[tuple[Sequence[Change], dict[str, str]]]:
        """Each fresh device's factory changes and meta, computed on one template tree (written nowhere)
        with the fleet's shared seed credentials."""
        if not serials:
            return []
        template_state = DeviceState(MEMORY, clock=time.time)
        try:
            template = DeviceTree(
                self.model,
                template_state,
                access=self.profile.access,
                random_bytes=os.urandom,
                clock_ms=lambda: time.time_ns() // 1_000_000,
                memory=self.profile.memory,
                seed_credentials=self.seed_credentials,
            )
            states: list[tuple[Sequence[Change], dict[str, str]]] = []
            for serial in serials:
                factory = template.factory_state(self.profile.with_serial_number(serial))
                states.append((factory.changes, dict(factory.meta)))
            return states
        finally:
            template_state.close()

    def _make_devices(self) -> None:
        state_file = self.state_file
        assert state_file is not None
        t = time.perf_counter()
        for serial in self.serials:
            key, digest = self.keys.get(serial, ("", ""))
            self.devices[serial] = FleetDevice(self, serial, key, digest, state_file.device(serial))
        self.timings["devices"] = time.perf_counter() - t

    async def _apply_security_override(self) -> None:
        """``--security`` over devices already in the file: each one's mode is set through its tree
        (fresh devices were seeded with it), a chunk of trees at a time (bounded memory; the writes of a
        chunk are group-committed together); an idle device's tree is dropped again after."""
        mode = self.options.security
        if mode is None or self.seeded == len(self.devices):
            return
        changed = 0
        devices = list(self.devices.values())
        for start in range(0, len(devices), _SECURITY_CHUNK):
            writes = []
            for device in devices[start : start + _SECURITY_CHUNK]:
                tree = device.tree or self.open_tree(device.state, device.profile)
                if tree.security_mode is not mode:
                    writes.append(tree.set_security_mode(mode))
            await asyncio.gather(*writes)
            changed += len(writes)
        if changed:
            log.info("--security %s: %d stored devices switched", mode.value, changed)

    async def _start_ports(self) -> None:
        """The per-device CoAP and Tap TCP faces (their devices are built now)."""
        coap_ports, tcp_ports = self.options.coap_ports, self.options.tcp_ports
        if coap_ports is None and tcp_ports is None:
            return
        from tap_emulator.faces.coap import start_coap_server
        from tap_emulator.faces.tap import start_tcp_server

        host = self.options.host
        access = self.options.coap_access or CoapAccess.default_for(host)
        limits, warning = fit_to_file_limit(self.options.connections, len(self.devices))
        if warning:
            log.warning("%s", warning)
        for index, device in enumerate(self.devices.values()):
            tree = device.build()
            bound: list[tuple[str, tuple[str, int]]] = []
            if coap_ports is not None:
                coap = await start_coap_server(
                    tree,
                    host,
                    coap_ports.start + index,
                    caller=access.caller,
                    trace=self.trace,
                    faults=self.faults,
                )
                self._closers.append(coap.close)
                device.coap = coap
                bound.append(("coap udp", coap.address))
            if tcp_ports is not None:
                assert device.tap_face is not None
                server: TapServer = await start_tcp_server(
                    device.tap_face, host, tcp_ports.start + index, limits
                )
                self._closers.append(server.close)
                bound.append(("tcp", server.address))
            self.servers[device.serial_number] = bound
        if coap_ports is not None:
            warn_coap_access(
                f"{host} ports {coap_ports.start}..{coap_ports.start + len(self.devices) - 1}",
                host,
                access,
                chosen=self.options.coap_access is not None,
            )

    def _start_sync(self) -> None:
        url = self.store_url
        if url is None:
            return
        from tap_emulator.store import open_store, redact_url
        from tap_emulator.sync import FleetSync

        if url.lower().startswith("sqlite://"):
            from tap_emulator.store.urls import sqlite_path

            path = sqlite_path(url)
            if path != MEMORY:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        sync = FleetSync(
            lambda: open_store(url),
            settings=self.options.sync,
            clock=time.time,
            draw=random.random,
            device_groups=self.profile.device_groups,
        )
        for device in self.devices.values():
            sync.add(device)
        sync.start()
        self.sync = sync
        self._closers.append(sync.stop)
        log.info("fleet: syncing %d devices to the management store %s", len(self.devices), redact_url(url))

    async def _start_http(self) -> None:
        """The emulated cloud over the fleet's store (``--http``): native API and seed faces, each
        device's sync backlog from its state; no control API (it steers one device)."""
        endpoint = self.options.http
        if endpoint is None or self.cloud_config is None:
            return
        from tap_emulator.faces.http import start_cloud

        cloud = await start_cloud(
            self.store_url,
            endpoint.host,
            endpoint.port,
            self.cloud_config,
            local_devices={serial: device.state for serial, device in self.devices.items()},
            token_required=not is_loopback(endpoint.host),
        )
        self._closers.append(cloud.close)
        self.http_address = cloud.address
        say_api_access(endpoint.host, self.cloud_config)

    async def _start_relay(self) -> None:
        if self.broker is None:
            return
        from tap_emulator.faces.mqtt import FleetRelay
        from tap_emulator.faces.mqtt.client import BrokerSettings

        t = time.perf_counter()
        mqtt = self.profile.mqtt
        password = mqtt.password or None
        host, port = self.broker
        settings = BrokerSettings(
            host,
            port,
            mqtt.client_id
            or f"tap-emulator-fleet-{self.options.first}-{self.options.count}-{os.urandom(4).hex()}",
            (mqtt.username or "tap-emulator-fleet") if password else None,
            password,
        )
        relay = FleetRelay(settings, clock=time.monotonic)
        relay.add_many(self.devices.values())
        # The subscriptions go out in batches once connected; a broker that cannot be reached fails the
        # start after CONNECT_TIMEOUT, as serve's relay does.
        await relay.start(timeout=30 + len(self.devices) / 200)
        self.relay = relay
        self._closers.append(relay.stop)
        self.timings["subscribe"] = time.perf_counter() - t

    def relay_settings_changed(self, device: FleetDevice) -> None:
        """A built device's relay settings changed (its net key, by a write or a factory reset): derive
        its K again, record it, and move the device to its new topic (with the relay on). With the
        relay off the K is still recorded, so the cache never outlives a net key."""
        task = asyncio.get_running_loop().create_task(self._rekey(device))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rekey(self, device: FleetDevice) -> None:
        from tap_emulator.codec.mqtt_relay import relay_key

        tree = device.tree
        if tree is None or self.derivations is None:
            return
        net_key = tree.interface.relay_settings().net_key
        key: str = await self.derivations(relay_key, net_key, device.serial_number)
        digest = net_key_digest(net_key)
        if key == device.relay_key:
            device.relay_key_digest = digest
            return
        try:
            await asyncio.to_thread(device.state.set_meta_sync, {RELAY_KEY_META: f"{digest}:{key}"})
        except Exception:
            log.exception("fleet: the new relay key of %s could not be stored", device.serial_number)
        device.relay_key, device.relay_key_digest = key, digest
        if self.relay is not None and self.relay.remove(device.serial_number):
            self.relay.add(device)
        log.info("fleet: relay settings of %s changed; its topic moved", device.serial_number)

    async def settled(self) -> None:
        """Until every device moved by a relay settings change is on its new topic."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.relay is not None:
            await self.relay.settled()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for device in self.devices.values():
            device.cancel_lifecycle_tasks()
        await close_in_reverse(self._closers, "error while stopping the fleet")
        self.trace.close()

    # ------------------------------------------------------------------ views for tests and the bench

    def built_devices(self) -> list[str]:
        return [serial for serial, device in self.devices.items() if device.built]

    def sample(self, count: int, *, rng: random.Random | None = None) -> Sequence[str]:
        """``count`` distinct serials of the fleet, drawn at random."""
        return (rng or random.Random()).sample(self.serials, count)
