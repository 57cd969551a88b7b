"""The management service's vocabulary: records, domain errors and the per-seed rule profiles, sans HTTP.

The HTTP faces (native `/api/v1` and the four seed clouds) only translate requests into these values and
these errors into each seed's own error vocabulary; every rule (names, uniqueness, capacity, cycles,
shares, rights) is decided here or in `service.CloudService`. There is one error class per distinct
seed error so that each face's mapping is a plain table.

Nothing here holds a secret: an external API key's token is kept only as a fingerprint, and a device's
access groups are shown by their public fields (never a password, hash or key).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar

from tap_emulator.store.records import GroupRecord

__all__ = [
    "ADMIN_ROLE",
    "APP_SERVICE",
    "IOTIZE",
    "MAX_PAGE_SIZE",
    "MEMBER_ROLE",
    "NATIVE",
    "OCEANCONNECT",
    "PERMISSIONS",
    "PROFILES",
    "ROMA",
    "UNSET",
    "AccessGroupView",
    "Account",
    "AlreadyShared",
    "ApiKey",
    "ApiKeyExists",
    "AppNotAuthorised",
    "CapacityExceeded",
    "CloudError",
    "CycleRefused",
    "Device",
    "DeviceDetail",
    "DeviceGroup",
    "Forbidden",
    "GroupChanges",
    "GroupDraft",
    "GroupQuotaExceeded",
    "GroupUser",
    "IdStyle",
    "InvalidInput",
    "Invitation",
    "MaxBelowCurrentCount",
    "Member",
    "MembersStillExist",
    "NameTaken",
    "NotFound",
    "NotFoundKind",
    "Page",
    "ParentNotFound",
    "ParentStyle",
    "Permission",
    "Role",
    "SeedProfile",
    "Share",
    "ShareToSelf",
    "SyncStatus",
    "Tenant",
    "UnknownApp",
    "Unset",
    "check_changes",
    "check_draft",
    "check_text",
    "parse_int",
    "parse_parent_id",
]

T = TypeVar("T")

MAX_PAGE_SIZE = 500  # the largest `limit` any list accepts (OceanConnect's pageSize maximum)


# --- errors -------------------------------------------------------------------------------------------


class CloudError(Exception):
    """Base of every refusal the core makes; `str(error)` is a short diagnostic safe to show a client."""


class InvalidInput(CloudError):
    """A field breaks the profile's rules (OceanConnect 50400, ROMA SCB.00000000, IoTize 400)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


NotFoundKind = Literal["device_group", "device", "account", "role", "member", "invitation", "api_key", "user"]


class NotFound(CloudError):
    """The named thing does not exist, or not in the caller's tenant (OceanConnect 100603, ROMA.00110006,
    APP-service INVALID_DEVICEGROUP_ID / INVALID_ACCOUNT_ID by `kind`)."""

    def __init__(self, kind: NotFoundKind, key: str) -> None:
        super().__init__(f"no such {kind.replace('_', ' ')}: {key}")
        self.kind: NotFoundKind = kind
        self.key = key


class ParentNotFound(NotFound):
    """A group names a parent that does not exist in its tenant (ROMA: a non-zero parent must exist)."""

    def __init__(self, key: str) -> None:
        super().__init__("device_group", key)
        self.args = (f"no such parent device group: {key}",)


class NameTaken(CloudError):
    """The name is already used in the uniqueness scope (OceanConnect 100602, SAME_DEVICEGROUP_NAME)."""

    def __init__(self, name: str, scope: str) -> None:
        super().__init__(f"device group name {name!r} is already used in {scope!r}")
        self.name = name
        self.scope = scope


class CapacityExceeded(CloudError):
    """Adding a device would pass the group's max devices (OceanConnect 100601)."""

    def __init__(self, group_id: str, max_devices: int, device_count: int) -> None:
        super().__init__(f"device group {group_id} is full ({device_count} of {max_devices} devices)")
        self.group_id = group_id
        self.max_devices = max_devices
        self.device_count = device_count


class MaxBelowCurrentCount(CapacityExceeded):
    """Lowering max devices below the current member count (OceanConnect 100601 on modify)."""

    def __init__(self, group_id: str, max_devices: int, device_count: int) -> None:
        super().__init__(group_id, max_devices, device_count)
        self.args = (f"max devices {max_devices} is below the {device_count} devices of group {group_id}",)


