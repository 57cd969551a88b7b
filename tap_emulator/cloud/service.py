"""CloudService: the management service's operations over the store, the one place the domain rules run.

Each operation is one store transaction (SQLite BEGIN IMMEDIATE; PostgreSQL with retries on conflicts),
so a refused request writes nothing, and rules that two processes could race on are decided by the
database inside it: capacity by a guarded counter update, unique names by a unique index, parents by
taking the tenant's hierarchy row first. Ids and the clock are injected so tests can fix them.
Callers pass `tenant=None` only from the native API, which reaches every group by its store-wide id;
a seed face passes its Tenant, and a group of another tenant is then NotFound.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from tap_emulator.store import StoreError
from tap_emulator.store import cloud as sql
from tap_emulator.store.cloud import CloudStore, MembershipOutcome, Transaction

from .domain import (
    ADMIN_ROLE,
    MAX_PAGE_SIZE,
    MEMBER_ROLE,
    NATIVE,
    PERMISSIONS,
    PROFILES,
    AccessGroupView,
    Account,
    AlreadyShared,
    ApiKey,
    ApiKeyExists,
    CapacityExceeded,
    CycleRefused,
    Device,
    DeviceDetail,
    DeviceGroup,
    Forbidden,
    GroupChanges,
    GroupDraft,
    GroupQuotaExceeded,
    GroupUser,
    IdStyle,
    InvalidInput,
    Invitation,
    MaxBelowCurrentCount,
    Member,
    MembersStillExist,
    NameTaken,
    NotFound,
    Page,
    ParentNotFound,
    Permission,
    Role,
    SeedProfile,
    Share,
    ShareToSelf,
    SyncStatus,
    Tenant,
    Unset,
    check_changes,
    check_draft,
    check_text,
)

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_DEPTH", "MAX_GROUPS_PER_TENANT", "CloudService"]

DEFAULT_PAGE_SIZE = 100
MAX_DEPTH = 32  # the deepest chain of parents a group may sit in
MAX_GROUPS_PER_TENANT = 10_000
MAX_INVITATIONS_PER_GROUP = 1_000
MAX_API_KEYS_PER_GROUP = 32
TOKEN_MAX = 4096
_UPDATE_ATTEMPTS = 5  # a partial update re-reads the row when a concurrent one changed it first
_INTEGER_ID_COUNTER = "device_group_integer_id"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_CURSOR_MAX = 256
_KEY_MAX = 256  # longer than any stored id, email or name

_T = TypeVar("_T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _uuid() -> str:
    return str(uuid.uuid4())


def _storable(key: object) -> bool:
    """Whether a looked-up key could name anything stored: a bounded str both engines can bind (PostgreSQL
    refuses NUL, and no driver encodes a lone surrogate). Anything else matches nothing."""
    if not isinstance(key, str) or len(key) > _KEY_MAX or "\x00" in key:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_storable(field_name: str, key: str | None) -> None:
    if key is not None and not _storable(key):
        raise InvalidInput(field_name, "is not a valid value")


class _Stale(Exception):
    """The row changed between this transaction's read and its guarded update."""


# --- cursors and pages ----------------------------------------------------------------------------


def _encode_cursor(kind: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def _decode_cursor(kind: str, cursor: str | None) -> str | None:
    """The key a cursor of this list stopped at; InvalidInput for anything else."""
    if cursor is None or cursor == "":
        return None
    try:
        if len(cursor) > _CURSOR_MAX:
            raise ValueError
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "is not a cursor of this list") from None
    prefix, _, key = text.partition(":")
    if prefix != kind or not key:
        raise InvalidInput("cursor", "is not a cursor of this list")
    return key


def _seq_after(cursor: str | None) -> int:
    key = _decode_cursor("g", cursor)
    if key is None:
        return 0
    if not key.isdigit() or len(key) > 18:
        raise InvalidInput("cursor", "is not a cursor of this list")
    return int(key)


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput("limit", f"must be an integer in 1..{MAX_PAGE_SIZE}")
    return limit


def _page(items: list[_T], limit: int, key: Callable[[_T], str], kind: str) -> Page[_T]:
    """A page from up to limit + 1 rows: the extra row only says that another page follows."""
    if len(items) <= limit:
        return Page(tuple(items), None)
    kept = items[:limit]
    return Page(tuple(kept), _encode_cursor(kind, key(kept[-1])))


# --- rows -----------------------------------------------------------------------------------------


def _group(tx: Transaction, row: Sequence[Any]) -> DeviceGroup:
    value = dict(zip(sql.GROUP_COLUMNS, row, strict=True))
    return DeviceGroup(
        id=value["id"],
        tenant=value["tenant"],
        scope=value["scope"],
        name=value["name"],
        description=value["description"],
        parent_id=value["parent_id"],
        status=int(value["status"]),
        sequence=int(value["sequence"]),
        max_devices=int(value["max_devices"]),
        device_count=int(value["device_count"]),
        tags=tuple(json.loads(value["tags"])),
        created_at=tx.dialect.decode_timestamp(value["created_at"]),
        created_by=value["created_by"],
        updated_at=tx.dialect.decode_timestamp(value["updated_at"]),
        updated_by=value["updated_by"],
        version=int(value["version"]),
        profile=value["profile"],
    )


