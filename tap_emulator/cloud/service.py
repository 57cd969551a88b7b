"""CloudService: the management service's operations over the store, the one place the domain rules run.

Each operation is one store transaction (SQLite BEGIN IMMEDIATE; PostgreSQL with retries on conflicts),
so a refused request writes nothing, and rules that two processes could race on (capacity, unique names,
parents) are decided inside it. Ids and the clock are injected so tests can fix them.
Callers pass `tenant=None` only from the native API, which reaches every group by its store-wide id;
a seed face passes its Tenant, and a group of another tenant is then NotFound.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from tap_emulator.store.cloud import CloudStore

from .domain import (
    MAX_PAGE_SIZE,
    Account,
    ApiKey,
    Device,
    DeviceDetail,
    DeviceGroup,
    GroupChanges,
    GroupDraft,
    GroupUser,
    Invitation,
    Member,
    Page,
    Role,
    Share,
    SyncStatus,
    Tenant,
)

__all__ = ["DEFAULT_PAGE_SIZE", "CloudService"]

DEFAULT_PAGE_SIZE = 100


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _uuid() -> str:
    return str(uuid.uuid4())


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

    # --- device groups ---------------------------------------------------------------------------

    async def create_group(self, tenant: Tenant, scope: str, draft: GroupDraft, actor: str) -> DeviceGroup:
        """Create a group owned by `scope` (app, account or user id) in `tenant`.

        Raises InvalidInput (profile rules), ParentNotFound, NameTaken (profiles with unique names).
        With IoTize admin rights on, `actor` becomes the group's admin.
        """
        raise NotImplementedError

    async def get_group(self, group_id: str, tenant: Tenant | None = None) -> DeviceGroup:
        """One group by id. Raises NotFound("device_group")."""
        raise NotImplementedError

    async def update_group(
        self, group_id: str, changes: GroupChanges, actor: str, tenant: Tenant | None = None
    ) -> DeviceGroup:
        """Apply a partial update. Raises NotFound, InvalidInput, NameTaken, ParentNotFound, CycleRefused,
        MaxBelowCurrentCount, Forbidden (IoTize: only a group admin)."""
        raise NotImplementedError

    async def delete_group(self, group_id: str, actor: str, tenant: Tenant | None = None) -> None:
        """Delete a group with its memberships, keys, shares and user relations. Raises NotFound,
        MembersStillExist (APP-service), Forbidden (IoTize); children move to the deleted group's parent."""
        raise NotImplementedError

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
        Raises InvalidInput("limit"|"cursor")."""
        raise NotImplementedError

    async def count_groups(self, tenant: Tenant, scope: str | None = None, *, name: str | None = None) -> int:
        """How many groups `list_groups` would return in all (OceanConnect totalCount)."""
        raise NotImplementedError

    async def list_user_groups(
        self, tenant: Tenant, user_id: str, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[DeviceGroup]:
        """The groups a user has a role in (IoTize GET /user/groups)."""
        raise NotImplementedError

    # --- membership and devices ----------------------------------------------------------------------

    async def add_member(
        self, group_id: str, serial: str, actor: str, tenant: Tenant | None = None
    ) -> Member:
        """Put a device in a group; idempotent (the existing membership comes back).
        Raises NotFound("device_group"|"device"), CapacityExceeded, Forbidden (IoTize)."""
        raise NotImplementedError

    async def remove_member(
        self, group_id: str, serial: str, actor: str, tenant: Tenant | None = None
    ) -> None:
        """Take a device out of a group. Raises NotFound("device_group"|"member"), Forbidden (IoTize)."""
        raise NotImplementedError

    async def list_members(
        self,
        group_id: str,
        tenant: Tenant | None = None,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Device]:
        """The devices of a group by serial. Raises NotFound("device_group")."""
        raise NotImplementedError

    async def list_devices(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Device]:
        """Every device the store knows (every device that synced), by serial."""
        raise NotImplementedError

    async def get_device(self, serial: str) -> DeviceDetail:
        """A device with its live access groups, public fields only. Raises NotFound("device")."""
        raise NotImplementedError

    async def sync_status(self, serial: str) -> SyncStatus:
        """What the store knows of a device's sync. Raises NotFound("device")."""
        raise NotImplementedError

    # --- accounts, users and roles (IoTize; APP-service accounts) -----------------------------------

    async def ensure_account(self, tenant: str, account: Account) -> Account:
        """Insert or refresh a configured account (email and names); the face calls it at start."""
        raise NotImplementedError

    async def get_account(self, tenant: str, account_id: str) -> Account:
        """Raises NotFound("account")."""
        raise NotImplementedError

    async def list_roles(
        self, tenant: Tenant, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Role]:
        """The tenant's roles by id; the built-in ADMIN_ROLE and MEMBER_ROLE always exist."""
        raise NotImplementedError

    async def list_group_users(
        self,
        group_id: str,
        tenant: Tenant,
        *,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[GroupUser]:
        """The users of a group with their roles, by user id. Raises NotFound("device_group")."""
        raise NotImplementedError

    async def invite_user(
        self, group_id: str, email: str, role_id: str, actor: str, tenant: Tenant
    ) -> Invitation:
        """Invite an email with a role; an account of the tenant with that email joins at once.
        Raises NotFound("device_group"|"role"), InvalidInput("email"), Forbidden."""
        raise NotImplementedError

    async def set_user_role(
        self, group_id: str, user_id: str, role_id: str, actor: str, tenant: Tenant
    ) -> GroupUser:
        """Add a user to a group or change its role. Raises NotFound("device_group"|"account"|"role"),
        Forbidden."""
        raise NotImplementedError

    async def remove_user(self, group_id: str, user_id: str | None, actor: str, tenant: Tenant) -> None:
        """Remove a user from a group (None = the actor leaves, which needs no right).
        Raises NotFound("device_group"|"user"), Forbidden."""
        raise NotImplementedError

    # --- external API keys (IoTize) -----------------------------------------------------------------

    async def create_api_key(
        self, group_id: str, key_type: str, name: str, token: str, actor: str, tenant: Tenant
    ) -> ApiKey:
        """Attach an external key; one per (group, type). Raises ApiKeyExists, NotFound, InvalidInput,
        Forbidden."""
        raise NotImplementedError

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
        raise NotImplementedError

    async def delete_api_key(self, group_id: str, key_type: str, actor: str, tenant: Tenant) -> None:
        """Raises NotFound("device_group"|"api_key"), Forbidden."""
        raise NotImplementedError

    async def list_api_keys(self, group_id: str, tenant: Tenant) -> tuple[ApiKey, ...]:
        """A group's keys by type (at most one per type, so never long)."""
        raise NotImplementedError

    # --- shares (APP-service) ----------------------------------------------------------------------

    async def share_groups(
        self, tenant: Tenant, account_id: str, group_ids: Sequence[str]
    ) -> tuple[Share, ...]:
        """Give `account_id` view rights on each group, shared by the group's owner; all or nothing.
        Raises NotFound("account"|"device_group"), ShareToSelf, AlreadyShared, InvalidInput (empty or
        more than MAX_PAGE_SIZE ids)."""
        raise NotImplementedError

    async def unshare_groups(self, tenant: Tenant, account_id: str, group_ids: Sequence[str]) -> None:
        """Take view rights back; a group not shared with the account is left as it is; all or nothing.
        Raises NotFound("account"|"device_group")."""
        raise NotImplementedError

    async def list_shared_groups(
        self, tenant: Tenant, account_id: str, *, limit: int = MAX_PAGE_SIZE, cursor: str | None = None
    ) -> Page[DeviceGroup]:
        """The groups shared with an account. Raises NotFound("account")."""
        raise NotImplementedError