class CycleRefused(CloudError):
    """The new parent is the group itself or one of its descendants."""

    def __init__(self, group_id: str, parent_id: str) -> None:
        super().__init__(
            f"device group {parent_id} cannot be the parent of {group_id}: it would make a cycle"
        )
        self.group_id = group_id
        self.parent_id = parent_id


class MembersStillExist(CloudError):
    """Delete refused while devices remain in the group (DEVICES_STILL_EXIST_IN_THE_DEVICEGROUP)."""

    def __init__(self, group_id: str, device_count: int) -> None:
        super().__init__(f"device group {group_id} still has {device_count} devices")
        self.group_id = group_id
        self.device_count = device_count


class ShareToSelf(CloudError):
    """A group shared to the account that owns it (SHARE_TO_MYSELF)."""

    def __init__(self, group_id: str, account_id: str) -> None:
        super().__init__(f"device group {group_id} belongs to {account_id}: it cannot be shared to its owner")
        self.group_id = group_id
        self.account_id = account_id


class AlreadyShared(CloudError):
    """A group shared twice to the same account (SHARE_TO_SAME_ACCOUNT_ID)."""

    def __init__(self, group_id: str, account_id: str) -> None:
        super().__init__(f"device group {group_id} is already shared with {account_id}")
        self.group_id = group_id
        self.account_id = account_id


class ApiKeyExists(CloudError):
    """A group has at most one external API key per type (IoTize POST /group/apiKey twice)."""

    def __init__(self, group_id: str, key_type: str) -> None:
        super().__init__(f"device group {group_id} already has a {key_type!r} API key")
        self.group_id = group_id
        self.key_type = key_type


class Forbidden(CloudError):
    """The acting user lacks the permission (IoTize: only a group admin may update, invite, manage keys)."""

    def __init__(self, action: str, user_id: str, group_id: str) -> None:
        super().__init__(f"user {user_id} may not {action} device group {group_id}")
        self.action = action
        self.user_id = user_id
        self.group_id = group_id


class GroupQuotaExceeded(CloudError):
    """A tenant already holds the most device groups the store keeps for one tenant (OceanConnect 100607)."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant {tenant} already has the maximum of {limit} device groups")
        self.tenant = tenant
        self.limit = limit


class UnknownApp(CloudError):
    """An application id the tenant does not know (OceanConnect 100203). Raised by a face's auth layer,
    which holds the configured apps; defined here so every face shares one vocabulary."""

    def __init__(self, app_id: str) -> None:
        super().__init__(f"no such application: {app_id}")
        self.app_id = app_id


class AppNotAuthorised(CloudError):
    """An application acting on another one's groups without authorisation (OceanConnect 100217).
    Raised by a face's auth layer (see UnknownApp)."""

    def __init__(self, app_id: str, access_app_id: str) -> None:
        super().__init__(f"application {app_id} is not authorised to act for {access_app_id}")
        self.app_id = app_id
        self.access_app_id = access_app_id


# --- profiles -----------------------------------------------------------------------------------------


class IdStyle(enum.Enum):
    """How a profile's device-group ids look; every id is unique in the whole store."""

    OPAQUE = "opaque"  # an injected string id (IoTize, OceanConnect, native)
    UUID = "uuid"  # an injected UUID string (APP-service)
    INTEGER = "integer"  # decimal integers from 1, allocated by the store (ROMA)


class ParentStyle(enum.Enum):
    """Whether a profile's groups have parents, and how the face sends them."""

    NONE = "none"
    STRING = "string"  # a group id string; empty or absent = root (IoTize, native)
    ROMA_INTEGER = "roma-integer"  # a number rounded down, 0 = root, non-zero must exist (ROMA)


@dataclass(frozen=True)
class SeedProfile:
    """The rules one seed cloud applies to its device groups.

    Every limit has a bound even where the seed states none, so no client can grow a row without end.
    """

    name: str
    name_pattern: re.Pattern[str] | None  # full match required; None = any characters
    name_forbidden: frozenset[str]
    name_max: int  # the hard cap where the pattern does not bound the length
    description_max: int
    unique_names: bool  # names unique within (tenant, scope)
    id_style: IdStyle
    parent_style: ParentStyle
    delete_requires_empty: bool
    status_values: frozenset[int]
    group_admin_rights: bool  # only a group admin may update, invite or manage keys (IoTize)
    tags_max: int = 50
    tag_max: int = 128
    name_min: int = 1
    scope_is_account: bool = False  # the scope must be a known account of the tenant (APP-service)


