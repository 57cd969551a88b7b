"""The one SQL text per operation, and the numbered migrations, shared by the SQLite and PostgreSQL engines.

Every statement is written once with named `:param` placeholders in the subset both databases accept
(UPSERT with a guarded DO UPDATE and RETURNING needs SQLite >= 3.35). An engine only swaps the
placeholder style (`Dialect.sql`) and the timestamp column type; nothing else differs.

The schema is the store-side validation: CHECK constraints refuse out-of-range values, so a bad record
is rejected instead of silently stored. No column can hold a password, a hash or a key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .records import DeviceRecord, GroupRecord

__all__ = [
    "CLAIM_MIGRATION",
    "CREATE_MIGRATIONS_TABLE",
    "DEVICE_COLUMNS",
    "ENSURE_DEVICE",
    "GET_GROUP",
    "GROUP_COLUMNS",
    "GROUP_VERSIONS",
    "GROUP_VERSIONS_OF",
    "LIST_DEVICES",
    "LIST_GROUPS",
    "MIGRATIONS",
    "NEVER_SEEN",
    "SCHEMA_VERSION",
    "SERIALS_PER_STATEMENT",
    "UPSERT_DEVICE",
    "UPSERT_GROUP",
    "Dialect",
    "Migration",
    "serials_in",
]

# last_seen of a device known only through its groups (a group arrived before its device record).
NEVER_SEEN = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Migration:
    """One numbered schema step; `statements` run in one transaction with the row recording it."""

    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines: placeholder style and how timestamps are stored."""

    placeholder: str  # format string taking the parameter name, e.g. ":{}" or "%({})s"
    timestamp_type: str
    encode_timestamp: Callable[[datetime], object]
    decode_timestamp: Callable[[Any], datetime]

    def sql(self, text: str) -> str:
        """The shared text with `{timestamp}` and `:name` placeholders swapped for this engine."""
        text = text.replace("{timestamp}", self.timestamp_type)
        return _PARAM.sub(lambda match: self.placeholder.format(match.group(1)), text)

    def device_params(self, device: DeviceRecord) -> dict[str, object]:
        return {
            "serial": device.serial,
            "model": device.model,
            "firmware": device.firmware,
            "last_seen": self.encode_timestamp(device.last_seen),
        }

    def device_from_row(self, row: Sequence[Any]) -> DeviceRecord:
        serial, model, firmware, last_seen = row
        return DeviceRecord(serial, model, firmware, self.decode_timestamp(last_seen))

    def group_params(self, group: GroupRecord) -> dict[str, object]:
        params: dict[str, object] = {column: getattr(group, column) for column in GROUP_COLUMNS}
        params["updated_at"] = self.encode_timestamp(group.updated_at)
        return params

    def group_from_row(self, row: Sequence[Any]) -> GroupRecord:
        value: dict[str, Any] = dict(zip(GROUP_COLUMNS, row, strict=True))
        for flag in ("is_profile", "password_set", "deleted"):
            value[flag] = bool(value[flag])  # SQLite hands back 0 / 1
        value["updated_at"] = self.decode_timestamp(value["updated_at"])
        return GroupRecord(**value)


# A named parameter: a colon and a lowercase identifier, digits allowed after the first character (the SQL
# texts contain no other colon).
_PARAM = re.compile(r":([a-z_][a-z0-9_]*)")

