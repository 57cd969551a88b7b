"""Device profiles: the TOML files in ``resources/profiles`` that seed a fresh (or factory-reset) device.

A profile is data, not code: identity (object 3), security mode and login policy (object 1024), the
MQTT relay settings (object 1024, ``[mqtt]``), access rules, the initial groups of object 1025 and the
value sources of the variables (``sources/profile.py``). Loading validates every field and reports the
file and the key on error, so a typo in a hand-written profile is a clear message, not a traceback.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_emulator.codec.variables import DATA_TYPES, DOMAINS
from tap_emulator.model import RESOURCES_DIR, ValueError_, default_model
from tap_emulator.security.lockout import LockoutPolicy
from tap_emulator.sources.profile import SourceConfig, SourceError, parse_sources
from tap_emulator.target.memory import ADDRESS_SPACE, MemoryRegion, TargetMemoryError

__all__ = [
    "AccessPolicy",
    "AclEntry",
    "ApplicationSeed",
    "BundleConfig",
    "ConfigError",
    "DataConfig",
    "DeviceIdentity",
    "GroupSeed",
    "MqttSettings",
    "Profile",
    "ProfileError",
    "SecurityMode",
    "SecurityPolicy",
    "VariableConfig",
    "check_data_against",
    "check_groups_against_model",
    "load_profile",
    "parse_broker_url",
    "parse_data_config",
    "parse_version",
]

PROFILES_DIR = RESOURCES_DIR / "profiles"
ADMIN_GROUP = 0xFFFF
SUPERVISOR_GROUP = 0xFFFE
ANONYMOUS_GROUP = 0
# Profiles tap-config.json names by username without declaring them (@iotize/tap's SPECIAL_USERS).
SPECIAL_USERNAMES = {"anonymous": ANONYMOUS_GROUP, "admin": ADMIN_GROUP, "supervisor": SUPERVISOR_GROUP}


class ConfigError(Exception):
    """A profile or an option is invalid; the message says where."""


ProfileError = ConfigError  # the name the data section's contract (C1) uses


class SecurityMode(enum.Enum):
    NONE = "none"
    HASH = "hash"
    SCRAM = "scram"

    @property
    def options(self) -> int:
        """The /1024//6 security options word (tap-protocol.md B.1); SCRAM implies hashed passwords."""
        return {SecurityMode.NONE: 0x0000, SecurityMode.HASH: 0x0008, SecurityMode.SCRAM: 0x0018}[self]

    @classmethod
    def from_options(cls, options: int) -> SecurityMode:
        if options & 0x0010:
            return cls.SCRAM
        if options & 0x0008:
            return cls.HASH
        return cls.NONE


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    manufacturer: str
    model: str
    serial_number: str
    firmware_version: str


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    mode: SecurityMode = SecurityMode.SCRAM
    hash_iteration: int = 5000
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    session_lifetime_unit_seconds: float = 1.0
    # How long a SCRAM handshake (/1024//40) waits for its proof (/1024//41).
    scram_handshake_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may do what to object 1025 (and the device settings of object 1024).

    ``writers`` is also the profile order, highest first: a group may change another group only when
    it ranks strictly above it (see ``rank``). Admin always ranks first, wherever the list puts it.
    """

    writers: tuple[int, ...] = (ADMIN_GROUP, SUPERVISOR_GROUP)
    anonymous_read: bool = True
    admin_group: int = ADMIN_GROUP

    def rank(self, group_id: int) -> int:
        """0 for admin, then 1, 2 ... for the other writers in the profile's order; every group that
        is not a writer (anonymous, groups created later) shares the last rank."""
        if group_id == self.admin_group:
            return 0
        below_admin = [w for w in self.writers if w != self.admin_group]
        return below_admin.index(group_id) + 1 if group_id in below_admin else len(below_admin) + 1


MQTT_PORT = 1883
DEFAULT_NET_KEY = "testnetkey"  # @iotize/device-com-mqtt.js's default


def parse_port(text: str) -> int | None:
    """The TCP port a decimal text names, or None when it names none (empty, not digits, 0, > 65535)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def parse_broker_url(text: str) -> tuple[str, int]:
    """``mqtt://HOST[:PORT]`` (or ``HOST[:PORT]``) as (host, port); ValueError naming what is wrong.

    Plain MQTT over TCP only: the emulator does not speak MQTT over TLS or WebSocket.
    """
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme.lower() not in ("mqtt", "tcp"):
            raise ValueError(f"{text!r}: only mqtt:// brokers are supported")
    rest = rest.rstrip("/")
    host, _, port_text = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    if not host or "/" in host or "@" in host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r}: expected mqtt://HOST[:PORT]")
    if port_text == "":
        return host, MQTT_PORT
    port = parse_port(port_text)
    if port is None:
        raise ValueError(f"{text!r}: port must be a number in 1..65535")
    return host, port


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[mqtt]``: the broker and relay settings a fresh device holds (object 1024, 50..59), and whether
    ``serve`` starts the relay face when ``--mqtt`` is not given."""

    relay: bool = False
    host: str = ""
    port: int = MQTT_PORT
    client_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    net_key: str = field(default=DEFAULT_NET_KEY, repr=False)


@dataclass(frozen=True, slots=True)
class GroupSeed:
    id: int
    name: str
    password: str | None = field(default=None, repr=False)
    session_lifetime: int | None = None  # None: the model's default
    alias: int | None = None
    # A password key instead of a password (tap-config.json's "key"): 16, 36 or 40 bytes.
    key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ApplicationSeed:
    """What the configuration says of itself (object 1024): the app's name and the config version."""

    name: str = ""
    config_version: int = 0  # major(8) | minor(8) | patch(16), as `parse_version` packs "x.y.z"