NATIVE = SeedProfile(
    name="native",
    name_pattern=None,
    name_forbidden=frozenset(),
    name_max=128,
    description_max=1024,
    unique_names=False,
    id_style=IdStyle.OPAQUE,
    parent_style=ParentStyle.STRING,
    delete_requires_empty=False,
    status_values=frozenset({0, 1}),
    group_admin_rights=False,
)
IOTIZE = SeedProfile(
    name="iotize",
    name_min=0,
    name_pattern=None,
    name_forbidden=frozenset(),
    name_max=256,
    description_max=4096,
    unique_names=False,
    id_style=IdStyle.OPAQUE,
    parent_style=ParentStyle.STRING,
    delete_requires_empty=False,
    status_values=frozenset({0, 1}),
    group_admin_rights=True,
)
OCEANCONNECT = SeedProfile(
    name="oceanconnect",
    name_pattern=re.compile(r"[A-Za-z0-9]{1,50}"),
    name_forbidden=frozenset(),
    name_max=50,
    description_max=1024,
    unique_names=True,
    id_style=IdStyle.OPAQUE,
    parent_style=ParentStyle.NONE,
    delete_requires_empty=False,
    status_values=frozenset({0, 1}),
    group_admin_rights=False,
)
APP_SERVICE = SeedProfile(
    name="app-service",
    name_pattern=None,
    name_forbidden=frozenset("^@,&=*'\""),
    name_max=256,
    description_max=1024,
    unique_names=True,
    id_style=IdStyle.UUID,
    parent_style=ParentStyle.NONE,
    delete_requires_empty=True,
    status_values=frozenset({0, 1}),
    group_admin_rights=False,
    scope_is_account=True,
)
ROMA = SeedProfile(
    name="roma",
    name_pattern=re.compile(r"[A-Za-z0-9_-]{2,64}"),
    name_forbidden=frozenset(),
    name_max=64,
    description_max=200,
    unique_names=False,
    id_style=IdStyle.INTEGER,
    parent_style=ParentStyle.ROMA_INTEGER,
    delete_requires_empty=False,
    status_values=frozenset({0, 1}),
    group_admin_rights=False,
)
PROFILES: dict[str, SeedProfile] = {p.name: p for p in (NATIVE, IOTIZE, OCEANCONNECT, APP_SERVICE, ROMA)}


@dataclass(frozen=True)
class Tenant:
    """Who a group belongs to: a face's tenant key (e.g. "oceanconnect", "roma/proj-1/inst-1") and the
    profile whose rules apply. The face builds it from its configuration; the core stores only `key`."""

    key: str
    profile: SeedProfile


# --- records ------------------------------------------------------------------------------------------


class Unset(enum.Enum):
    """Marks a field of GroupChanges the caller leaves as it is."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset-paginated list; `next_cursor` is opaque, None on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class GroupDraft:
    """What a face supplies to create a device group; the profile's rules are checked by the service."""

    name: str
    description: str = ""
    parent_id: str | None = None  # None = root; see parse_parent_id for a seed's raw form
    status: int = 1
    sequence: int = 0
    max_devices: int = 0  # 0 = unlimited
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupChanges:
    """A partial update; UNSET fields stay as they are (parent_id None = move to the root)."""

    name: str | Unset = UNSET
    description: str | Unset = UNSET
    parent_id: str | Unset | None = UNSET
    status: int | Unset = UNSET
    sequence: int | Unset = UNSET
    max_devices: int | Unset = UNSET
    tags: tuple[str, ...] | Unset = UNSET
    owner_id: str | Unset = UNSET  # IoTize ownerId: the scope (owner) of the group


@dataclass(frozen=True)
class DeviceGroup:
    """A device group as stored: `scope` is its owner within the tenant (app, account or user id)."""

    id: str
    tenant: str
    scope: str
    name: str
    description: str
    parent_id: str | None
    status: int
    sequence: int
    max_devices: int
    device_count: int
    tags: tuple[str, ...]
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    version: int
    profile: str = "native"  # the name of the SeedProfile whose rules the group was made under


@dataclass(frozen=True)
class Member:
    """One device in one device group."""

    group_id: str
    serial: str
    added_at: datetime
    added_by: str


@dataclass(frozen=True)
class Device:
    """An emulated Tap as the cloud sees it, from the store the sync task fills."""

    serial: str
    model: str
    firmware: str
    last_seen: datetime
    group_ids: tuple[str, ...] = ()  # the device groups it is a member of