DEVICE_COLUMNS = ("serial", "model", "firmware", "last_seen")
GROUP_COLUMNS = (
    "device_serial",
    "group_id",
    "version",
    "name",
    "alias",
    "session_lifetime",
    "is_profile",
    "password_set",
    "scram_salt",
    "scram_iteration",
    "deleted",
    "updated_at",
)

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {timestamp} NOT NULL
)"""

# Claims a migration: the row appears only for the one opener whose insert did not conflict, and only
# once its transaction (which also runs the migration) commits; a concurrent opener waits, then skips.
CLAIM_MIGRATION = """
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at)
ON CONFLICT (version) DO NOTHING
RETURNING version"""

SCHEMA_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"

_INITIAL_DEVICES = """
CREATE TABLE devices (
    serial TEXT PRIMARY KEY CONSTRAINT devices_serial_length CHECK (length(serial) BETWEEN 1 AND 64),
    model TEXT NOT NULL CONSTRAINT devices_model_length CHECK (length(model) <= 128),
    firmware TEXT NOT NULL CONSTRAINT devices_firmware_length CHECK (length(firmware) <= 128),
    last_seen {timestamp} NOT NULL
)"""

# Booleans are checked against (FALSE, TRUE): a no-op on PostgreSQL, and 0/1 only on SQLite.
# A live group is a profile exactly when its alias is its own id (object 1025, resource 5).
_INITIAL_ACCESS_GROUPS = """
CREATE TABLE access_groups (
    device_serial TEXT NOT NULL REFERENCES devices (serial),
    group_id INTEGER NOT NULL CONSTRAINT access_groups_group_id_range CHECK (group_id BETWEEN 0 AND 65535),
    version BIGINT NOT NULL CONSTRAINT access_groups_version_positive CHECK (version >= 1),
    name TEXT NOT NULL CONSTRAINT access_groups_name_length CHECK (length(name) <= 16),
    alias INTEGER NOT NULL CONSTRAINT access_groups_alias_range CHECK (alias BETWEEN 0 AND 65535),
    session_lifetime INTEGER NOT NULL
        CONSTRAINT access_groups_session_lifetime_range CHECK (session_lifetime BETWEEN 0 AND 65535),
    is_profile BOOLEAN NOT NULL CONSTRAINT access_groups_is_profile_bool CHECK (is_profile IN (FALSE, TRUE)),
    password_set BOOLEAN NOT NULL
        CONSTRAINT access_groups_password_set_bool CHECK (password_set IN (FALSE, TRUE)),
    scram_salt BIGINT CONSTRAINT access_groups_scram_salt_uint32 CHECK (scram_salt BETWEEN 0 AND 4294967295),
    scram_iteration BIGINT
        CONSTRAINT access_groups_scram_iteration_uint32 CHECK (scram_iteration BETWEEN 0 AND 4294967295),
    deleted BOOLEAN NOT NULL CONSTRAINT access_groups_deleted_bool CHECK (deleted IN (FALSE, TRUE)),
    updated_at {timestamp} NOT NULL,
    PRIMARY KEY (device_serial, group_id),
    CONSTRAINT access_groups_profile_is_own_alias CHECK (deleted OR is_profile = (alias = group_id))
)"""

# --- migration 2: the management service (tap_emulator.cloud) ---------------------------------------
# Invariants two store connections could race on are the database's: a name unique in its scope (the
# unique index; `unique_scope` is NULL where a profile lets names repeat, and NULLs never collide), the
# capacity (`device_count` is kept by the membership statements and checked against `max_devices`), one
# API key per (group, type), one share per (group, account). Everything hanging off a group goes with it.

# Named counters: store-wide sequences (creation order, ROMA's integer ids) and per-tenant lock rows.
_CLOUD_COUNTERS = """
CREATE TABLE cloud_counters (
    name TEXT PRIMARY KEY CONSTRAINT cloud_counters_name_length CHECK (length(name) <= 200),
    value BIGINT NOT NULL
)"""

_DEVICE_GROUPS = """
CREATE TABLE device_groups (
    id TEXT PRIMARY KEY CONSTRAINT device_groups_id_length CHECK (length(id) BETWEEN 1 AND 64),
    seq BIGINT NOT NULL UNIQUE,
    tenant TEXT NOT NULL CONSTRAINT device_groups_tenant_length CHECK (length(tenant) BETWEEN 1 AND 128),
    scope TEXT NOT NULL CONSTRAINT device_groups_scope_length CHECK (length(scope) <= 128),
    unique_scope TEXT CONSTRAINT device_groups_unique_scope_is_scope CHECK (unique_scope = scope),
    name TEXT NOT NULL CONSTRAINT device_groups_name_length CHECK (length(name) <= 256),
    description TEXT NOT NULL CONSTRAINT device_groups_description_length CHECK (length(description) <= 4096),
    parent_id TEXT REFERENCES device_groups (id),
    status INTEGER NOT NULL,
    sequence BIGINT NOT NULL,
    max_devices BIGINT NOT NULL CONSTRAINT device_groups_max_devices_range CHECK (max_devices >= 0),
    device_count BIGINT NOT NULL CONSTRAINT device_groups_device_count_range CHECK (device_count >= 0),
    tags TEXT NOT NULL,
    created_at {timestamp} NOT NULL,
    created_by TEXT NOT NULL,
    updated_at {timestamp} NOT NULL,
    updated_by TEXT NOT NULL,
    version BIGINT NOT NULL CONSTRAINT device_groups_version_positive CHECK (version >= 1),
    profile TEXT NOT NULL CONSTRAINT device_groups_profile_length CHECK (length(profile) <= 32),
    CONSTRAINT device_groups_capacity CHECK (max_devices = 0 OR device_count <= max_devices),
    CONSTRAINT device_groups_not_own_parent CHECK (parent_id <> id)
)"""

_DEVICE_GROUPS_UNIQUE_NAME = """
CREATE UNIQUE INDEX device_groups_unique_name ON device_groups (tenant, unique_scope, name)"""

_DEVICE_GROUPS_BY_PARENT = "CREATE INDEX device_groups_by_parent ON device_groups (parent_id)"

_DEVICE_GROUP_MEMBERS = """
CREATE TABLE device_group_members (
    group_id TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    serial TEXT NOT NULL REFERENCES devices (serial),
    added_at {timestamp} NOT NULL,
    added_by TEXT NOT NULL,
    PRIMARY KEY (group_id, serial)
)"""

_MEMBERS_BY_DEVICE = "CREATE INDEX device_group_members_by_serial ON device_group_members (serial, group_id)"

_CLOUD_ACCOUNTS = """
CREATE TABLE cloud_accounts (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL CONSTRAINT cloud_accounts_id_length CHECK (length(id) BETWEEN 1 AND 128),
    email TEXT NOT NULL CONSTRAINT cloud_accounts_email_length CHECK (length(email) <= 254),
    name TEXT NOT NULL CONSTRAINT cloud_accounts_name_length CHECK (length(name) <= 256),
    first_name TEXT NOT NULL CONSTRAINT cloud_accounts_first_name_length CHECK (length(first_name) <= 256),
    last_name TEXT NOT NULL CONSTRAINT cloud_accounts_last_name_length CHECK (length(last_name) <= 256),
    created_at {timestamp} NOT NULL,
    PRIMARY KEY (tenant, id)
)"""

_ACCOUNTS_BY_EMAIL = "CREATE INDEX cloud_accounts_by_email ON cloud_accounts (tenant, email)"

_CLOUD_ROLES = """
CREATE TABLE cloud_roles (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL CONSTRAINT cloud_roles_id_length CHECK (length(id) BETWEEN 1 AND 64),
    name TEXT NOT NULL CONSTRAINT cloud_roles_name_length CHECK (length(name) <= 128),
    description TEXT NOT NULL CONSTRAINT cloud_roles_description_length CHECK (length(description) <= 1024),
    permissions TEXT NOT NULL,
    removable BOOLEAN NOT NULL CONSTRAINT cloud_roles_removable_bool CHECK (removable IN (FALSE, TRUE)),
    PRIMARY KEY (tenant, id)
)"""

_GROUP_USERS = """
CREATE TABLE group_users (
    group_id TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    added_at {timestamp} NOT NULL,
    PRIMARY KEY (group_id, user_id),
    FOREIGN KEY (tenant, user_id) REFERENCES cloud_accounts (tenant, id),
    FOREIGN KEY (tenant, role_id) REFERENCES cloud_roles (tenant, id)
)"""

_GROUP_USERS_BY_USER = "CREATE INDEX group_users_by_user ON group_users (tenant, user_id, group_id)"

_INVITATIONS = """
CREATE TABLE group_invitations (
    id TEXT PRIMARY KEY CONSTRAINT group_invitations_id_length CHECK (length(id) BETWEEN 1 AND 64),
    group_id TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    tenant TEXT NOT NULL,
    email TEXT NOT NULL CONSTRAINT group_invitations_email_length CHECK (length(email) BETWEEN 3 AND 254),
    role_id TEXT NOT NULL,
    invited_by TEXT NOT NULL,
    created_at {timestamp} NOT NULL,
    accepted BOOLEAN NOT NULL CONSTRAINT group_invitations_accepted_bool CHECK (accepted IN (FALSE, TRUE)),
    UNIQUE (group_id, email),
    FOREIGN KEY (tenant, role_id) REFERENCES cloud_roles (tenant, id)
)"""

# The token of an external key is kept only as a SHA-256 fingerprint: no column can give it back.
_API_KEYS = """
CREATE TABLE group_api_keys (
    group_id TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    type TEXT NOT NULL CONSTRAINT group_api_keys_type_length CHECK (length(type) BETWEEN 1 AND 64),
    name TEXT NOT NULL CONSTRAINT group_api_keys_name_length CHECK (length(name) <= 256),
    token_sha256 TEXT NOT NULL
        CONSTRAINT group_api_keys_token_sha256_length CHECK (length(token_sha256) = 64),
    created_at {timestamp} NOT NULL,
    created_by TEXT NOT NULL,
    updated_at {timestamp} NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (group_id, type)
)"""

_SHARES = """
CREATE TABLE group_shares (
    group_id TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    tenant TEXT NOT NULL,
    account_id TEXT NOT NULL,
    shared_by TEXT NOT NULL,
    created_at {timestamp} NOT NULL,
    PRIMARY KEY (group_id, account_id),
    FOREIGN KEY (tenant, account_id) REFERENCES cloud_accounts (tenant, id)
)"""

_SHARES_BY_ACCOUNT = "CREATE INDEX group_shares_by_account ON group_shares (tenant, account_id, group_id)"

# Set once a device has joined the device groups its profile names, so a later sync never re-adds it.
_DEVICES_PROFILE_GROUPS_JOINED = """
ALTER TABLE devices ADD COLUMN profile_groups_joined BOOLEAN NOT NULL DEFAULT FALSE"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "devices and access groups", (_INITIAL_DEVICES, _INITIAL_ACCESS_GROUPS)),
    Migration(
        2,
        "device groups, members, accounts, roles, invitations, api keys, shares",
        (
            _CLOUD_COUNTERS,
            _DEVICE_GROUPS,
            _DEVICE_GROUPS_UNIQUE_NAME,
            _DEVICE_GROUPS_BY_PARENT,
            _DEVICE_GROUP_MEMBERS,
            _MEMBERS_BY_DEVICE,
            _CLOUD_ACCOUNTS,
            _ACCOUNTS_BY_EMAIL,
            _CLOUD_ROLES,
            _GROUP_USERS,
            _GROUP_USERS_BY_USER,
            _INVITATIONS,
            _API_KEYS,
            _SHARES,
            _SHARES_BY_ACCOUNT,
            _DEVICES_PROFILE_GROUPS_JOINED,
        ),
    ),
)