MAX_APP_NAME = 32  # the SDK's tap-config schema: application.name maxLength


def parse_version(text: str, where: str) -> int:
    """``"x.y.z"`` packed as the SDK's string-version converter sends it: x(1) | y(1) | z(2) bytes."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"{where}: {text!r} is not a version x.y.z")
    major, minor, patch = (int(p) for p in parts)
    if major > 0xFF or minor > 0xFF or patch > 0xFFFF:
        raise ConfigError(f"{where}: {text!r} does not fit x.y.z in 0..255.0..255.0..65535")
    return major << 24 | minor << 16 | patch


def _application(data: Mapping[str, Any], where: str) -> ApplicationSeed:
    aw = f"{where} [application]"
    table = _get(data, "application", dict, where, {})
    name = _get(table, "name", str, aw, "")
    if len(name) > MAX_APP_NAME or not name.isascii() or not name.isprintable():
        raise ConfigError(f"{aw}: 'name' must be at most {MAX_APP_NAME} printable ASCII characters")
    version = _get(table, "config_version", str, aw, "0.0.0")
    return ApplicationSeed(name, parse_version(version, f"{aw} config_version"))


@dataclass(frozen=True, slots=True)
class AclEntry:
    """Rights of one profile (by its username, as tap-config.json names it) on a bundle."""

    username: str
    read: bool
    write: bool


@dataclass(frozen=True, slots=True)
class VariableConfig:
    id: int
    address: int
    data_type: str  # a key of codec.variables.DATA_TYPES
    domain: str = "TARGET"  # a key of codec.variables.DOMAINS
    length: int = 1
    name: str = ""
    unit: str = ""
    value: tuple[float, ...] | None = None  # initial elements (tap-config's "value"), else zeros


@dataclass(frozen=True, slots=True)
class BundleConfig:
    id: int
    name: str = ""
    data_log_period: int = 0
    variables: tuple[VariableConfig, ...] = ()
    acls: tuple[AclEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class DataConfig:
    """A profile's ``[data]``, shaped as tap-config.json's ``config.data`` (its ``profiles`` are the
    groups, parsed elsewhere)."""

    bundles: tuple[BundleConfig, ...] = ()

    @property
    def variables(self) -> tuple[VariableConfig, ...]:
        return tuple(v for b in self.bundles for v in b.variables)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    device: DeviceIdentity
    security: SecurityPolicy
    access: AccessPolicy
    groups: tuple[GroupSeed, ...]
    # Ids of the management store's device groups the device joins when it first syncs ([cloud]).
    device_groups: tuple[str, ...] = ()
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    data: DataConfig = field(default_factory=DataConfig)
    # The emulated target's memory ([target] memory_base, memory_size).
    memory: MemoryRegion = field(default_factory=MemoryRegion)
    application: ApplicationSeed = field(default_factory=ApplicationSeed)
    # [[sources]]: what moves the variables' values (README "Value sources").
    sources: tuple[SourceConfig, ...] = ()

    def with_security_mode(self, mode: SecurityMode) -> Profile:
        return dataclasses.replace(self, security=dataclasses.replace(self.security, mode=mode))

    def with_serial_number(self, serial_number: str) -> Profile:
        """The same profile for another device (a fleet's devices differ by serial number only)."""
        check_serial_number(serial_number, "serial number")
        return dataclasses.replace(self, device=dataclasses.replace(self.device, serial_number=serial_number))


def check_serial_number(serial: str, what: str) -> None:
    """ConfigError unless ``serial`` can name a device: non-empty printable text without '/'."""
    if not serial or not serial.isprintable() or "/" in serial:
        raise ConfigError(f"{what} must be non-empty printable text without '/' (got {serial[:40]!r})")


def _get(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: '{key}' is missing")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{key}' must be of type {kind.__name__}")
    return value


def _uint(value: int, high: int, what: str) -> int:
    if not 0 <= value <= high:
        raise ConfigError(f"{what} must be in 0..{high}")
    return value


def resolve_profile_path(name_or_path: str) -> Path:
    """``default`` -> resources/profiles/default.toml; anything with a slash or .toml is a path."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        return Path(name_or_path)
    return PROFILES_DIR / f"{name_or_path}.toml"


def load_profile(name_or_path: str = "default") -> Profile:
    path = resolve_profile_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ConfigError(f"profile {name_or_path!r} not found ({path}); known profiles: {known}") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    where = path.name
    device_t = _get(data, "device", dict, where)
    device = DeviceIdentity(
        manufacturer=_get(device_t, "manufacturer", str, f"{where} [device]", "IOTIZE"),
        model=_get(device_t, "model", str, f"{where} [device]"),
        serial_number=_get(device_t, "serial_number", str, f"{where} [device]"),
        firmware_version=_get(device_t, "firmware_version", str, f"{where} [device]"),
    )
    check_serial_number(device.serial_number, f"{where} [device]: serial_number")
    sec_t = _get(data, "security", dict, where, {})
    sw = f"{where} [security]"
    try:
        mode = SecurityMode(_get(sec_t, "mode", str, sw, "scram"))
    except ValueError:
        raise ConfigError(f"{sw}: 'mode' must be none, hash or scram") from None
    unit = _get(sec_t, "session_lifetime_unit", str, sw, "s")
    if unit not in ("s", "min"):
        raise ConfigError(f"{sw}: 'session_lifetime_unit' must be 's' or 'min'")
    security = SecurityPolicy(
        mode=mode,
        hash_iteration=_uint(
            _get(sec_t, "hash_iteration", int, sw, 5000), 0xFFFFFFFF, f"{sw} hash_iteration"
        ),
        lockout=_lockout_policy(sec_t, sw),
        session_lifetime_unit_seconds=1.0 if unit == "s" else 60.0,
        scram_handshake_seconds=_get(sec_t, "scram_handshake_seconds", float, sw, 30.0),
    )
    if not math.isfinite(security.scram_handshake_seconds) or security.scram_handshake_seconds <= 0:
        raise ConfigError(f"{sw}: 'scram_handshake_seconds' must be a number > 0")
    if security.hash_iteration == 0:
        raise ConfigError(f"{sw}: hash_iteration must be at least 1")
    acc_t = _get(data, "access", dict, where, {})
    aw = f"{where} [access]"
    writers = _get(acc_t, "writers", list, aw, [ADMIN_GROUP, SUPERVISOR_GROUP])
    if not all(isinstance(w, int) and 0 <= w <= 0xFFFF for w in writers):
        raise ConfigError(f"{aw}: 'writers' must be a list of group ids (0..65535)")
    access = AccessPolicy(tuple(dict.fromkeys(writers)), _get(acc_t, "anonymous_read", bool, aw, True))
    groups: list[GroupSeed] = []
    for index, g in enumerate(_get(data, "groups", list, where, [])):
        gw = f"{where} [[groups]] #{index + 1}"
        if not isinstance(g, dict):
            raise ConfigError(f"{gw}: must be a table")
        gid = _uint(_get(g, "id", int, gw), 0xFFFF, f"{gw} id")
        if any(s.id == gid for s in groups):
            raise ConfigError(f"{gw}: group id {gid} is declared twice")
        alias = _get(g, "alias", int, gw, None)
        groups.append(
            GroupSeed(
                id=gid,
                name=_get(g, "name", str, gw),
                password=_get(g, "password", str, gw, None),
                session_lifetime=_get(g, "session_lifetime", int, gw, None),
                alias=None if alias is None else _uint(alias, 0xFFFF, f"{gw} alias"),
            )
        )
    check_groups_against_model(groups, where)
    memory = _memory_region(data, where)
    data_config = parse_data_config(_get(data, "data", dict, where, {}), where=f"{where} [data]")
    check_data_against(data_config, groups, memory, f"{where} [data]")
    try:
        sources = parse_sources(data.get("sources"), where, path.parent)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    return Profile(
        path.stem,
        device,
        security,
        access,
        tuple(groups),
        _device_groups(data, where),
        mqtt=_mqtt(data, where),
        application=_application(data, where),
        data=data_config,
        memory=memory,
        sources=sources,
    )


def check_data_against(
    data_config: DataConfig, groups: Sequence[GroupSeed], memory: MemoryRegion, where: str
) -> None:
    """Access lists name profiles the device has; variables lie in the target memory."""
    usernames = {*SPECIAL_USERNAMES, *(g.name for g in groups)}
    for bundle in data_config.bundles:
        for entry in bundle.acls:
            if entry.username not in usernames:
                raise ConfigError(f"{where} bundle {bundle.id} acls: no profile {entry.username!r}")
    for variable in data_config.variables:
        size = variable.length * DATA_TYPES[variable.data_type].size
        if not memory.contains(variable.address, size):
            raise ConfigError(
                f"{where} variable {variable.id}: {size} bytes at 0x{variable.address:08X} are "
                f"outside the target memory {memory.describe()}"
            )


def _memory_region(data: Mapping[str, Any], where: str) -> MemoryRegion:
    tw = f"{where} [target]"
    target = _get(data, "target", dict, where, {})
    base = _get(target, "memory_base", int, tw, 0)
    size = _get(target, "memory_size", int, tw, ADDRESS_SPACE - base if 0 <= base < ADDRESS_SPACE else 1)
    try:
        return MemoryRegion(base, size)
    except TargetMemoryError as exc:
        raise ConfigError(f"{tw}: {exc}") from None


# Limits of the data section: the model's, read once (instance ranges, element count, text sizes).
def _data_limits() -> dict[str, tuple[int, int]]:
    model = default_model()
    limits = {
        "bundle": (0, 0xFFFF),
        "variable": (0, 0xFFFF),
        "length": (1, 0xFF),
        "name": (0, 32),
        "meta": (0, 128),
    }
    bundle, variable = model.object_by_alias("bundle"), model.object_by_alias("variable")
    if bundle is not None and bundle.instance_range is not None:
        limits["bundle"] = bundle.instance_range
        name = bundle.forms_by_alias.get("name")
        if name is not None and isinstance(name[1].lengths, tuple):
            limits["name"] = name[1].lengths
    if variable is not None and variable.instance_range is not None:
        limits["variable"] = variable.instance_range
        count = variable.forms_by_alias.get("number-of-elements")
        if count is not None and count[1].int_range is not None:
            limits["length"] = count[1].int_range
        meta = variable.forms_by_alias.get("meta")
        if meta is not None and isinstance(meta[1].lengths, tuple):
            limits["meta"] = meta[1].lengths
    return limits


_BUNDLE_KEYS = frozenset({"id", "name", "dataLog", "variables", "acls", "features"})
_VARIABLE_KEYS = frozenset({"id", "address", "dataType", "domain", "length", "meta", "value"})


def _in(value: int, bounds: tuple[int, int], what: str) -> int:
    if not bounds[0] <= value <= bounds[1]:
        raise ConfigError(f"{what} must be in {bounds[0]}..{bounds[1]}")
    return value


def _address(raw: object, what: str) -> int:
    """An address as tap-config.json gives it: an integer, or a string "0x..." (at most 10 characters)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and len(raw) <= 10 and raw[:2].lower() == "0x":
        try:
            value = int(raw[2:], 16)
        except ValueError:
            raise ConfigError(f"{what} must be an integer or a hex string 0x...") from None
    else:
        raise ConfigError(f"{what} must be an integer or a hex string 0x...")
    return _in(value, (0, ADDRESS_SPACE - 1), what)


def _variable_config(raw: object, where: str, limits: Mapping[str, tuple[int, int]]) -> VariableConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - _VARIABLE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    vid = _in(_get(raw, "id", int, where), limits["variable"], f"{where} id")
    data_type = _get(raw, "dataType", str, where, "UINT8")
    if data_type not in DATA_TYPES:
        raise ConfigError(f"{where} dataType: must be one of {', '.join(DATA_TYPES)}")
    domain = _get(raw, "domain", str, where, "TARGET")
    if domain not in DOMAINS:
        raise ConfigError(f"{where} domain: must be one of {', '.join(DOMAINS)}")
    length = _in(_get(raw, "length", int, where, 1), limits["length"], f"{where} length")
    meta = _get(raw, "meta", dict, where, {})
    name, unit = _get(meta, "name", str, f"{where} meta", ""), _get(meta, "unit", str, f"{where} meta", "")
    if ":" in name:
        raise ConfigError(f"{where} meta name: must not contain ':'")
    if len(f"{name}:{unit}".encode()) > limits["meta"][1]:
        raise ConfigError(f"{where} meta: name and unit take at most {limits['meta'][1] - 1} bytes")
    value: tuple[float, ...] | None = None
    if "value" in raw:
        items = raw["value"] if isinstance(raw["value"], list) else [raw["value"]]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items) or not items:
            raise ConfigError(f"{where} value: must be a number or a list of numbers")
        if len(items) > length:
            raise ConfigError(f"{where} value: {len(items)} elements for a length of {length}")
        value = tuple(float(x) for x in items)
    address = _address(raw.get("address", 0), f"{where} address")
    return VariableConfig(vid, address, data_type, domain, length, name, unit, value)


