"""Booting a device from a ``tap-config.json`` (``serve --tap-config PATH``), the file the SDK's configurator
applies (`@iotize/tap` ``assets/schema/v1/tap-config.json``).

A device booted from one holds what the configurator would have written on top of a factory reset of
the base profile (its identity, login limits, access policy and target memory): the same groups, keys,
security mode, app name, config version, bundles, variables and access lists. So this module reads the
file the way the SDK flattens it (``toFlatTapConfig``):

- ``config.data.profiles``: admin, supervisor and anonymous are known by their username and keep their
  ids; every other profile needs an ``id``; each of its ``users`` becomes a group whose alias is that
  profile's id. Admin and supervisor absent from the file get their default password and a lifetime
  of 30, as the configurator writes them. ``password`` (text) or ``key`` (hex: a 16-byte hash, a
  36-byte StoredKey | ServerKey | salt or the 40-byte form) seeds the credential; ``salt`` is ignored
  (the device draws one for a password).
- ``config.tap.security``: the mode the configurator's final ``PUT /1024//6`` sets: SCRAM when
  ``scramActivated``, else hash when ``hashPassword``, else plain; an absent ``security`` is plain too,
  as the SDK writes an empty options word then. ``config.tap.scram.hashIteration`` is ``/1024//42``.
- ``config.application.name`` and ``config.version`` are ``/1024//9`` and ``/1024//10``.
- ``config.data.bundles``: through `parse_data_config`, the one parser of the data section.
- The other sections (target, wireless, cloud, jvm) configure hardware the emulator does not have: they
  are accepted and ignored, with one log line.

Every error is a `ConfigError` naming the file and the entry, so ``serve`` exits 2 with a message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tap_emulator.config import (
    ADMIN_GROUP,
    ANONYMOUS_GROUP,
    SPECIAL_USERNAMES,
    SUPERVISOR_GROUP,
    ApplicationSeed,
    ConfigError,
    GroupSeed,
    Profile,
    SecurityMode,
    check_data_against,
    check_groups_against_model,
    parse_data_config,
    parse_version,
)

__all__ = ["MAX_TAP_CONFIG_BYTES", "load_tap_config"]

log = logging.getLogger(__name__)

MAX_TAP_CONFIG_BYTES = 4 << 20  # a tap-config of every bundle and variable a Tap holds is far smaller
_TOP_KEYS = frozenset({"meta", "config"})
_CONFIG_KEYS = frozenset({"version", "target", "wireless", "application", "jvm", "cloud", "tap", "data"})
_IGNORED_SECTIONS = ("target", "wireless", "cloud", "jvm")
_DEFAULT_LIFETIME = 30  # the configurator's lifetime for an admin or supervisor the file omits
_KEY_LENGTHS = frozenset({16, 36, 40})
_SDK_HASH_ITERATION = 5000  # the configurator's default when SCRAM is on and the file gives none
_MAX_PROFILE_ID = 65533  # the schema's user and profile id maximum (the special ids are above)


def load_tap_config(path: str, base: Profile) -> Profile:
    """``base`` as the configurator leaves it after applying the tap-config file at ``path``."""
    where = Path(path).name
    try:
        with open(path, "rb") as file:
            raw_bytes = file.read(MAX_TAP_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"tap-config {path}: {exc.strerror or exc}") from None
    if len(raw_bytes) > MAX_TAP_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_TAP_CONFIG_BYTES} bytes")
    try:
        document = json.loads(raw_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None
    config = _table(document, where, _TOP_KEYS, required="config").get("config")
    config = _table(config, f"{where} config", _CONFIG_KEYS, required="version")
    cw = f"{where} config"
    ignored = [section for section in _IGNORED_SECTIONS if section in config]
    if ignored:
        log.info("%s: sections %s configure hardware the emulator lacks; ignored", where, ", ".join(ignored))
    version = _typed(config, "version", str, cw)
    application = _table(config.get("application", {}), f"{cw} application", None)
    name = _typed(application, "name", str, f"{cw} application", "")
    if len(name) > 32 or not name.isascii() or not name.isprintable():
        raise ConfigError(f"{cw} application name: at most 32 printable ASCII characters")
    tap = _table(config.get("tap", {}), f"{cw} tap", None)
    mode = _security_mode(tap, f"{cw} tap")
    hash_iteration = _hash_iteration(tap, mode, base, f"{cw} tap")
    data = _table(config.get("data", {}), f"{cw} data", None)
    groups = _groups(data.get("profiles", []), mode, f"{cw} data profiles", base)
    check_groups_against_model(groups, where)
    data_config = parse_data_config({"bundles": data.get("bundles", [])}, where=f"{cw} data")
    check_data_against(data_config, groups, base.memory, f"{cw} data")
    security = dataclasses.replace(base.security, mode=mode, hash_iteration=hash_iteration)
    return dataclasses.replace(
        base,
        name=Path(path).stem,
        security=security,
        groups=tuple(groups),
        application=ApplicationSeed(name, parse_version(version, f"{cw} version")),
        data=data_config,
    )


def _table(
    value: object, where: str, allowed: frozenset[str] | None, *, required: str | None = None
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be an object")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    if required is not None and required not in value:
        raise ConfigError(f"{where}: {required!r} is missing")
    return value


def _typed(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: {key!r} is missing")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key!r} must be of type {kind.__name__}")
    return value


def _security_mode(tap: Mapping[str, Any], where: str) -> SecurityMode:
    security = _table(tap.get("security", {}), f"{where} security", None)
    flags = {
        k: _typed(security, k, bool, f"{where} security", False) for k in ("scramActivated", "hashPassword")
    }
    if flags["scramActivated"]:
        return SecurityMode.SCRAM
    return SecurityMode.HASH if flags["hashPassword"] else SecurityMode.NONE


def _hash_iteration(tap: Mapping[str, Any], mode: SecurityMode, base: Profile, where: str) -> int:
    scram = _table(tap.get("scram", {}), f"{where} scram", None)
    default = _SDK_HASH_ITERATION if mode is SecurityMode.SCRAM else base.security.hash_iteration
    iteration = _typed(scram, "hashIteration", int, f"{where} scram", default)
    if not 1 <= iteration <= 0xFFFF:  # the schema's uint16, as the SDK writes /1024//42
        raise ConfigError(f"{where} scram hashIteration: must be in 1..65535")
    return int(iteration)


def _key(raw: object, where: str) -> bytes:
    if not isinstance(raw, str) or not raw[:2].lower() == "0x":
        raise ConfigError(f"{where}: must be a hex string 0x...")
    try:
        key = bytes.fromhex(raw[2:])
    except ValueError:
        raise ConfigError(f"{where}: must be a hex string 0x...") from None
    if len(key) not in _KEY_LENGTHS:
        raise ConfigError(f"{where}: a key is 16, 36 or 40 bytes, not {len(key)}")
    return key


def _seed(raw: object, where: str, alias: int | None) -> GroupSeed:
    profile = _table(raw, where, None)
    username = _typed(profile, "username", str, where)
    special = SPECIAL_USERNAMES.get(username)
    if special is None:
        group_id = _typed(profile, "id", int, where)
        if not 0 <= group_id <= _MAX_PROFILE_ID:
            raise ConfigError(f"{where} id: must be in 0..{_MAX_PROFILE_ID}")
    else:
        group_id = special
    password = _typed(profile, "password", str, where, None)
    key = None if "key" not in profile else _key(profile["key"], f"{where} key")
    if password is not None and key is not None:
        raise ConfigError(f"{where}: give a password or a key, not both")
    lifetime = _typed(profile, "lifeTime", int, where, None)
    return GroupSeed(group_id, username, password, lifetime, alias, key)


def _groups(raw: object, mode: SecurityMode, where: str, base: Profile) -> list[GroupSeed]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list")
    seeds: list[GroupSeed] = []
    for index, entry in enumerate(raw):
        pw = f"{where} #{index + 1}"
        seed = _seed(entry, pw, None)
        seeds.append(seed)
        users = entry.get("users", []) if isinstance(entry, Mapping) else []
        if not isinstance(users, list):
            raise ConfigError(f"{pw} users: must be a list")
        seeds += [_seed(user, f"{pw} users #{u + 1}", seed.id) for u, user in enumerate(users)]
    by_id: dict[int, GroupSeed] = {}
    for seed in seeds:
        if seed.id in by_id:
            raise ConfigError(f"{where}: group id {seed.id} is declared twice")
        by_id[seed.id] = seed
    for special, name in ((ADMIN_GROUP, "admin"), (SUPERVISOR_GROUP, "supervisor")):
        if special not in by_id:
            by_id[special] = GroupSeed(special, name, name, _DEFAULT_LIFETIME)
    if ANONYMOUS_GROUP not in by_id:
        kept = next((g for g in base.groups if g.id == ANONYMOUS_GROUP), None)
        by_id[ANONYMOUS_GROUP] = kept or GroupSeed(ANONYMOUS_GROUP, "anonymous", "")
    if mode is SecurityMode.HASH or mode is SecurityMode.NONE:
        for seed in by_id.values():
            if seed.key is not None and len(seed.key) != 16:
                raise ConfigError(f"{where}: group {seed.id}'s key is a SCRAM key; this mode logs in by hash")
    return sorted(by_id.values(), key=lambda g: g.id)
