"""The APP-service face: the seven device-group endpoints of seed 003 under ``/device-groups``.

``app_id`` and ``app_key`` headers name a configured app; each app is a tenant whose accounts (from the
configuration) own device groups, with UUID ids. Every answer, errors included, carries ``time_used``
(milliseconds). Errors are 400 with the seed's symbolic code in ``error`` (and a short ``message``);
bad credentials are 401 ``INVALID_APP_KEY`` and other invalid input 400 ``INVALID_PARAMETER`` (the seed
names neither). The share endpoints give the account in the path view rights on each listed group,
shared by that group's owner; a batch is all or nothing (the core runs it in one transaction).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from tap_emulator.cloud import (
    APP_SERVICE,
    MAX_PAGE_SIZE,
    Account,
    AlreadyShared,
    CloudService,
    DeviceGroup,
    GroupChanges,
    GroupDraft,
    MembersStillExist,
    NameTaken,
    NotFound,
    Page,
    ShareToSelf,
    Tenant,
)

from .app import CloudContext
from .cloud_config import AppServiceApp, CloudConfig
from .common import ID_MAX, is_cloud_error
from .routing import FaceError, Failure, FailureKind, elapsed_ms, face_route_class

__all__ = ["PATH_PREFIXES", "render", "router", "seed_accounts", "tenant_of"]

_BAD_CREDENTIALS = "INVALID_APP_KEY"
_INVALID = "INVALID_PARAMETER"
_INTERNAL = "INTERNAL_ERROR"


def tenant_of(app: AppServiceApp) -> Tenant:
    return Tenant(f"appservice/{app.app_id}", APP_SERVICE)


async def seed_accounts(service: CloudService, config: CloudConfig) -> None:
    for app in config.appservice_apps:
        tenant = tenant_of(app)
        for account_id in app.accounts:
            await service.ensure_account(
                tenant.key, Account(id=account_id, tenant=tenant.key, email="", name=account_id)
            )


def _symbol(error: BaseException | None) -> str:
    if isinstance(error, NotFound):
        return "INVALID_ACCOUNT_ID" if error.kind == "account" else "INVALID_DEVICEGROUP_ID"
    for kind, symbol in (
        (ShareToSelf, "SHARE_TO_MYSELF"),
        (AlreadyShared, "SHARE_TO_SAME_ACCOUNT_ID"),
        (NameTaken, "SAME_DEVICEGROUP_NAME"),
        (MembersStillExist, "DEVICES_STILL_EXIST_IN_THE_DEVICEGROUP"),
    ):
        if isinstance(error, kind):
            return symbol
    return _INVALID


PATH_PREFIXES = ("/device-groups",)  # paths this face answers, even where no route matches


def render(request: Request, failure: Failure) -> Response:
    status, symbol = 400, _INVALID
    if failure.kind is FailureKind.FACE and isinstance(failure.error, FaceError):
        status, symbol = failure.error.status, failure.error.code
    elif failure.kind is FailureKind.DOMAIN:
        symbol = _symbol(failure.error)
    elif failure.kind is FailureKind.INTERNAL:
        status, symbol = 500, _INTERNAL
    message = failure.message if status < 500 else "internal error"
    body = {"time_used": elapsed_ms(request), "error": symbol, "message": message}
    return JSONResponse(body, status_code=status)


class TimeUsed(BaseModel):
    time_used: int


class ErrorOut(TimeUsed):
    error: str
    message: str


class DeviceGroupOut(BaseModel):
    devgroup_id: str
    devgroup_name: str
    devgroup_status: int
    devgroup_sequence: int


class DeviceGroupList(TimeUsed):
    devicegroups: list[DeviceGroupOut]


class Created(TimeUsed):
    devgroup_id: str


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DeviceGroupIn(_Body):
    devgroup_name: StrictStr
    devgroup_sequence: StrictInt = Field(ge=-(2**31), le=2**31 - 1)
    devgroup_status: StrictInt = Field(ge=-(2**31), le=2**31 - 1)


class ShareIn(_Body):
    devgroups: list[Annotated[StrictStr, Field(max_length=ID_MAX)]] = Field(max_length=MAX_PAGE_SIZE)


def _group(group: DeviceGroup) -> DeviceGroupOut:
    return DeviceGroupOut(
        devgroup_id=group.id,
        devgroup_name=group.name,
        devgroup_status=group.status,
        devgroup_sequence=group.sequence,
    )


async def _all(fetch: Callable[[str | None], Awaitable[Page[DeviceGroup]]]) -> list[DeviceGroup]:
    """Every page of a list (the seed has no pagination), fetched with the core's keyset cursor."""
    groups: list[DeviceGroup] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        groups.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return groups


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "a symbolic error of the seed"},
    401: {"model": ErrorOut, "description": "app_id and app_key do not name an app"},
}
_app_id = APIKeyHeader(name="app_id", auto_error=False, description="the application id")
_app_key = APIKeyHeader(name="app_key", auto_error=False, description="the application key")