UPSERT_DEVICE = """
INSERT INTO devices (serial, model, firmware, last_seen) VALUES (:serial, :model, :firmware, :last_seen)
ON CONFLICT (serial) DO UPDATE SET
    model = excluded.model, firmware = excluded.firmware, last_seen = excluded.last_seen
WHERE devices.last_seen <= excluded.last_seen"""

# A group may arrive before its device: create the parent row, which upsert_device later fills in.
ENSURE_DEVICE = """
INSERT INTO devices (serial, model, firmware, last_seen) VALUES (:serial, '', '', :last_seen)
ON CONFLICT (serial) DO NOTHING"""

# No row comes back when the stored version is the same or newer: a duplicate or stale record.
UPSERT_GROUP = f"""
INSERT INTO access_groups ({", ".join(GROUP_COLUMNS)})
VALUES ({", ".join(":" + column for column in GROUP_COLUMNS)})
ON CONFLICT (device_serial, group_id) DO UPDATE SET
    {", ".join(f"{column} = excluded.{column}" for column in GROUP_COLUMNS[2:])}
WHERE access_groups.version < excluded.version
RETURNING version"""

_SELECT_GROUPS = f"SELECT {', '.join(GROUP_COLUMNS)} FROM access_groups"

GET_GROUP = f"{_SELECT_GROUPS} WHERE device_serial = :device_serial AND group_id = :group_id"

