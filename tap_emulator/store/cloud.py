"""The management service's store operations: transactions over either engine, and the SQL they run.

The cloud core (tap_emulator.cloud) needs several statements in one transaction with decisions between
them (a capacity check, a parent walk), so each engine offers `atomic(work)`: `work` gets a Transaction
whose `rows` runs one shared SQL text (schema.Dialect placeholders) inside the engine's write transaction
(SQLite BEGIN IMMEDIATE on the store's thread; PostgreSQL with its conflict retries, so `work` must be
safe to run again). A refused request raises before commit, so nothing is half-written.

Texts never compare a parameter with NULL (PostgreSQL cannot type `$1 IS NULL`): optional filters take
an `any_*` flag and a non-null value instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from .records import MembershipOutcome, StoreError
from .schema import GROUP_COLUMNS as ACCESS_GROUP_COLUMNS
from .schema import Dialect

__all__ = [
    "GROUP_COLUMNS",
    "MEMBER_COLUMNS",
    "CloudOperations",
    "CloudStore",
    "MembershipOutcome",
    "Transaction",
    "add_membership",
    "insert_group",
    "next_counter",
]

_T = TypeVar("_T")

# The counter whose values order device groups by creation (the keyset of every group list).
GROUP_SEQ_COUNTER = "device_group_seq"
# The tenant key and owner of device groups a device profile names that did not exist yet.
PROFILE_TENANT = "native"
PROFILE_ACTOR = "device-profile"


class Transaction(Protocol):
    """One open write transaction of an engine."""

    dialect: Dialect

    async def rows(self, text: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Run one shared SQL text; its rows (empty for a statement without RETURNING)."""
        ...


@runtime_checkable
class CloudStore(Protocol):
    """What the cloud core needs of an engine, on top of the ManagementStore the sync task uses."""

    dialect: Dialect

    async def atomic(
        self,
        work: Callable[[Transaction], Awaitable[_T]],
        *,
        retry_unique_violation: bool = False,
        read_only: bool = False,
    ) -> _T:
        """Run `work` in one transaction and commit it; roll back if it raises.

        `retry_unique_violation`: on PostgreSQL a unique violation raised by a concurrent transaction
        that committed first is retried (the new attempt's own check then sees that row and refuses
        cleanly); SQLite serialises writers, so it never needs this.
        `read_only`: `work` only reads; on SQLite it then runs without taking the write lock, so it reads
        beside another connection's open write transaction (waiting, within the busy timeout, only while
        a commit writes the file).
        """
        ...


# --- SQL texts ----------------------------------------------------------------------------------------

GROUP_COLUMNS = (
    "id",
    "seq",
    "tenant",
    "scope",
    "name",
    "description",
    "parent_id",
    "status",
    "sequence",
    "max_devices",
    "device_count",
    "tags",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
    "version",
    "profile",
)
_GROUPS = ", ".join(GROUP_COLUMNS)
_G_GROUPS = ", ".join(f"g.{column}" for column in GROUP_COLUMNS)
MEMBER_COLUMNS = ("group_id", "serial", "added_at", "added_by")

NEXT_COUNTER = """
INSERT INTO cloud_counters (name, value) VALUES (:name, 1)
ON CONFLICT (name) DO UPDATE SET value = cloud_counters.value + 1
RETURNING value"""

INSERT_GROUP = f"""
INSERT INTO device_groups ({_GROUPS}, unique_scope)
VALUES ({", ".join(":" + column for column in GROUP_COLUMNS)}, :unique_scope)
ON CONFLICT DO NOTHING
RETURNING {_GROUPS}"""

GET_GROUP = f"SELECT {_GROUPS} FROM device_groups WHERE id = :id"

# Another group of the same uniqueness scope holding the name (`:id` is the group being renamed, or '').
NAME_HOLDER = """
SELECT id FROM device_groups
WHERE tenant = :tenant AND unique_scope = :scope AND name = :name AND id <> :id"""

_GROUP_FILTER = """(:any_tenant = 1 OR tenant = :tenant)
  AND (:any_scope = 1 OR scope = :scope)
  AND (:any_name = 1 OR name = :name)"""