def _seq(row: Sequence[Any]) -> int:
    return int(row[sql.GROUP_COLUMNS.index("seq")])


def _device(tx: Transaction, row: Sequence[Any], group_ids: tuple[str, ...] = ()) -> Device:
    serial, model, firmware, last_seen = row
    return Device(serial, model, firmware, tx.dialect.decode_timestamp(last_seen), group_ids)


def _account(tx: Transaction, row: Sequence[Any]) -> Account:
    tenant, account_id, email, name, first_name, last_name, created_at = row
    return Account(
        account_id, tenant, email, name, first_name, last_name, tx.dialect.decode_timestamp(created_at)
    )


def _role(row: Sequence[Any]) -> Role:
    tenant, role_id, name, description, permissions, removable = row
    return Role(role_id, tenant, name, description, tuple(json.loads(permissions)), bool(removable))


def _api_key(tx: Transaction, row: Sequence[Any]) -> ApiKey:
    group_id, key_type, name, token_sha256, created_at, created_by, updated_at, updated_by = row
    return ApiKey(
        group_id=group_id,
        type=key_type,
        name=name,
        token_set=True,
        token_fingerprint=token_sha256[:8],
        created_at=tx.dialect.decode_timestamp(created_at),
        created_by=created_by,
        updated_at=tx.dialect.decode_timestamp(updated_at),
        updated_by=updated_by,
    )


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_BUILTIN_ROLES = (
    (ADMIN_ROLE, "administrator", "every right on the group", PERMISSIONS),
    (MEMBER_ROLE, "member", "reads the group, its devices and users", ("read",)),
)


def _check_owner(group: DeviceGroup, owner: str | None) -> None:
    """Another scope's group is not the owner's to change: NotFound, so its existence does not show."""
    if owner is not None and group.scope != owner:
        raise NotFound("device_group", group.id)