LIST_GROUPS = f"""{_SELECT_GROUPS}
WHERE device_serial = :device_serial AND group_id > :after_group_id
ORDER BY group_id
LIMIT :limit"""

GROUP_VERSIONS = "SELECT group_id, version FROM access_groups WHERE device_serial = :device_serial"

# The versions of many devices in one statement; `{serials}` is filled by `serials_in`.
GROUP_VERSIONS_OF = (
    "SELECT device_serial, group_id, version FROM access_groups WHERE device_serial IN ({serials})"
)

# Serials bound in one IN list: far below both engines' parameter limits (SQLite 32,766, PostgreSQL 65,535).
SERIALS_PER_STATEMENT = 1000


def serials_in(text: str, serials: Sequence[str]) -> tuple[str, dict[str, object]]:
    """`text` with its `{serials}` slot as one named parameter per serial, and those parameters."""
    if not 0 < len(serials) <= SERIALS_PER_STATEMENT:
        raise ValueError(f"an IN list holds 1 to {SERIALS_PER_STATEMENT} serials, not {len(serials)}")
    names = [f"serial_{index}" for index in range(len(serials))]
    params: dict[str, object] = dict(zip(names, serials, strict=True))
    return text.replace("{serials}", ", ".join(":" + name for name in names)), params