LIST_GROUPS = f"""
SELECT {_GROUPS} FROM device_groups
WHERE {_GROUP_FILTER} AND seq > :after_seq
ORDER BY seq
LIMIT :limit"""

COUNT_GROUPS = f"SELECT COUNT(*) FROM device_groups WHERE {_GROUP_FILTER}"

COUNT_TENANT_GROUPS = "SELECT COUNT(*) FROM device_groups WHERE tenant = :tenant"

# The version guard makes a partial update of a row read earlier in the transaction safe against a
# concurrent update; the capacity guard reads device_count as it is when the row is locked.
UPDATE_GROUP = f"""
UPDATE device_groups SET
    scope = :scope, unique_scope = :unique_scope, name = :name, description = :description,
    parent_id = :parent_id, status = :status, sequence = :sequence, max_devices = :max_devices,
    tags = :tags, updated_at = :updated_at, updated_by = :updated_by, version = version + 1
WHERE id = :id AND version = :version AND (:max_devices = 0 OR device_count <= :max_devices)
RETURNING {_GROUPS}"""

# The chain of parents from :parent_id up, bounded so a corrupt chain cannot loop for ever.
ANCESTORS = """
WITH RECURSIVE chain (id, parent_id, depth) AS (
    SELECT id, parent_id, 1 FROM device_groups WHERE id = :parent_id
    UNION ALL
    SELECT g.id, g.parent_id, chain.depth + 1
    FROM device_groups g JOIN chain ON g.id = chain.parent_id
    WHERE chain.depth <= :max_depth
)
SELECT id FROM chain"""

# How deep the subtree under :id goes (1 = the group alone), bounded like ANCESTORS.
SUBTREE_DEPTH = """
WITH RECURSIVE tree (id, depth) AS (
    SELECT id, 1 FROM device_groups WHERE id = :id
    UNION ALL
    SELECT g.id, tree.depth + 1 FROM device_groups g JOIN tree ON g.parent_id = tree.id
    WHERE tree.depth <= :max_depth
)
SELECT MAX(depth) FROM tree"""

REPARENT_CHILDREN = """
UPDATE device_groups SET parent_id = :new_parent_id, updated_at = :updated_at, updated_by = :updated_by,
    version = version + 1
WHERE parent_id = :id"""

DELETE_GROUP = (
    "DELETE FROM device_groups WHERE id = :id AND (:require_empty = 0 OR device_count = 0) RETURNING id"
)

INSERT_MEMBER = f"""
INSERT INTO device_group_members ({", ".join(MEMBER_COLUMNS)})
VALUES (:group_id, :serial, :added_at, :added_by)
ON CONFLICT (group_id, serial) DO NOTHING
RETURNING serial"""

GET_MEMBER = f"""
SELECT {", ".join(MEMBER_COLUMNS)} FROM device_group_members
WHERE group_id = :group_id AND serial = :serial"""

DELETE_MEMBER = (
    "DELETE FROM device_group_members WHERE group_id = :group_id AND serial = :serial RETURNING serial"
)

# Capacity: the row lock taken by this UPDATE serialises concurrent adds to one group, and the WHERE is
# evaluated on the row as the previous add committed it.
COUNT_MEMBER_IN = """
UPDATE device_groups SET device_count = device_count + 1
WHERE id = :group_id AND (max_devices = 0 OR device_count < max_devices)
RETURNING device_count"""

COUNT_MEMBER_OUT = "UPDATE device_groups SET device_count = device_count - 1 WHERE id = :group_id"

_DEVICES = "d.serial, d.model, d.firmware, d.last_seen"

LIST_MEMBERS = f"""
SELECT {_DEVICES} FROM device_group_members m JOIN devices d ON d.serial = m.serial
WHERE m.group_id = :group_id AND m.serial > :after
ORDER BY m.serial
LIMIT :limit"""

LIST_DEVICES_PAGE = f"""
SELECT {_DEVICES} FROM devices d
WHERE d.serial > :after
ORDER BY d.serial
LIMIT :limit"""

GET_DEVICE = f"SELECT {_DEVICES} FROM devices d WHERE d.serial = :serial"

