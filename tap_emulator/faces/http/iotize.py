"""The IoTize cloud face: the group API of the IoTize cloud (seed 001) at its own paths.

``Authorization: <accessToken>`` names a configured user; lists take ``limit`` and an opaque
``nextToken`` (exclusive start; the last page carries none) and answer ``*Connection {items,
nextToken}``. Every error is 400 ``{message}``, the only error the seed documents, credentials
included. Only a group's admin may update it, invite, or manage its keys; the core decides that.
Choices where the seed is silent: ``GET /group`` answers an array holding the group (the seed's
inline ``[Group]``); ``POST /group/user`` adds a user with a role and ``PUT`` changes it (both set
the relation); an API key's token is never returned.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, StrictStr

from tap_emulator.cloud import (
    ADMIN_ROLE,
    IOTIZE,
    MEMBER_ROLE,
    UNSET,
    Account,
    ApiKey,
    CloudService,
    DeviceGroup,
    GroupChanges,
    GroupDraft,
    Role,
    Tenant,
)
from tap_emulator.cloud import Device as DeviceRecord

from .app import CloudContext
from .cloud_config import CloudConfig, IotizeUser
from .common import CURSOR_MAX, ID_MAX, is_cloud_error, iso_date, json_response
from .routing import FaceError, Failure, FailureKind, face_route_class

__all__ = ["PATH_PREFIXES", "TENANT", "account_of", "render", "router", "seed_accounts"]

TENANT = Tenant("iotize", IOTIZE)
_UNAUTHORIZED = "Unauthorized: the Authorization header must hold a valid access token"


def account_of(user: IotizeUser) -> Account:
    """The core's account of a configured user; its id is the email (unique in the configuration)."""
    return Account(id=user.email, tenant=TENANT.key, email=user.email, name=user.name)


async def seed_accounts(service: CloudService, config: CloudConfig) -> None:
    for user in config.iotize_users:
        await service.ensure_account(TENANT.key, account_of(user))


PATH_PREFIXES = ("/user/", "/group")  # paths this face answers, even where no route matches


def render(request: Request, failure: Failure) -> Response:
    if failure.kind is FailureKind.INTERNAL:
        return JSONResponse({"message": "Internal server error"}, status_code=500)
    return JSONResponse({"message": failure.message}, status_code=400)


class GenericReturn(BaseModel):
    message: str


class GenericReturnBoolean(BaseModel):
    message: str
    value: bool


class RoleOut(BaseModel):
    id: str
    name: str
    description: str
    permissions: list[str]
    removable: bool


class GroupOut(BaseModel):
    id: str
    userId: str
    name: str
    description: str
    administratorRole: str
    defaultRole: str
    createdAt: str | None
    updatedAt: str | None
    createdBy: str
    updatedBy: str
    parent: str | None
    ownerId: str
    numberOfDevices: int
    numberOfNotifications: int
    numberOfConnectors: int


class GroupConnection(BaseModel):
    items: list[GroupOut]
    nextToken: str | None = None


class DeviceOut(BaseModel):
    deviceId: str
    groupId: str
    name: str
    type: str
    network: str
    originalId: str
    seenAt: int | None
    createdAt: str | None
    updatedAt: str | None
    createdBy: str
    updatedBy: str
    information: str
    tags: list[str]


class DeviceConnection(BaseModel):
    items: list[DeviceOut]
    nextToken: str | None = None


class RoleConnection(BaseModel):
    items: list[RoleOut]
    nextToken: str | None = None


class PublicUser(BaseModel):
    id: str
    email: str
    name: str
    firstName: str
    lastName: str
    createdAt: str | None
    role: RoleOut


class UserConnection(BaseModel):
    items: list[PublicUser]
    nextToken: str | None = None


class GroupUserRelation(BaseModel):
    id: str
    userId: str
    role: RoleOut
    name: str
    description: str


class ExternalApiKeyOut(BaseModel):
    groupId: str
    name: str
    type: str
    createdBy: str
    updatedBy: str
    createdAt: str | None
    updatedAt: str | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GroupInput(_Body):
    name: StrictStr | None = None
    description: StrictStr | None = None
    tags: list[StrictStr] | None = None


class GroupUpdate(_Body):
    groupId: StrictStr
    ownerId: StrictStr | None = None
    name: StrictStr | None = None
    roleId: StrictStr | None = None
    description: StrictStr | None = None
    parent: StrictStr | None = None
    tags: list[StrictStr] | None = None


class ApiKeyCreate(_Body):
    groupId: StrictStr
    type: StrictStr
    token: StrictStr
    name: StrictStr