class CloudService:
    """The core of the management service. Every method raises a domain error (tap_emulator.cloud.domain)
    for a refused request and tap_emulator.store.StoreError when the store is unreachable."""

    def __init__(
        self,
        store: CloudStore,
        *,
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] = _uuid,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id

    async def _atomic(
        self, work: Callable[[Transaction], Awaitable[_T]], *, retry_unique: bool = False
    ) -> _T:
        return await self._store.atomic(work, retry_unique_violation=retry_unique)

    async def _read(self, work: Callable[[Transaction], Awaitable[_T]]) -> _T:
        return await self._store.atomic(work, read_only=True)

    def _now(self, tx: Transaction) -> tuple[datetime, object]:
        """The injected clock's time and its stored form."""
        now = self._clock()
        return now, tx.dialect.encode_timestamp(now)

    # --- shared steps inside a transaction --------------------------------------------------------

    @staticmethod
    async def _group_row(tx: Transaction, group_id: str, tenant: Tenant | None) -> tuple[Any, ...]:
        rows = await tx.rows(sql.GET_GROUP, {"id": group_id}) if _storable(group_id) else []
        if not rows or (tenant is not None and rows[0][sql.GROUP_COLUMNS.index("tenant")] != tenant.key):
            raise NotFound("device_group", str(group_id))
        return rows[0]

    @staticmethod
    async def _require(
        tx: Transaction, tenant: Tenant | None, group_id: str, actor: str | None, permission: Permission
    ) -> None:
        """Where the profile gives groups admins (IoTize), the actor's role there must grant `permission`."""
        if tenant is None or actor is None or not tenant.profile.group_admin_rights:
            return
        rows = await tx.rows(sql.USER_PERMISSIONS, {"group_id": group_id, "user_id": actor})
        if not rows or permission not in json.loads(rows[0][0]):
            raise Forbidden(permission.replace("_", " "), actor, group_id)

    @staticmethod
    async def _ensure_roles(tx: Transaction, tenant: str) -> None:
        for role_id, name, description, permissions in _BUILTIN_ROLES:
            params = {
                "tenant": tenant,
                "id": role_id,
                "name": name,
                "description": description,
                "permissions": json.dumps(list(permissions)),
                "removable": False,
            }
            await tx.rows(sql.ENSURE_ROLE, params)

    @staticmethod
    async def _device_row(tx: Transaction, serial: str) -> tuple[Any, ...]:
        rows = await tx.rows(sql.GET_DEVICE, {"serial": serial}) if _storable(serial) else []
        if not rows:
            raise NotFound("device", str(serial))
        return rows[0]

    @staticmethod
    async def _account_row(tx: Transaction, tenant: str, account_id: str) -> tuple[Any, ...]:
        rows = (
            await tx.rows(sql.GET_ACCOUNT, {"tenant": tenant, "id": account_id})
            if _storable(account_id)
            else []
        )
        if not rows:
            raise NotFound("account", account_id)
        return rows[0]

    @staticmethod
    async def _check_parent(tx: Transaction, tenant: Tenant, group_id: str, parent_id: str) -> None:
        """The parent exists in the tenant, is not the group or below it, and the chain stays bounded."""
        if parent_id == group_id:
            raise CycleRefused(group_id, parent_id)
        # Taking the tenant's hierarchy row serialises parent changes, so two moves cannot make a cycle
        # that neither saw.
        await sql.next_counter(tx, f"hierarchy:{tenant.key}")
        parent = await tx.rows(sql.GET_GROUP, {"id": parent_id})
        if not parent or parent[0][sql.GROUP_COLUMNS.index("tenant")] != tenant.key:
            raise ParentNotFound(parent_id)
        ancestors = [
            row[0] for row in await tx.rows(sql.ANCESTORS, {"parent_id": parent_id, "max_depth": MAX_DEPTH})
        ]
        if group_id in ancestors:
            raise CycleRefused(group_id, parent_id)
        (depth,) = (await tx.rows(sql.SUBTREE_DEPTH, {"id": group_id, "max_depth": MAX_DEPTH}))[0]
        if len(ancestors) + int(depth or 1) > MAX_DEPTH:
            raise InvalidInput("parent_id", f"device groups nest at most {MAX_DEPTH} deep")

    @staticmethod
    async def _name_free(tx: Transaction, tenant: Tenant, scope: str, name: str, group_id: str) -> None:
        if not tenant.profile.unique_names:
            return
        holder = await tx.rows(
            sql.NAME_HOLDER, {"tenant": tenant.key, "scope": scope, "name": name, "id": group_id}
        )
        if holder:
            raise NameTaken(name, scope)

    async def _memberships(self, tx: Transaction, serials: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The device groups of a sorted run of serials, in one range query."""
        if not serials:
            return {}
        found: dict[str, list[str]] = {serial: [] for serial in serials}
        for serial, group_id in await tx.rows(
            sql.MEMBERSHIPS_OF_SERIALS, {"first": serials[0], "last": serials[-1]}
        ):
            if serial in found:
                found[serial].append(group_id)
        return {serial: tuple(ids) for serial, ids in found.items()}

    async def _devices_page(self, tx: Transaction, rows: list[tuple[Any, ...]], limit: int) -> Page[Device]:
        groups = await self._memberships(tx, [row[0] for row in rows])
        devices = [_device(tx, row, groups.get(row[0], ())) for row in rows]
        return _page(devices, limit, lambda device: device.serial, "d")

    # --- device groups ---------------------------------------------------------------------------

    async def create_group(self, tenant: Tenant, scope: str, draft: GroupDraft, actor: str) -> DeviceGroup:
        """Create a group owned by `scope` (app, account or user id) in `tenant`.

        Raises InvalidInput (profile rules), ParentNotFound, NameTaken (profiles with unique names),
        NotFound("account") (APP-service scope, IoTize actor), GroupQuotaExceeded.
        With IoTize admin rights on, `actor` becomes the group's admin.
        """
        profile = tenant.profile
        check_draft(profile, draft)
        check_text("scope", scope, 128, single_line=True)
        opaque_id = self._new_id() if profile.id_style is not IdStyle.INTEGER else ""

        async def work(tx: Transaction) -> DeviceGroup:
            if profile.scope_is_account:
                await self._account_row(tx, tenant.key, scope)
            if profile.group_admin_rights:
                await self._account_row(tx, tenant.key, actor)
            (count,) = (await tx.rows(sql.COUNT_TENANT_GROUPS, {"tenant": tenant.key}))[0]
            if int(count) >= MAX_GROUPS_PER_TENANT:
                raise GroupQuotaExceeded(tenant.key, MAX_GROUPS_PER_TENANT)
            group_id = opaque_id or str(await sql.next_counter(tx, _INTEGER_ID_COUNTER))
            if draft.parent_id is not None:
                await self._check_parent(tx, tenant, group_id, draft.parent_id)
            await self._name_free(tx, tenant, scope, draft.name, group_id)
            _, stamp = self._now(tx)
            values = {
                "id": group_id,
                "tenant": tenant.key,
                "scope": scope,
                "name": draft.name,
                "description": draft.description,
                "parent_id": draft.parent_id,
                "status": draft.status,
                "sequence": draft.sequence,
                "max_devices": draft.max_devices,
                "tags": json.dumps(list(draft.tags)),
                "created_at": stamp,
                "created_by": actor,
                "updated_at": stamp,
                "updated_by": actor,
                "profile": profile.name,
            }
            if not await sql.insert_group(tx, values, unique_name=profile.unique_names):
                await self._name_free(tx, tenant, scope, draft.name, group_id)  # a concurrent create won
                raise InvalidInput("id", f"device group id {group_id} is already used")
            if profile.group_admin_rights:
                await self._ensure_roles(tx, tenant.key)
                user = {"group_id": group_id, "tenant": tenant.key, "user_id": actor, "role_id": ADMIN_ROLE}
                await tx.rows(sql.UPSERT_GROUP_USER, {**user, "added_at": stamp})
            return _group(tx, await self._group_row(tx, group_id, tenant))

        return await self._atomic(work, retry_unique=True)

    async def get_group(
        self, group_id: str, tenant: Tenant | None = None, *, actor: str | None = None
    ) -> DeviceGroup:
        """One group by id. Raises NotFound("device_group"); Forbidden (IoTize) if `actor` is given and
        has no role in the group."""

        async def work(tx: Transaction) -> DeviceGroup:
            row = await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "read")
            return _group(tx, row)

        return await self._read(work)

    async def update_group(
        self,
        group_id: str,
        changes: GroupChanges,
        actor: str,
        tenant: Tenant | None = None,
        *,
        owner: str | None = None,
    ) -> DeviceGroup:
        """Apply a partial update. Raises NotFound, InvalidInput, NameTaken, ParentNotFound, CycleRefused,
        MaxBelowCurrentCount, Forbidden (IoTize: only a group admin). With `owner` (APP-service: the
        account in the path), a group of another scope is NotFound, as if it did not exist."""

        async def work(tx: Transaction) -> DeviceGroup:
            current = _group(tx, await self._group_row(tx, group_id, tenant))
            _check_owner(current, owner)
            governing = tenant or Tenant(current.tenant, _profile_of(current))
            check_changes(governing.profile, changes)
            await self._require(tx, tenant, group_id, actor, "update")
            merged = _merge(current, changes)
            if merged.scope != current.scope and governing.profile.scope_is_account:
                await self._account_row(tx, governing.key, merged.scope)
            if merged.parent_id is not None and merged.parent_id != current.parent_id:
                await self._check_parent(tx, governing, group_id, merged.parent_id)
            if (merged.name, merged.scope) != (current.name, current.scope):
                await self._name_free(tx, governing, merged.scope, merged.name, group_id)
            if merged.max_devices and current.device_count > merged.max_devices:
                raise MaxBelowCurrentCount(group_id, merged.max_devices, current.device_count)
            _, stamp = self._now(tx)
            params = {
                "id": group_id,
                "version": current.version,
                "scope": merged.scope,
                "unique_scope": merged.scope if governing.profile.unique_names else None,
                "name": merged.name,
                "description": merged.description,
                "parent_id": merged.parent_id,
                "status": merged.status,
                "sequence": merged.sequence,
                "max_devices": merged.max_devices,
                "tags": json.dumps(list(merged.tags)),
                "updated_at": stamp,
                "updated_by": actor,
            }
            rows = await tx.rows(sql.UPDATE_GROUP, params)
            if rows:
                return _group(tx, rows[0])
            latest = _group(tx, await self._group_row(tx, group_id, tenant))
            if latest.version == current.version and merged.max_devices:
                raise MaxBelowCurrentCount(group_id, merged.max_devices, latest.device_count)
            raise _Stale

        for _attempt in range(_UPDATE_ATTEMPTS):
            try:
                return await self._atomic(work, retry_unique=True)
            except _Stale:
                continue
        raise StoreError(f"device group {group_id} kept changing during the update; retry later")

    async def delete_group(
        self, group_id: str, actor: str, tenant: Tenant | None = None, *, owner: str | None = None
    ) -> None:
        """Delete a group with its memberships, keys, shares and user relations. Raises NotFound,
        MembersStillExist (APP-service), Forbidden (IoTize); children move to the deleted group's parent.
        `owner` as for `update_group`."""

        async def work(tx: Transaction) -> None:
            current = _group(tx, await self._group_row(tx, group_id, tenant))
            _check_owner(current, owner)
            profile = tenant.profile if tenant is not None else _profile_of(current)
            await self._require(tx, tenant, group_id, actor, "delete")
            if profile.delete_requires_empty and current.device_count:
                raise MembersStillExist(group_id, current.device_count)
            _, stamp = self._now(tx)
            await sql.next_counter(tx, f"hierarchy:{current.tenant}")
            reparent = {
                "id": group_id,
                "new_parent_id": current.parent_id,
                "updated_at": stamp,
                "updated_by": actor,
            }
            await tx.rows(sql.REPARENT_CHILDREN, reparent)
            deleted = await tx.rows(
                sql.DELETE_GROUP, {"id": group_id, "require_empty": int(profile.delete_requires_empty)}
            )
            if not deleted:  # a device joined after the check above
                latest = _group(tx, await self._group_row(tx, group_id, tenant))
                raise MembersStillExist(group_id, latest.device_count)

        await self._atomic(work)

    async def list_groups(
        self,
        tenant: Tenant | None,
        scope: str | None = None,
        *,
        name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[DeviceGroup]:
        """Groups in creation order, optionally of one scope and with one exact name (keyset pages).
        Raises InvalidInput("limit"|"cursor"), NotFound("account") for an APP-service scope."""
        _check_limit(limit)
        _require_storable("scope", scope)
        _require_storable("name", name)
        params = {**_filter(tenant, scope, name), "after_seq": _seq_after(cursor), "limit": limit + 1}

        async def work(tx: Transaction) -> Page[DeviceGroup]:
            if tenant is not None and scope is not None and tenant.profile.scope_is_account:
                await self._account_row(tx, tenant.key, scope)
            rows = await tx.rows(sql.LIST_GROUPS, params)
            return _group_page(tx, rows, limit)

        return await self._read(work)

    async def count_groups(self, tenant: Tenant, scope: str | None = None, *, name: str | None = None) -> int:
        """How many groups `list_groups` would return in all (OceanConnect totalCount)."""
        _require_storable("scope", scope)
        _require_storable("name", name)

        async def work(tx: Transaction) -> int:
            (count,) = (await tx.rows(sql.COUNT_GROUPS, _filter(tenant, scope, name)))[0]
            return int(count)

        return await self._read(work)

    async def list_user_groups(
        self, tenant: Tenant, user_id: str, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[DeviceGroup]:
        """The groups a user has a role in (IoTize GET /user/groups)."""
        _check_limit(limit)
        _require_storable("user_id", user_id)
        params = {
            "tenant": tenant.key,
            "user_id": user_id,
            "after_seq": _seq_after(cursor),
            "limit": limit + 1,
        }

        async def work(tx: Transaction) -> Page[DeviceGroup]:
            return _group_page(tx, await tx.rows(sql.LIST_USER_GROUPS, params), limit)

        return await self._read(work)

    # --- membership and devices ----------------------------------------------------------------------

    async def add_member(
        self, group_id: str, serial: str, actor: str, tenant: Tenant | None = None
    ) -> Member:
        """Put a device in a group; idempotent (the existing membership comes back).
        Raises NotFound("device_group"|"device"), CapacityExceeded, Forbidden (IoTize)."""

        async def work(tx: Transaction) -> Member:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_devices")
            await self._device_row(tx, serial)
            now, _ = self._now(tx)
            outcome = await sql.add_membership(tx, group_id, serial, now, actor)
            if outcome is MembershipOutcome.FULL:
                group = _group(tx, await self._group_row(tx, group_id, tenant))
                raise CapacityExceeded(group_id, group.max_devices, group.device_count)
            (row,) = await tx.rows(sql.GET_MEMBER, {"group_id": group_id, "serial": serial})
            return Member(row[0], row[1], tx.dialect.decode_timestamp(row[2]), row[3])

        return await self._atomic(work)

    async def remove_member(
        self, group_id: str, serial: str, actor: str, tenant: Tenant | None = None
    ) -> None:
        """Take a device out of a group. Raises NotFound("device_group"|"member"), Forbidden (IoTize)."""

        async def work(tx: Transaction) -> None:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_devices")
            if not _storable(serial) or not await tx.rows(
                sql.DELETE_MEMBER, {"group_id": group_id, "serial": serial}
            ):
                raise NotFound("member", str(serial))
            await tx.rows(sql.COUNT_MEMBER_OUT, {"group_id": group_id})

        await self._atomic(work)

    async def list_members(
        self,
        group_id: str,
        tenant: Tenant | None = None,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        actor: str | None = None,
    ) -> Page[Device]:
        """The devices of a group by serial. Raises NotFound("device_group"), Forbidden (IoTize actor)."""
        _check_limit(limit)
        params = {"group_id": group_id, "after": _decode_cursor("d", cursor) or "", "limit": limit + 1}

        async def work(tx: Transaction) -> Page[Device]:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "read")
            return await self._devices_page(tx, await tx.rows(sql.LIST_MEMBERS, params), limit)

        return await self._read(work)

    async def list_devices(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Device]:
        """Every device the store knows (every device that synced), by serial."""
        _check_limit(limit)
        params = {"after": _decode_cursor("d", cursor) or "", "limit": limit + 1}

        async def work(tx: Transaction) -> Page[Device]:
            return await self._devices_page(tx, await tx.rows(sql.LIST_DEVICES_PAGE, params), limit)

        return await self._read(work)

    async def get_device(self, serial: str) -> DeviceDetail:
        """A device with its live access groups, public fields only. Raises NotFound("device")."""

        async def work(tx: Transaction) -> DeviceDetail:
            row = await self._device_row(tx, serial)
            groups = await self._memberships(tx, [serial])
            rows_of_groups = await tx.rows(sql.LIVE_ACCESS_GROUPS, {"serial": serial})
            access = [AccessGroupView.from_record(tx.dialect.group_from_row(row)) for row in rows_of_groups]
            return DeviceDetail(_device(tx, row, groups[serial]), tuple(access))

        return await self._read(work)

    async def sync_status(self, serial: str) -> SyncStatus:
        """What the store knows of a device's sync. Raises NotFound("device")."""

        async def work(tx: Transaction) -> SyncStatus:
            row = await self._device_row(tx, serial)
            live, tombstones, newest, last_change = (await tx.rows(sql.SYNC_SUMMARY, {"serial": serial}))[0]
            return SyncStatus(
                serial=serial,
                last_seen=tx.dialect.decode_timestamp(row[3]),
                access_groups=int(live),
                tombstones=int(tombstones),
                newest_version=None if newest is None else int(newest),
                last_change_at=None if last_change is None else tx.dialect.decode_timestamp(last_change),
            )

        return await self._read(work)

    # --- accounts, users and roles (IoTize; APP-service accounts) -----------------------------------

    async def ensure_account(self, tenant: str, account: Account) -> Account:
        """Insert or refresh a configured account (email and names); the face calls it at start."""
        check_text("id", account.id, 128, min_length=1, single_line=True)
        check_text("email", account.email, 254, single_line=True)
        for field_name in ("name", "first_name", "last_name"):
            check_text(field_name, getattr(account, field_name), 256, single_line=True)

        async def work(tx: Transaction) -> Account:
            _, stamp = self._now(tx)
            params = {
                "tenant": tenant,
                "id": account.id,
                "email": account.email,
                "name": account.name,
                "first_name": account.first_name,
                "last_name": account.last_name,
                "created_at": stamp,
            }
            return _account(tx, (await tx.rows(sql.UPSERT_ACCOUNT, params))[0])

        return await self._atomic(work)

    async def get_account(self, tenant: str, account_id: str) -> Account:
        """Raises NotFound("account")."""

        async def work(tx: Transaction) -> Account:
            return _account(tx, await self._account_row(tx, tenant, account_id))

        return await self._read(work)

    async def list_roles(
        self, tenant: Tenant, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Role]:
        """The tenant's roles by id; the built-in ADMIN_ROLE and MEMBER_ROLE always exist."""
        _check_limit(limit)
        params = {"tenant": tenant.key, "after": _decode_cursor("r", cursor) or "", "limit": limit + 1}

        async def work(tx: Transaction) -> Page[Role]:
            await self._ensure_roles(tx, tenant.key)
            roles = [_role(row) for row in await tx.rows(sql.LIST_ROLES, params)]
            return _page(roles, limit, lambda role: role.id, "r")

        return await self._atomic(work)

    async def list_group_users(
        self,
        group_id: str,
        tenant: Tenant,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        actor: str | None = None,
    ) -> Page[GroupUser]:
        """The users of a group with their roles, by user id. Raises NotFound("device_group"),
        Forbidden (IoTize actor without a role there)."""
        _check_limit(limit)
        params = {"group_id": group_id, "after": _decode_cursor("u", cursor) or "", "limit": limit + 1}

        async def work(tx: Transaction) -> Page[GroupUser]:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "read")
            users = [_group_user(tx, group_id, row) for row in await tx.rows(sql.LIST_GROUP_USERS, params)]
            return _page(users, limit, lambda user: user.account.id, "u")

        return await self._read(work)

    async def invite_user(
        self, group_id: str, email: str, role_id: str, actor: str, tenant: Tenant
    ) -> Invitation:
        """Invite an email with a role; an account of the tenant with that email joins at once.
        Raises NotFound("device_group"|"role"), InvalidInput("email"), Forbidden."""
        check_text("email", email, 254, min_length=3, single_line=True)
        if not _EMAIL.fullmatch(email):
            raise InvalidInput("email", "must be an email address")
        invitation_id = self._new_id()

        async def work(tx: Transaction) -> Invitation:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "invite")
            await self._ensure_roles(tx, tenant.key)
            if not _storable(role_id) or not await tx.rows(
                sql.GET_ROLE, {"tenant": tenant.key, "id": role_id}
            ):
                raise NotFound("role", role_id)
            (count,) = (await tx.rows(sql.COUNT_INVITATIONS, {"group_id": group_id}))[0]
            if int(count) >= MAX_INVITATIONS_PER_GROUP:
                raise InvalidInput("email", f"a group keeps at most {MAX_INVITATIONS_PER_GROUP} invitations")
            _, stamp = self._now(tx)
            account = await tx.rows(sql.ACCOUNT_BY_EMAIL, {"tenant": tenant.key, "email": email})
            if account:
                user = {
                    "group_id": group_id,
                    "tenant": tenant.key,
                    "user_id": account[0][1],
                    "role_id": role_id,
                }
                await tx.rows(sql.UPSERT_GROUP_USER, {**user, "added_at": stamp})
            params = {
                "id": invitation_id,
                "group_id": group_id,
                "email": email,
                "role_id": role_id,
                "invited_by": actor,
                "created_at": stamp,
                "accepted": bool(account),
                "tenant": tenant.key,
            }
            row = (await tx.rows(sql.UPSERT_INVITATION, params))[0]
            return Invitation(
                row[0], row[1], row[2], row[3], row[4], tx.dialect.decode_timestamp(row[5]), bool(row[6])
            )

        return await self._atomic(work, retry_unique=True)

    async def set_user_role(
        self, group_id: str, user_id: str, role_id: str, actor: str, tenant: Tenant
    ) -> GroupUser:
        """Add a user to a group or change its role. Raises NotFound("device_group"|"account"|"role"),
        Forbidden."""

        async def work(tx: Transaction) -> GroupUser:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_users")
            await self._account_row(tx, tenant.key, user_id)
            await self._ensure_roles(tx, tenant.key)
            if not _storable(role_id) or not await tx.rows(
                sql.GET_ROLE, {"tenant": tenant.key, "id": role_id}
            ):
                raise NotFound("role", role_id)
            _, stamp = self._now(tx)
            user = {"group_id": group_id, "tenant": tenant.key, "user_id": user_id, "role_id": role_id}
            await tx.rows(sql.UPSERT_GROUP_USER, {**user, "added_at": stamp})
            (row,) = await tx.rows(sql.GET_GROUP_USER, {"group_id": group_id, "user_id": user_id})
            return _group_user(tx, group_id, row)

        return await self._atomic(work, retry_unique=True)

    async def remove_user(self, group_id: str, user_id: str | None, actor: str, tenant: Tenant) -> None:
        """Remove a user from a group (None = the actor leaves, which needs no right).
        Raises NotFound("device_group"|"user"), Forbidden."""
        target = actor if user_id is None else user_id

        async def work(tx: Transaction) -> None:
            await self._group_row(tx, group_id, tenant)
            if target != actor:
                await self._require(tx, tenant, group_id, actor, "manage_users")
            deleted = _storable(target) and await tx.rows(
                sql.DELETE_GROUP_USER, {"group_id": group_id, "user_id": target}
            )
            if not deleted:
                raise NotFound("user", target)

        await self._atomic(work)

    # --- external API keys (IoTize) -----------------------------------------------------------------

    async def create_api_key(
        self, group_id: str, key_type: str, name: str, token: str, actor: str, tenant: Tenant
    ) -> ApiKey:
        """Attach an external key; one per (group, type). Raises ApiKeyExists, NotFound, InvalidInput,
        Forbidden."""
        _check_key_fields(key_type, name, token)

        async def work(tx: Transaction) -> ApiKey:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_keys")
            if await tx.rows(sql.GET_API_KEY, {"group_id": group_id, "type": key_type}):
                raise ApiKeyExists(group_id, key_type)
            (count,) = (await tx.rows(sql.COUNT_API_KEYS, {"group_id": group_id}))[0]
            if int(count) >= MAX_API_KEYS_PER_GROUP:
                raise InvalidInput("type", f"a group has at most {MAX_API_KEYS_PER_GROUP} API keys")
            _, stamp = self._now(tx)
            params = {
                "group_id": group_id,
                "type": key_type,
                "name": name,
                "token_sha256": _fingerprint(token),
                "created_at": stamp,
                "created_by": actor,
                "updated_at": stamp,
                "updated_by": actor,
            }
            rows = await tx.rows(sql.INSERT_API_KEY, params)
            if not rows:  # a concurrent create of the same type committed first
                raise ApiKeyExists(group_id, key_type)
            return _api_key(tx, rows[0])

        return await self._atomic(work, retry_unique=True)

    async def update_api_key(
        self,
        group_id: str,
        key_type: str,
        actor: str,
        tenant: Tenant,
        *,
        name: str | None = None,
        token: str | None = None,
    ) -> ApiKey:
        """Change a key's name or token. Raises NotFound("device_group"|"api_key"), Forbidden."""
        _check_key_fields(key_type, name, token)

        async def work(tx: Transaction) -> ApiKey:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_keys")
            rows = await tx.rows(sql.GET_API_KEY, {"group_id": group_id, "type": key_type})
            if not rows:
                raise NotFound("api_key", key_type)
            _, stamp = self._now(tx)
            params = {
                "group_id": group_id,
                "type": key_type,
                "name": rows[0][2] if name is None else name,
                "token_sha256": rows[0][3] if token is None else _fingerprint(token),
                "updated_at": stamp,
                "updated_by": actor,
            }
            return _api_key(tx, (await tx.rows(sql.UPDATE_API_KEY, params))[0])

        return await self._atomic(work)

    async def delete_api_key(self, group_id: str, key_type: str, actor: str, tenant: Tenant) -> None:
        """Raises NotFound("device_group"|"api_key"), Forbidden."""

        async def work(tx: Transaction) -> None:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_keys")
            if not await tx.rows(sql.DELETE_API_KEY, {"group_id": group_id, "type": key_type}):
                raise NotFound("api_key", str(key_type))

        await self._atomic(work)

    async def list_api_keys(
        self, group_id: str, tenant: Tenant, *, actor: str | None = None
    ) -> tuple[ApiKey, ...]:
        """A group's keys by type (at most MAX_API_KEYS_PER_GROUP). Raises NotFound, Forbidden."""

        async def work(tx: Transaction) -> tuple[ApiKey, ...]:
            await self._group_row(tx, group_id, tenant)
            await self._require(tx, tenant, group_id, actor, "manage_keys")
            return tuple(
                _api_key(tx, row) for row in await tx.rows(sql.LIST_API_KEYS, {"group_id": group_id})
            )

        return await self._read(work)

    # --- shares (APP-service) ----------------------------------------------------------------------

    async def share_groups(
        self, tenant: Tenant, account_id: str, group_ids: Sequence[str]
    ) -> tuple[Share, ...]:
        """Give `account_id` view rights on each group, shared by the group's owner; all or nothing.
        Raises NotFound("account"|"device_group"), ShareToSelf, AlreadyShared, InvalidInput (empty or
        more than MAX_PAGE_SIZE ids)."""
        _check_batch(group_ids)

        async def work(tx: Transaction) -> tuple[Share, ...]:
            await self._account_row(tx, tenant.key, account_id)
            _, stamp = self._now(tx)
            shares: list[Share] = []
            for group_id in group_ids:
                owner = _group(tx, await self._group_row(tx, group_id, tenant)).scope
                if owner == account_id:
                    raise ShareToSelf(group_id, account_id)
                params = {
                    "group_id": group_id,
                    "account_id": account_id,
                    "shared_by": owner,
                    "created_at": stamp,
                    "tenant": tenant.key,
                }
                rows = await tx.rows(sql.INSERT_SHARE, params)
                if not rows:
                    raise AlreadyShared(group_id, account_id)
                shares.append(
                    Share(rows[0][0], rows[0][1], rows[0][2], tx.dialect.decode_timestamp(rows[0][3]))
                )
            return tuple(shares)

        return await self._atomic(work, retry_unique=True)

    async def unshare_groups(self, tenant: Tenant, account_id: str, group_ids: Sequence[str]) -> None:
        """Take view rights back; a group not shared with the account is left as it is; all or nothing.
        Raises NotFound("account"|"device_group")."""
        _check_batch(group_ids)

        async def work(tx: Transaction) -> None:
            await self._account_row(tx, tenant.key, account_id)
            for group_id in group_ids:
                await self._group_row(tx, group_id, tenant)
                await tx.rows(sql.DELETE_SHARE, {"group_id": group_id, "account_id": account_id})

        await self._atomic(work)

    async def list_shared_groups(
        self, tenant: Tenant, account_id: str, *, limit: int = MAX_PAGE_SIZE, cursor: str | None = None
    ) -> Page[DeviceGroup]:
        """The groups shared with an account. Raises NotFound("account")."""
        _check_limit(limit)
        params = {
            "tenant": tenant.key,
            "account_id": account_id,
            "after_seq": _seq_after(cursor),
            "limit": limit + 1,
        }

        async def work(tx: Transaction) -> Page[DeviceGroup]:
            await self._account_row(tx, tenant.key, account_id)
            return _group_page(tx, await tx.rows(sql.LIST_SHARED_GROUPS, params), limit)

        return await self._read(work)