@dataclass(frozen=True)
class AccessGroupView:
    """A device's access group (object 1025 mirror), public fields only: never a password, hash or key."""

    group_id: int
    name: str
    alias: int
    session_lifetime: int
    is_profile: bool
    password_set: bool
    scram_salt: int | None
    scram_iteration: int | None
    version: int
    updated_at: datetime

    @classmethod
    def from_record(cls, record: GroupRecord) -> AccessGroupView:
        """The public part of a synced group record (the record itself holds no secret either)."""
        return cls(
            record.group_id,
            record.name,
            record.alias,
            record.session_lifetime,
            record.is_profile,
            record.password_set,
            record.scram_salt,
            record.scram_iteration,
            record.version,
            record.updated_at,
        )


@dataclass(frozen=True)
class DeviceDetail:
    """A device with its live access groups (tombstones left out)."""

    device: Device
    access_groups: tuple[AccessGroupView, ...]


@dataclass(frozen=True)
class SyncStatus:
    """What the store knows of a device's sync: when it was last seen, and its newest group change."""

    serial: str
    last_seen: datetime
    access_groups: int  # live groups
    tombstones: int
    newest_version: int | None
    last_change_at: datetime | None


@dataclass(frozen=True)
class Account:
    """A user or account of a tenant (IoTize PublicUser, APP-service account). Holds no credential."""

    id: str
    tenant: str
    email: str
    name: str
    first_name: str = ""
    last_name: str = ""
    created_at: datetime | None = None


Permission = Literal["read", "update", "delete", "invite", "manage_users", "manage_keys", "manage_devices"]
PERMISSIONS: tuple[Permission, ...] = (
    "read",
    "update",
    "delete",
    "invite",
    "manage_users",
    "manage_keys",
    "manage_devices",
)


@dataclass(frozen=True)
class Role:
    """A named set of permissions in a tenant; the built-in ones are not removable."""

    id: str
    tenant: str
    name: str
    description: str
    permissions: tuple[Permission, ...]
    removable: bool


ADMIN_ROLE = "admin"  # the id of every tenant's built-in administrator role (all permissions)
MEMBER_ROLE = "member"  # the id of the built-in default role (read only)


@dataclass(frozen=True)
class GroupUser:
    """A user's relation to a device group, with the role it holds there."""

    group_id: str
    account: Account
    role: Role


@dataclass(frozen=True)
class Invitation:
    """An invitation of an email to a group with a role; `accepted` once the email's account joined."""

    id: str
    group_id: str
    email: str
    role_id: str
    invited_by: str
    created_at: datetime
    accepted: bool


@dataclass(frozen=True)
class ApiKey:
    """An external API key (e.g. sigfox) of a group, one per type. The token itself is never returned:
    only whether one is set and a short fingerprint (SHA-256 prefix) to tell two tokens apart."""

    group_id: str
    type: str
    name: str
    token_set: bool
    token_fingerprint: str
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class Share:
    """View rights on a group given by its owner (`shared_by`) to another account."""

    group_id: str
    account_id: str
    shared_by: str
    created_at: datetime


# --- rules (pure) -------------------------------------------------------------------------------------


_INT64_MAX = 2**63 - 1
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,18}")
ROMA_PARENT_MAX = 99_999_999_999_999_999  # the seed's largest parent_id
MAX_DEVICES_LIMIT = 1_000_000_000  # a bound on max devices, far above any seed's example
ID_MAX = 64  # the longest device-group id the store holds


def parse_int(
    field_name: str, raw: object, *, minimum: int | None = None, numeric_string: bool = False
) -> int:
    """An integer field from JSON: a bool is refused; a decimal string only where the seed sends one."""
    value: int
    if isinstance(raw, bool):
        raise InvalidInput(field_name, "must be an integer, not a boolean")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and numeric_string and _INTEGER_TEXT.fullmatch(raw.strip()):
        value = int(raw.strip())
    else:
        raise InvalidInput(field_name, "must be an integer")
    if not -_INT64_MAX <= value <= _INT64_MAX:
        raise InvalidInput(field_name, "is out of range")
    if minimum is not None and value < minimum:
        raise InvalidInput(field_name, f"must be at least {minimum}")
    return value