class ApiKeyUpdate(_Body):
    groupId: StrictStr
    type: StrictStr
    token: StrictStr | None = None
    name: StrictStr | None = None


class Invite(_Body):
    email: StrictStr
    groupId: StrictStr
    roleId: StrictStr


class UserRole(_Body):
    userId: StrictStr
    groupId: StrictStr
    roleId: StrictStr


def _role(role: Role) -> RoleOut:
    return RoleOut(
        id=role.id,
        name=role.name,
        description=role.description,
        permissions=list(role.permissions),
        removable=role.removable,
    )


def _group(group: DeviceGroup) -> GroupOut:
    return GroupOut(
        id=group.id,
        userId=group.scope,
        name=group.name,
        description=group.description,
        administratorRole=ADMIN_ROLE,
        defaultRole=MEMBER_ROLE,
        createdAt=iso_date(group.created_at),
        updatedAt=iso_date(group.updated_at),
        createdBy=group.created_by,
        updatedBy=group.updated_by,
        parent=group.parent_id,
        ownerId=group.scope,
        numberOfDevices=group.device_count,
        numberOfNotifications=0,
        numberOfConnectors=0,
    )


def _device(device: DeviceRecord, group_id: str) -> DeviceOut:
    return DeviceOut(
        deviceId=device.serial,
        groupId=group_id,
        name=device.serial,
        type=device.model,
        network="tap",
        originalId=device.serial,
        seenAt=int(device.last_seen.timestamp() * 1000),
        createdAt=iso_date(device.last_seen),
        updatedAt=iso_date(device.last_seen),
        createdBy="sync",
        updatedBy="sync",
        information=f"firmware {device.firmware}",
        tags=[],
    )


def _api_key(key: ApiKey) -> ExternalApiKeyOut:
    return ExternalApiKeyOut(
        groupId=key.group_id,
        name=key.name,
        type=key.type,
        createdBy=key.created_by,
        updatedBy=key.updated_by,
        createdAt=iso_date(key.created_at),
        updatedAt=iso_date(key.updated_at),
    )


def _page_token(next_cursor: str | None) -> dict[str, str]:
    """The last page carries no nextToken at all (dumped with exclude_unset)."""
    return {} if next_cursor is None else {"nextToken": next_cursor}


_ERRORS: dict[int | str, dict[str, object]] = {400: {"model": GenericReturn, "description": "Bad request"}}
_token_header = APIKeyHeader(name="Authorization", auto_error=False, description="the access token itself")

Limit = Annotated[int, Query(ge=1, le=500)]
NextToken = Annotated[str | None, Query(max_length=CURSOR_MAX)]
GroupIdQuery = Annotated[str, Query(min_length=1, max_length=ID_MAX)]