# The memberships of a page of devices: the page is a contiguous range of serials.
MEMBERSHIPS_OF_SERIALS = """
SELECT serial, group_id FROM device_group_members
WHERE serial >= :first AND serial <= :last
ORDER BY serial, group_id"""

LIVE_ACCESS_GROUPS = f"""
SELECT {", ".join(ACCESS_GROUP_COLUMNS)} FROM access_groups
WHERE device_serial = :serial AND deleted = FALSE
ORDER BY group_id"""

SYNC_SUMMARY = """
SELECT COALESCE(SUM(CASE WHEN deleted THEN 0 ELSE 1 END), 0),
    COALESCE(SUM(CASE WHEN deleted THEN 1 ELSE 0 END), 0), MAX(version), MAX(updated_at)
FROM access_groups WHERE device_serial = :serial"""

MARK_PROFILE_GROUPS_JOINED = """
UPDATE devices SET profile_groups_joined = TRUE
WHERE serial = :serial AND profile_groups_joined = FALSE
RETURNING serial"""

_ACCOUNTS = "tenant, id, email, name, first_name, last_name, created_at"
ACCOUNT_COLUMNS = tuple(_ACCOUNTS.split(", "))

UPSERT_ACCOUNT = f"""
INSERT INTO cloud_accounts ({_ACCOUNTS})
VALUES (:tenant, :id, :email, :name, :first_name, :last_name, :created_at)
ON CONFLICT (tenant, id) DO UPDATE SET
    email = excluded.email, name = excluded.name, first_name = excluded.first_name,
    last_name = excluded.last_name
RETURNING {_ACCOUNTS}"""

GET_ACCOUNT = f"SELECT {_ACCOUNTS} FROM cloud_accounts WHERE tenant = :tenant AND id = :id"

ACCOUNT_BY_EMAIL = f"""
SELECT {_ACCOUNTS} FROM cloud_accounts WHERE tenant = :tenant AND email = :email ORDER BY id LIMIT 1"""

_ROLES = "tenant, id, name, description, permissions, removable"

ENSURE_ROLE = f"""
INSERT INTO cloud_roles ({_ROLES}) VALUES (:tenant, :id, :name, :description, :permissions, :removable)
ON CONFLICT (tenant, id) DO NOTHING"""

GET_ROLE = f"SELECT {_ROLES} FROM cloud_roles WHERE tenant = :tenant AND id = :id"

LIST_ROLES = f"""
SELECT {_ROLES} FROM cloud_roles WHERE tenant = :tenant AND id > :after ORDER BY id LIMIT :limit"""

UPSERT_GROUP_USER = """
INSERT INTO group_users (group_id, tenant, user_id, role_id, added_at)
VALUES (:group_id, :tenant, :user_id, :role_id, :added_at)
ON CONFLICT (group_id, user_id) DO UPDATE SET role_id = excluded.role_id"""

USER_PERMISSIONS = """
SELECT r.permissions FROM group_users gu JOIN cloud_roles r ON r.tenant = gu.tenant AND r.id = gu.role_id
WHERE gu.group_id = :group_id AND gu.user_id = :user_id"""

_A_ACCOUNTS = ", ".join(f"a.{column}" for column in ACCOUNT_COLUMNS)
_R_ROLES = ", ".join(f"r.{column.strip()}" for column in _ROLES.split(","))

LIST_GROUP_USERS = f"""
SELECT {_A_ACCOUNTS}, {_R_ROLES}
FROM group_users gu
JOIN cloud_accounts a ON a.tenant = gu.tenant AND a.id = gu.user_id
JOIN cloud_roles r ON r.tenant = gu.tenant AND r.id = gu.role_id
WHERE gu.group_id = :group_id AND gu.user_id > :after
ORDER BY gu.user_id
LIMIT :limit"""

GET_GROUP_USER = f"""
SELECT {_A_ACCOUNTS}, {_R_ROLES}
FROM group_users gu
JOIN cloud_accounts a ON a.tenant = gu.tenant AND a.id = gu.user_id
JOIN cloud_roles r ON r.tenant = gu.tenant AND r.id = gu.role_id
WHERE gu.group_id = :group_id AND gu.user_id = :user_id"""