def parse_data_config(raw: Mapping[str, Any], *, where: str = "[data]") -> DataConfig:
    """The data section of a profile (or of a tap-config.json ``config.data``): bundles, their
    variables and access lists, checked against the model's limits. ConfigError names the entry."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - {"bundles", "profiles"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    limits = _data_limits()
    bundles: list[BundleConfig] = []
    variable_ids: set[int] = set()
    raw_bundles = _get(raw, "bundles", list, where, [])
    for index, b in enumerate(raw_bundles):
        bw = f"{where} bundles #{index + 1}"
        if not isinstance(b, Mapping):
            raise ConfigError(f"{bw}: must be a table")
        unknown = sorted(set(b) - _BUNDLE_KEYS)
        if unknown:
            raise ConfigError(f"{bw}: unknown key {unknown[0]!r}")
        bid = _in(_get(b, "id", int, bw), limits["bundle"], f"{bw} id")
        if any(x.id == bid for x in bundles):
            raise ConfigError(f"{bw}: bundle id {bid} is declared twice")
        name = _get(b, "name", str, bw, "")
        if not name.isascii() or not name.isprintable():
            raise ConfigError(f"{bw} name: only printable ASCII characters are allowed")
        _in(len(name), limits["name"], f"{bw} name length")
        data_log = _get(b, "dataLog", dict, bw, {"period": 0})
        period = _in(_get(data_log, "period", int, f"{bw} dataLog"), (0, 0xFFFFFFFF), f"{bw} dataLog period")
        variables = []
        for v_index, v in enumerate(_get(b, "variables", list, bw, [])):
            variable = _variable_config(v, f"{bw} variables #{v_index + 1}", limits)
            if variable.id in variable_ids:
                raise ConfigError(
                    f"{bw} variables #{v_index + 1}: variable id {variable.id} is declared twice"
                )
            variable_ids.add(variable.id)
            variables.append(variable)
        acls = []
        for username, rights in _get(b, "acls", dict, bw, {}).items():
            aw = f"{bw} acls.{username}"
            if not isinstance(rights, Mapping) or set(rights) - {"read", "write"}:
                raise ConfigError(f"{aw}: must be a table of read and write")
            acls.append(
                AclEntry(
                    username, _get(rights, "read", bool, aw, False), _get(rights, "write", bool, aw, False)
                )
            )
        bundles.append(BundleConfig(bid, name, period, tuple(variables), tuple(acls)))
    return DataConfig(tuple(bundles))


def _mqtt(data: Mapping[str, Any], where: str) -> MqttSettings:
    """``[mqtt]``: ``relay`` (bool), ``broker`` (mqtt://HOST[:PORT]), ``client_id``, ``username``,
    ``password``, ``net_key``; each value must fit its resource of object 1024."""
    mw = f"{where} [mqtt]"
    table = _get(data, "mqtt", dict, where, {})
    unknown = set(table) - {"relay", "broker", "client_id", "username", "password", "net_key"}
    if unknown:
        raise ConfigError(f"{mw}: unknown key(s) {', '.join(sorted(unknown))}")
    host, port = "", MQTT_PORT
    broker = _get(table, "broker", str, mw, "")
    if broker:
        try:
            host, port = parse_broker_url(broker)
        except ValueError as exc:
            raise ConfigError(f"{mw} broker: {exc}") from None
    settings = MqttSettings(
        relay=_get(table, "relay", bool, mw, False),
        host=host,
        port=port,
        client_id=_get(table, "client_id", str, mw, ""),
        username=_get(table, "username", str, mw, ""),
        password=_get(table, "password", str, mw, ""),
        net_key=_get(table, "net_key", str, mw, DEFAULT_NET_KEY),
    )
    if settings.relay and not settings.host:
        raise ConfigError(f"{mw}: relay = true needs a broker")
    interface = default_model().object_by_alias("interface")
    forms = {} if interface is None else interface.forms_by_alias
    for key, slug in (
        ("host", "mqtt-broker-hostname"),
        ("client_id", "mqtt-client-id"),
        ("username", "mqtt-username"),
        ("password", "mqtt-password"),
        ("net_key", "mqtt-relay-net-key"),
    ):
        if slug not in forms:
            continue
        try:
            forms[slug][1].validate(getattr(settings, key))
        except ValueError_ as exc:  # the message never repeats the value
            raise ConfigError(f"{mw} {key}: {exc}") from None
    return settings


MAX_PROFILE_DEVICE_GROUPS = 32


def _device_groups(data: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """[cloud] device_groups: the device-group ids (as the native API shows them) to join on first sync."""
    cw = f"{where} [cloud]"
    ids = _get(_get(data, "cloud", dict, where, {}), "device_groups", list, cw, [])
    if len(ids) > MAX_PROFILE_DEVICE_GROUPS:
        raise ConfigError(f"{cw}: 'device_groups' names at most {MAX_PROFILE_DEVICE_GROUPS} groups")
    for group_id in ids:
        if not isinstance(group_id, str) or not 1 <= len(group_id) <= 64 or not group_id.isprintable():
            raise ConfigError(
                f"{cw}: 'device_groups' must be a list of group ids (1 to 64 printable characters)"
            )
    return tuple(dict.fromkeys(ids))


def _lockout_policy(sec_t: Mapping[str, Any], where: str) -> LockoutPolicy:
    """The login limits of ``[security]``: every key optional, defaults from `LockoutPolicy`."""
    defaults = LockoutPolicy()
    values: dict[str, Any] = {}
    for item in dataclasses.fields(LockoutPolicy):
        default = getattr(defaults, item.name)
        kind = float if isinstance(default, float) else int
        value = _get(sec_t, item.name, kind, where, default)
        values[item.name] = _uint(value, 1_000_000, f"{where} {item.name}") if kind is int else value
    try:
        return LockoutPolicy(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_groups_against_model(groups: list[GroupSeed], where: str) -> None:
    """A profile may only seed what a client could have written: unique names, the model's limits (name
    and password length and charset, lifetime range) and references (an alias names a group of the
    profile)."""
    names: dict[str, int] = {}
    for index, seed in enumerate(groups):
        if seed.name and seed.name in names:  # login by name must designate one group
            raise ConfigError(
                f"{where} [[groups]] #{index + 1} name: already used by group {names[seed.name]}"
            )
        names.setdefault(seed.name, seed.id)
    group_object = default_model().object_by_alias("group")
    if group_object is None:
        return
    forms = group_object.forms_by_alias
    ids = {g.id for g in groups}
    for index, seed in enumerate(groups):
        gw = f"{where} [[groups]] #{index + 1}"
        for key, slug, value in (
            ("name", "name", seed.name),
            ("password", "password", seed.password),
            ("session_lifetime", "session-lifetime", seed.session_lifetime),
        ):
            if value is None or slug not in forms:
                continue
            try:
                forms[slug][1].validate(value)
            except ValueError_ as exc:  # the message never repeats the value
                raise ConfigError(f"{gw} {key}: {exc}") from None
        if seed.alias is not None and seed.alias not in ids:
            raise ConfigError(f"{gw} alias: group {seed.alias} is not declared in the profile")