def router(context: CloudContext) -> APIRouter:
    service = context.service
    config = context.config

    async def current_user(token: Annotated[str | None, Security(_token_header)]) -> IotizeUser:
        user = config.iotize_user(token)
        if user is None:
            raise FaceError("unauthorized", _UNAUTHORIZED)
        return user

    User = Annotated[IotizeUser, Depends(current_user)]
    api = APIRouter(tags=["iotize"], route_class=face_route_class(render, is_cloud_error), responses=_ERRORS)

    @api.get("/user/groups", response_model=GroupConnection, response_model_exclude_unset=True)
    async def user_groups(user: User, limit: Limit = 100, nextToken: NextToken = None) -> Response:
        page = await service.list_user_groups(TENANT, user.email, limit=limit, cursor=nextToken)
        items = [_group(g) for g in page.items]
        return json_response(
            GroupConnection(items=items, **_page_token(page.next_cursor)), exclude_unset=True
        )

    @api.get("/group", response_model=list[GroupOut])
    async def get_group(user: User, groupId: GroupIdQuery) -> list[GroupOut]:
        return [_group(await service.get_group(groupId, TENANT, actor=user.email))]

    @api.post("/group", response_model=GroupOut)
    async def create_group(
        user: User,
        body: GroupInput,
        parentId: Annotated[str | None, Query(max_length=ID_MAX)] = None,
    ) -> GroupOut:
        draft = GroupDraft(
            name=body.name or "",
            description=body.description or "",
            parent_id=parentId or None,
            tags=tuple(body.tags or ()),
        )
        return _group(await service.create_group(TENANT, user.email, draft, user.email))

    @api.put("/group", response_model=GroupOut)
    async def update_group(user: User, body: GroupUpdate) -> GroupOut:
        changes = GroupChanges(
            name=UNSET if body.name is None else body.name,
            description=UNSET if body.description is None else body.description,
            parent_id=UNSET if body.parent is None else (body.parent or None),
            tags=UNSET if body.tags is None else tuple(body.tags),
            owner_id=UNSET if body.ownerId is None else body.ownerId,
        )
        return _group(await service.update_group(body.groupId, changes, user.email, TENANT))

    @api.post("/group/apiKey", response_model=ExternalApiKeyOut)
    async def create_api_key(user: User, body: ApiKeyCreate) -> ExternalApiKeyOut:
        key = await service.create_api_key(body.groupId, body.type, body.name, body.token, user.email, TENANT)
        return _api_key(key)

    @api.put("/group/apiKey", response_model=ExternalApiKeyOut)
    async def update_api_key(user: User, body: ApiKeyUpdate) -> ExternalApiKeyOut:
        key = await service.update_api_key(
            body.groupId, body.type, user.email, TENANT, name=body.name, token=body.token
        )
        return _api_key(key)

    @api.delete("/group/apiKey", response_model=GenericReturnBoolean)
    async def delete_api_key(
        user: User,
        groupId: GroupIdQuery,
        type: Annotated[str, Query(min_length=1, max_length=ID_MAX)],
    ) -> GenericReturnBoolean:
        await service.delete_api_key(groupId, type, user.email, TENANT)
        return GenericReturnBoolean(message="api key deleted", value=True)

    @api.put("/group/invite", response_model=GenericReturnBoolean)
    async def invite(user: User, body: Invite) -> GenericReturnBoolean:
        invitation = await service.invite_user(body.groupId, body.email, body.roleId, user.email, TENANT)
        message = "user added to the group" if invitation.accepted else "invitation sent"
        return GenericReturnBoolean(message=message, value=invitation.accepted)

    async def set_user(user: IotizeUser, body: UserRole) -> GroupUserRelation:
        relation = await service.set_user_role(body.groupId, body.userId, body.roleId, user.email, TENANT)
        return GroupUserRelation(
            id=relation.group_id,
            userId=relation.account.id,
            role=_role(relation.role),
            name=relation.account.name,
            description=relation.account.email,
        )

    @api.post("/group/user", response_model=GroupUserRelation, summary="Add a user to a group")
    async def add_user(user: User, body: UserRole) -> GroupUserRelation:
        return await set_user(user, body)

    @api.put("/group/user", response_model=GroupUserRelation, summary="Update user to a group")
    async def update_user(user: User, body: UserRole) -> GroupUserRelation:
        return await set_user(user, body)

    @api.delete("/group/user", response_model=GenericReturnBoolean)
    async def remove_user(
        user: User,
        groupId: GroupIdQuery,
        userId: Annotated[str | None, Query(max_length=ID_MAX)] = None,
    ) -> GenericReturnBoolean:
        await service.remove_user(groupId, userId or None, user.email, TENANT)
        return GenericReturnBoolean(message="user removed from the group", value=True)

    @api.get("/group/devices", response_model=DeviceConnection, response_model_exclude_unset=True)
    async def group_devices(
        user: User,
        groupId: GroupIdQuery,
        limit: Limit = 100,
        nextToken: NextToken = None,
    ) -> Response:
        page = await service.list_members(groupId, TENANT, actor=user.email, limit=limit, cursor=nextToken)
        items = [_device(d, groupId) for d in page.items]
        return json_response(
            DeviceConnection(items=items, **_page_token(page.next_cursor)), exclude_unset=True
        )

    @api.get("/group/roles", response_model=RoleConnection, response_model_exclude_unset=True)
    async def group_roles(user: User, limit: Limit = 100, nextToken: NextToken = None) -> Response:
        page = await service.list_roles(TENANT, limit=limit, cursor=nextToken)
        items = [_role(r) for r in page.items]
        return json_response(RoleConnection(items=items, **_page_token(page.next_cursor)), exclude_unset=True)

    @api.get("/group/users", response_model=UserConnection, response_model_exclude_unset=True)
    async def group_users(
        user: User,
        groupId: GroupIdQuery,
        limit: Limit = 100,
        nextToken: NextToken = None,
    ) -> Response:
        page = await service.list_group_users(
            groupId, TENANT, actor=user.email, limit=limit, cursor=nextToken
        )
        items = [
            PublicUser(
                id=relation.account.id,
                email=relation.account.email,
                name=relation.account.name,
                firstName=relation.account.first_name,
                lastName=relation.account.last_name,
                createdAt=iso_date(relation.account.created_at),
                role=_role(relation.role),
            )
            for relation in page.items
        ]
        return json_response(UserConnection(items=items, **_page_token(page.next_cursor)), exclude_unset=True)

    return api