DELETE_GROUP_USER = (
    "DELETE FROM group_users WHERE group_id = :group_id AND user_id = :user_id RETURNING user_id"
)

LIST_USER_GROUPS = f"""
SELECT {_G_GROUPS} FROM group_users gu JOIN device_groups g ON g.id = gu.group_id
WHERE gu.tenant = :tenant AND gu.user_id = :user_id AND g.seq > :after_seq
ORDER BY g.seq
LIMIT :limit"""

_INVITATIONS = "id, group_id, email, role_id, invited_by, created_at, accepted"

UPSERT_INVITATION = f"""
INSERT INTO group_invitations ({_INVITATIONS}, tenant)
VALUES (:id, :group_id, :email, :role_id, :invited_by, :created_at, :accepted, :tenant)
ON CONFLICT (group_id, email) DO UPDATE SET
    role_id = excluded.role_id, invited_by = excluded.invited_by, created_at = excluded.created_at,
    accepted = excluded.accepted
RETURNING {_INVITATIONS}"""

COUNT_INVITATIONS = "SELECT COUNT(*) FROM group_invitations WHERE group_id = :group_id"

_KEYS = "group_id, type, name, token_sha256, created_at, created_by, updated_at, updated_by"

INSERT_API_KEY = f"""
INSERT INTO group_api_keys ({_KEYS})
VALUES (:group_id, :type, :name, :token_sha256, :created_at, :created_by, :updated_at, :updated_by)
ON CONFLICT (group_id, type) DO NOTHING
RETURNING {_KEYS}"""

UPDATE_API_KEY = f"""
UPDATE group_api_keys SET name = :name, token_sha256 = :token_sha256, updated_at = :updated_at,
    updated_by = :updated_by
WHERE group_id = :group_id AND type = :type
RETURNING {_KEYS}"""

GET_API_KEY = f"SELECT {_KEYS} FROM group_api_keys WHERE group_id = :group_id AND type = :type"

LIST_API_KEYS = f"SELECT {_KEYS} FROM group_api_keys WHERE group_id = :group_id ORDER BY type"

COUNT_API_KEYS = "SELECT COUNT(*) FROM group_api_keys WHERE group_id = :group_id"

DELETE_API_KEY = "DELETE FROM group_api_keys WHERE group_id = :group_id AND type = :type RETURNING type"

_SHARES = "group_id, account_id, shared_by, created_at"

INSERT_SHARE = f"""
INSERT INTO group_shares ({_SHARES}, tenant) VALUES (:group_id, :account_id, :shared_by, :created_at, :tenant)
ON CONFLICT (group_id, account_id) DO NOTHING
RETURNING {_SHARES}"""

DELETE_SHARE = "DELETE FROM group_shares WHERE group_id = :group_id AND account_id = :account_id"

LIST_SHARED_GROUPS = f"""
SELECT {_G_GROUPS} FROM group_shares s JOIN device_groups g ON g.id = s.group_id
WHERE s.tenant = :tenant AND s.account_id = :account_id AND g.seq > :after_seq
ORDER BY g.seq
LIMIT :limit"""


# --- building blocks shared by the cloud core and the profile join ----------------------------------


async def next_counter(tx: Transaction, name: str) -> int:
    """The next value (from 1) of a named store-wide counter; its row stays locked until commit."""
    (row,) = await tx.rows(NEXT_COUNTER, {"name": name})
    return int(row[0])


async def insert_group(tx: Transaction, values: Mapping[str, object], *, unique_name: bool) -> bool:
    """Insert a group row (every GROUP_COLUMNS value but seq, version and device_count); False if its id
    or its name in a unique scope is taken. `values` holds already encoded timestamps and JSON tags."""
    params = dict(values)
    params["seq"] = await next_counter(tx, GROUP_SEQ_COUNTER)
    params["device_count"] = 0
    params["version"] = 1
    params["unique_scope"] = params["scope"] if unique_name else None
    return bool(await tx.rows(INSERT_GROUP, params))