AccountId = Annotated[str, Path(min_length=1, max_length=ID_MAX)]
GroupId = Annotated[str, Path(min_length=1, max_length=ID_MAX)]


def router(context: CloudContext) -> APIRouter:
    service = context.service
    config = context.config

    async def current_app(
        app_id: Annotated[str | None, Security(_app_id)], app_key: Annotated[str | None, Security(_app_key)]
    ) -> Tenant:
        app = config.appservice_app(app_id, app_key)
        if app is None:
            raise FaceError(_BAD_CREDENTIALS, "app_id and app_key do not name an app", status=401)
        return tenant_of(app)

    App = Annotated[Tenant, Depends(current_app)]
    api = APIRouter(
        prefix="/device-groups",
        tags=["appservice"],
        route_class=face_route_class(render, is_cloud_error),
        responses=_ERRORS,
    )

    async def account(tenant: Tenant, account_id: str) -> None:
        await service.get_account(tenant.key, account_id)  # NotFound("account") = INVALID_ACCOUNT_ID

    @api.post("/share/account/{account_id}", response_model=TimeUsed, summary="Share device groups")
    async def share(request: Request, tenant: App, account_id: AccountId, body: ShareIn) -> TimeUsed:
        await service.share_groups(tenant, account_id, body.devgroups)
        return TimeUsed(time_used=elapsed_ms(request))

    @api.delete("/share/account/{account_id}", response_model=TimeUsed, summary="Stop sharing device groups")
    async def unshare(request: Request, tenant: App, account_id: AccountId, body: ShareIn) -> TimeUsed:
        await service.unshare_groups(tenant, account_id, body.devgroups)
        return TimeUsed(time_used=elapsed_ms(request))

    @api.get("/account/{account_id}", response_model=DeviceGroupList, summary="Device groups of an account")
    async def owned(request: Request, tenant: App, account_id: AccountId) -> DeviceGroupList:
        await account(tenant, account_id)
        groups = await _all(
            lambda cursor: service.list_groups(tenant, account_id, limit=MAX_PAGE_SIZE, cursor=cursor)
        )
        return DeviceGroupList(time_used=elapsed_ms(request), devicegroups=[_group(g) for g in groups])

    @api.get("/share/account/{account_id}", response_model=DeviceGroupList, summary="Groups shared with it")
    async def shared(request: Request, tenant: App, account_id: AccountId) -> DeviceGroupList:
        groups = await _all(
            lambda cursor: service.list_shared_groups(tenant, account_id, limit=MAX_PAGE_SIZE, cursor=cursor)
        )
        return DeviceGroupList(time_used=elapsed_ms(request), devicegroups=[_group(g) for g in groups])

    @api.post("/account/{account_id}", response_model=Created, summary="Add a device group")
    async def create(request: Request, tenant: App, account_id: AccountId, body: DeviceGroupIn) -> Created:
        await account(tenant, account_id)
        draft = GroupDraft(
            name=body.devgroup_name, status=body.devgroup_status, sequence=body.devgroup_sequence
        )
        group = await service.create_group(tenant, account_id, draft, account_id)
        return Created(time_used=elapsed_ms(request), devgroup_id=group.id)

    @api.put("/{devgroup_id}/account/{account_id}", response_model=TimeUsed, summary="Update a device group")
    async def update(
        request: Request, tenant: App, devgroup_id: GroupId, account_id: AccountId, body: DeviceGroupIn
    ) -> TimeUsed:
        await account(tenant, account_id)
        changes = GroupChanges(
            name=body.devgroup_name, status=body.devgroup_status, sequence=body.devgroup_sequence
        )
        await service.update_group(devgroup_id, changes, account_id, tenant, owner=account_id)
        return TimeUsed(time_used=elapsed_ms(request))

    @api.delete(
        "/{devgroup_id}/account/{account_id}", response_model=TimeUsed, summary="Delete a device group"
    )
    async def delete(request: Request, tenant: App, devgroup_id: GroupId, account_id: AccountId) -> TimeUsed:
        await account(tenant, account_id)
        await service.delete_group(devgroup_id, account_id, tenant, owner=account_id)
        return TimeUsed(time_used=elapsed_ms(request))

    return api
