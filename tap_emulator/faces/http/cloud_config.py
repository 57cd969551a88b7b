"""Who may call the emulated clouds: the credentials and tenants of each seed face, from one TOML file.

``resources/cloud/default.toml`` (shipped in the wheel beside the object models) holds the defaults the
README documents; ``--cloud-config PATH`` names another file. Loading validates every entry and names
the file and key on error. Secrets are kept out of ``repr`` and compared in constant time, so neither a
log line nor a timing difference gives one away.
"""

from __future__ import annotations

import hmac
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_emulator.config import ConfigError
from tap_emulator.model import RESOURCES_DIR

__all__ = [
    "DEFAULT_CLOUD_CONFIG",
    "AppServiceApp",
    "CloudConfig",
    "IotizeUser",
    "OceanConnectApp",
    "RomaProject",
    "RomaToken",
    "load_cloud_config",
    "same_secret",
]

DEFAULT_CLOUD_CONFIG = RESOURCES_DIR / "cloud" / "default.toml"
DEFAULT_THROTTLE_PER_MINUTE = 100  # OceanConnect's documented default flow control


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented credential with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class IotizeUser:
    email: str
    name: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class OceanConnectApp:
    app_id: str
    token: str = field(repr=False)
    authorized_apps: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AppServiceApp:
    app_id: str
    app_key: str = field(repr=False)
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RomaToken:
    token: str = field(repr=False)
    user_id: str = ""
    user_name: str = ""


@dataclass(frozen=True, slots=True)
class RomaProject:
    project_id: str
    instances: frozenset[str]


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """Every seed face's credentials; the lookups return None for an unknown or wrong credential."""

    iotize_users: tuple[IotizeUser, ...] = ()
    oceanconnect_apps: tuple[OceanConnectApp, ...] = ()
    oceanconnect_throttle_per_minute: int = DEFAULT_THROTTLE_PER_MINUTE
    appservice_apps: tuple[AppServiceApp, ...] = ()
    roma_tokens: tuple[RomaToken, ...] = ()
    roma_projects: tuple[RomaProject, ...] = ()
    source: str = "<defaults>"
    # ``[control] token``: the bearer token the control and native APIs require on a non-loopback bind.
    control_token: str | None = field(default=None, repr=False)

    def iotize_user(self, token: str | None) -> IotizeUser | None:
        return next((u for u in self.iotize_users if same_secret(token, u.token)), None)

    def iotize_user_by_email(self, email: str) -> IotizeUser | None:
        return next((u for u in self.iotize_users if u.email.lower() == email.lower()), None)

    def oceanconnect_app(self, app_id: str | None, token: str | None) -> OceanConnectApp | None:
        app = next((a for a in self.oceanconnect_apps if a.app_id == app_id), None)
        return app if app is not None and same_secret(token, app.token) else None

    def oceanconnect_app_exists(self, app_id: str) -> bool:
        return any(a.app_id == app_id for a in self.oceanconnect_apps)

    def appservice_app(self, app_id: str | None, app_key: str | None) -> AppServiceApp | None:
        app = next((a for a in self.appservice_apps if a.app_id == app_id), None)
        return app if app is not None and same_secret(app_key, app.app_key) else None

    def roma_token(self, token: str | None) -> RomaToken | None:
        return next((t for t in self.roma_tokens if same_secret(token, t.token)), None)

    def roma_instance_exists(self, project_id: str, instance_id: str) -> bool:
        return any(p.project_id == project_id and instance_id in p.instances for p in self.roma_projects)


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _entries(data: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where}: [[{key}]] must be a list of tables")
    return value


def _text(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 256:
        raise ConfigError(f"{where}: '{key}' must be printable text of 1 to 256 characters")
    return value


def _texts(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v and v.isprintable() for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of non-empty strings")
    return tuple(value)


def _unique(values: list[str], what: str, where: str) -> None:
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: every {what} must be unique")


def parse_cloud_config(data: Mapping[str, Any], where: str) -> CloudConfig:
    iotize = _table(data, "iotize", where)
    users = tuple(
        IotizeUser(
            email=_text(u, "email", f"{where} [[iotize.users]] #{i}"),
            name=_text(u, "name", f"{where} [[iotize.users]] #{i}", u.get("email")),
            token=_text(u, "token", f"{where} [[iotize.users]] #{i}"),
        )
        for i, u in enumerate(_entries(iotize, "users", where), 1)
    )
    _unique([u.email.lower() for u in users], "IoTize email", where)
    _unique([u.token for u in users], "IoTize token", where)

    ocean = _table(data, "oceanconnect", where)
    throttle = ocean.get("throttle_per_minute", DEFAULT_THROTTLE_PER_MINUTE)
    if type(throttle) is not int or not 0 <= throttle <= 1_000_000:
        raise ConfigError(f"{where} [oceanconnect]: 'throttle_per_minute' must be an integer in 0..1000000")
    apps = tuple(
        OceanConnectApp(
            app_id=_text(a, "app_id", f"{where} [[oceanconnect.apps]] #{i}"),
            token=_text(a, "token", f"{where} [[oceanconnect.apps]] #{i}"),
            authorized_apps=frozenset(_texts(a, "authorized_apps", f"{where} [[oceanconnect.apps]] #{i}")),
        )
        for i, a in enumerate(_entries(ocean, "apps", where), 1)
    )
    _unique([a.app_id for a in apps], "OceanConnect app_id", where)

    appservice = _table(data, "appservice", where)
    service_apps = tuple(
        AppServiceApp(
            app_id=_text(a, "app_id", f"{where} [[appservice.apps]] #{i}"),
            app_key=_text(a, "app_key", f"{where} [[appservice.apps]] #{i}"),
            accounts=_texts(a, "accounts", f"{where} [[appservice.apps]] #{i}"),
        )
        for i, a in enumerate(_entries(appservice, "apps", where), 1)
    )
    _unique([a.app_id for a in service_apps], "APP-service app_id", where)
    _unique([acct for a in service_apps for acct in a.accounts], "APP-service account", where)

    roma = _table(data, "roma", where)
    tokens = tuple(
        RomaToken(
            token=_text(t, "token", f"{where} [[roma.tokens]] #{i}"),
            user_id=_text(t, "user_id", f"{where} [[roma.tokens]] #{i}", "roma-user"),
            user_name=_text(t, "user_name", f"{where} [[roma.tokens]] #{i}", "roma-user"),
        )
        for i, t in enumerate(_entries(roma, "tokens", where), 1)
    )
    projects = tuple(
        RomaProject(
            project_id=_text(p, "project_id", f"{where} [[roma.projects]] #{i}"),
            instances=frozenset(_texts(p, "instances", f"{where} [[roma.projects]] #{i}")),
        )
        for i, p in enumerate(_entries(roma, "projects", where), 1)
    )
    _unique([p.project_id for p in projects], "ROMA project_id", where)
    control = _table(data, "control", where)
    token = None if "token" not in control else _text(control, "token", f"{where} [control]")
    return CloudConfig(users, apps, throttle, service_apps, tokens, projects, where, token)


def load_cloud_config(path: str | Path | None = None) -> CloudConfig:
    """The cloud configuration at ``path`` (default: the shipped ``resources/cloud/default.toml``)."""
    source = Path(path) if path is not None else DEFAULT_CLOUD_CONFIG
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"cloud configuration {str(source)!r} not found") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return parse_cloud_config(data, source.name)