def _profile_of(group: DeviceGroup) -> SeedProfile:
    """The rules of the profile a group was made under (the native API edits groups of every tenant)."""
    return PROFILES.get(group.profile, NATIVE)


def _merge(current: DeviceGroup, changes: GroupChanges) -> DeviceGroup:
    """The group with the set fields of `changes` applied (owner_id sets the scope)."""

    def pick(change: _T | Unset, kept: _T) -> _T:
        return kept if isinstance(change, Unset) else change

    return replace(
        current,
        name=pick(changes.name, current.name),
        description=pick(changes.description, current.description),
        parent_id=pick(changes.parent_id, current.parent_id),
        status=pick(changes.status, current.status),
        sequence=pick(changes.sequence, current.sequence),
        max_devices=pick(changes.max_devices, current.max_devices),
        tags=tuple(pick(changes.tags, current.tags)),
        scope=pick(changes.owner_id, current.scope),
    )


def _filter(tenant: Tenant | None, scope: str | None, name: str | None) -> dict[str, object]:
    return {
        "any_tenant": int(tenant is None),
        "tenant": "" if tenant is None else tenant.key,
        "any_scope": int(scope is None),
        "scope": scope or "",
        "any_name": int(name is None),
        "name": name or "",
    }


def _group_page(tx: Transaction, rows: list[tuple[Any, ...]], limit: int) -> Page[DeviceGroup]:
    page = _page(rows, limit, lambda row: str(_seq(row)), "g")
    return Page(tuple(_group(tx, row) for row in page.items), page.next_cursor)


def _group_user(tx: Transaction, group_id: str, row: Sequence[Any]) -> GroupUser:
    width = len(sql.ACCOUNT_COLUMNS)
    return GroupUser(group_id, _account(tx, row[:width]), _role(row[width:]))


def _check_key_fields(key_type: str, name: str | None, token: str | None) -> None:
    check_text("type", key_type, 64, min_length=1, single_line=True)
    if name is not None:
        check_text("name", name, 256, single_line=True)
    if token is not None:
        check_text("token", token, TOKEN_MAX, min_length=1, single_line=True)


def _check_batch(group_ids: Sequence[str]) -> None:
    if isinstance(group_ids, str) or not 1 <= len(group_ids) <= MAX_PAGE_SIZE:
        raise InvalidInput("devgroups", f"must list 1 to {MAX_PAGE_SIZE} device group ids")
    for group_id in group_ids:
        check_text("devgroups", group_id, 64, min_length=1, single_line=True)