LIST_DEVICES = f"SELECT {', '.join(DEVICE_COLUMNS)} FROM devices ORDER BY serial"


class StoreReads:
    """The read operations of the ManagementStore protocol, written once for both engines.

    An engine supplies its dialect and ``_rows`` (run one shared SQL text, return its rows); the
    statements, parameters and row decoding are the same everywhere.
    """

    dialect: Dialect

    async def _rows(self, text: str, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    async def get_group(self, device_serial: str, group_id: int) -> GroupRecord | None:
        rows = await self._rows(GET_GROUP, {"device_serial": device_serial, "group_id": group_id})
        return self.dialect.group_from_row(rows[0]) if rows else None

    async def list_groups(
        self, device_serial: str, limit: int = 100, after_group_id: int | None = None
    ) -> list[GroupRecord]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        params = {
            "device_serial": device_serial,
            "after_group_id": -1 if after_group_id is None else after_group_id,
            "limit": limit,
        }
        return [self.dialect.group_from_row(row) for row in await self._rows(LIST_GROUPS, params)]

    async def group_versions(self, device_serial: str) -> dict[int, int]:
        rows = await self._rows(GROUP_VERSIONS, {"device_serial": device_serial})
        return {group_id: version for group_id, version in rows}

    async def group_versions_many(self, serials: Sequence[str]) -> dict[str, dict[int, int]]:
        versions: dict[str, dict[int, int]] = {serial: {} for serial in serials}
        unique = list(versions)
        for start in range(0, len(unique), SERIALS_PER_STATEMENT):
            text, params = serials_in(GROUP_VERSIONS_OF, unique[start : start + SERIALS_PER_STATEMENT])
            for serial, group_id, version in await self._rows(text, params):
                versions[serial][group_id] = version
        return versions

    async def list_devices(self) -> list[DeviceRecord]:
        return [self.dialect.device_from_row(row) for row in await self._rows(LIST_DEVICES, {})]