async def add_membership(
    tx: Transaction, group_id: str, serial: str, at: datetime, by: str
) -> MembershipOutcome:
    """Put a device in an existing group, counted against its capacity. On FULL the caller must abort
    the transaction (the member row is written before the count is checked)."""
    added = {
        "group_id": group_id,
        "serial": serial,
        "added_at": tx.dialect.encode_timestamp(at),
        "added_by": by,
    }
    if not await tx.rows(INSERT_MEMBER, added):
        return MembershipOutcome.ALREADY_MEMBER
    if not await tx.rows(COUNT_MEMBER_IN, {"group_id": group_id}):
        return MembershipOutcome.FULL
    return MembershipOutcome.ADDED


class _Abort(Exception):
    """Rolls a profile join back when a group named by the profile is full."""


class CloudOperations:
    """Store operations the sync path needs from the cloud tables, written once for both engines."""

    async def atomic(
        self,
        work: Callable[[Transaction], Awaitable[_T]],
        *,
        retry_unique_violation: bool = False,
        read_only: bool = False,
    ) -> _T:
        raise NotImplementedError

    async def join_profile_groups(
        self, serial: str, group_ids: Sequence[str], at: datetime
    ) -> dict[str, MembershipOutcome]:
        """Join a device (already in the store) to the device groups its profile names, once per device.

        Runs only the first time it is called for `serial` (an empty result afterwards). A group that does
        not exist yet is created in the native tenant with its id as name; a full group is left out
        (FULL in the result) while the others are joined.
        """
        return (await self.join_profile_groups_many([serial], group_ids, at))[serial]

    async def join_profile_groups_many(
        self, serials: Sequence[str], group_ids: Sequence[str], at: datetime
    ) -> dict[str, dict[str, MembershipOutcome]]:
        """`join_profile_groups` for many devices in one transaction (a fleet's devices share a profile):
        serial -> outcomes, every serial a key."""

        async def work(tx: Transaction) -> dict[str, dict[str, MembershipOutcome]]:
            return {serial: await _join_once(tx, serial, group_ids, at) for serial in dict.fromkeys(serials)}

        for _attempt in range(3):
            try:
                return await self.atomic(work, retry_unique_violation=True)
            except _Abort:
                continue
        who = serials[0] if len(serials) == 1 else f"{len(serials)} devices"
        raise StoreError(f"device groups of {who} kept filling up while joining them; retry later")


async def _join_once(
    tx: Transaction, serial: str, group_ids: Sequence[str], at: datetime
) -> dict[str, MembershipOutcome]:
    """One device's profile join inside `tx` (see CloudOperations.join_profile_groups); raises _Abort
    when a concurrent add filled a group meanwhile, so the whole transaction is tried again."""
    if not await tx.rows(MARK_PROFILE_GROUPS_JOINED, {"serial": serial}):
        return {}
    outcomes: dict[str, MembershipOutcome] = {}
    stamp = tx.dialect.encode_timestamp(at)
    for group_id in dict.fromkeys(group_ids):
        if not await tx.rows(GET_GROUP, {"id": group_id}):
            values = {
                "id": group_id,
                "tenant": PROFILE_TENANT,
                "scope": PROFILE_ACTOR,
                "name": group_id,
                "description": "created by a device profile",
                "parent_id": None,
                "status": 1,
                "sequence": 0,
                "max_devices": 0,
                "tags": json.dumps([]),
                "created_at": stamp,
                "created_by": PROFILE_ACTOR,
                "updated_at": stamp,
                "updated_by": PROFILE_ACTOR,
                "profile": PROFILE_TENANT,
            }
            await insert_group(tx, values, unique_name=False)
        # A full group keeps its count: check first, so a FULL outcome never needs a rollback.
        (row,) = await tx.rows(GET_GROUP, {"id": group_id})
        group = dict(zip(GROUP_COLUMNS, row, strict=True))
        member = await tx.rows(GET_MEMBER, {"group_id": group_id, "serial": serial})
        if not member and group["max_devices"] and group["device_count"] >= group["max_devices"]:
            outcomes[group_id] = MembershipOutcome.FULL
            continue
        outcomes[group_id] = await add_membership(tx, group_id, serial, at, PROFILE_ACTOR)
        if outcomes[group_id] is MembershipOutcome.FULL:  # a concurrent add filled it meanwhile
            raise _Abort
    return outcomes