def parse_parent_id(profile: SeedProfile, raw: object) -> str | None:
    """A seed's raw parent into a group id or None (root): ROMA rounds a number down and 0 is the root."""
    if profile.parent_style is ParentStyle.NONE:
        if raw is None:
            return None
        raise InvalidInput("parent_id", f"{profile.name} device groups have no parent")
    if profile.parent_style is ParentStyle.STRING:
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str):
            raise InvalidInput("parent_id", "must be a device group id string")
        check_text("parent_id", raw, ID_MAX, single_line=True)
        return raw
    if raw is None:
        raise InvalidInput("parent_id", "is required (0 for the root)")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise InvalidInput("parent_id", "must be a number")
    parent = math.floor(raw)
    if not 0 <= parent <= ROMA_PARENT_MAX:
        raise InvalidInput("parent_id", f"must be in 0..{ROMA_PARENT_MAX}")
    return None if parent == 0 else str(parent)


def check_text(
    field_name: str, value: object, max_length: int, *, min_length: int = 0, single_line: bool
) -> str:
    """A text field both engines can store: a str of bounded length, valid UTF-8, no NUL, and no control
    character at all where it must be a single line (names, ids)."""
    if not isinstance(value, str):
        raise InvalidInput(field_name, "must be a string")
    if not min_length <= len(value) <= max_length:
        if min_length:
            raise InvalidInput(field_name, f"must be {min_length} to {max_length} characters")
        raise InvalidInput(field_name, f"must be at most {max_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field_name, "is not valid Unicode text") from None
    allowed = "" if single_line else "\t\n\r"
    if any((ord(char) < 32 and char not in allowed) or ord(char) == 127 for char in value):
        raise InvalidInput(field_name, "must not contain control characters")
    return value


def _check_name(profile: SeedProfile, name: object) -> None:
    check_text("name", name, profile.name_max, min_length=profile.name_min, single_line=True)
    assert isinstance(name, str)
    if profile.name_pattern is not None and not profile.name_pattern.fullmatch(name):
        raise InvalidInput("name", f"must match {profile.name_pattern.pattern}")
    forbidden = sorted(set(name) & profile.name_forbidden)
    if forbidden:
        raise InvalidInput("name", f"must not contain {' '.join(forbidden)}")


def _check_fields(
    profile: SeedProfile,
    *,
    name: object | Unset = UNSET,
    description: object | Unset = UNSET,
    status: object | Unset = UNSET,
    sequence: object | Unset = UNSET,
    max_devices: object | Unset = UNSET,
    tags: object | Unset = UNSET,
) -> None:
    if name is not UNSET:
        _check_name(profile, name)
    if description is not UNSET:
        check_text("description", description, profile.description_max, single_line=False)
    if status is not UNSET and (
        isinstance(status, bool) or not isinstance(status, int) or status not in profile.status_values
    ):
        raise InvalidInput("status", f"must be one of {', '.join(map(str, sorted(profile.status_values)))}")
    if sequence is not UNSET:
        parse_int("sequence", sequence)
    if max_devices is not UNSET:
        value = parse_int("max_devices", max_devices, minimum=0)
        if value > MAX_DEVICES_LIMIT:
            raise InvalidInput("max_devices", f"must be at most {MAX_DEVICES_LIMIT}")
    if tags is not UNSET:
        if not isinstance(tags, tuple | list) or len(tags) > profile.tags_max:
            raise InvalidInput("tags", f"must be a list of at most {profile.tags_max} strings")
        for tag in tags:
            check_text("tags", tag, profile.tag_max, single_line=True)


def _check_parent_field(profile: SeedProfile, parent_id: object) -> None:
    if parent_id is None:
        return
    if profile.parent_style is ParentStyle.NONE:
        raise InvalidInput("parent_id", f"{profile.name} device groups have no parent")
    check_text("parent_id", parent_id, ID_MAX, min_length=1, single_line=True)


def check_draft(profile: SeedProfile, draft: GroupDraft) -> None:
    """Raise InvalidInput if the draft breaks the profile's field rules (existence checks come later)."""
    _check_fields(
        profile,
        name=draft.name,
        description=draft.description,
        status=draft.status,
        sequence=draft.sequence,
        max_devices=draft.max_devices,
        tags=draft.tags,
    )
    _check_parent_field(profile, draft.parent_id)


def check_changes(profile: SeedProfile, changes: GroupChanges) -> None:
    """Raise InvalidInput if a set field of the changes breaks the profile's field rules."""
    _check_fields(
        profile,
        name=changes.name,
        description=changes.description,
        status=changes.status,
        sequence=changes.sequence,
        max_devices=changes.max_devices,
        tags=changes.tags,
    )
    if changes.parent_id is not UNSET:
        _check_parent_field(profile, changes.parent_id)
    if changes.owner_id is not UNSET:
        check_text("owner_id", changes.owner_id, 128, min_length=1, single_line=True)
