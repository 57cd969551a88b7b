"""The Huawei OceanConnect face: device groups under ``/iocm/app/devgroup/v1.3.0/devGroups`` (seed 002).

``app_key: <app id>`` and ``Authorization: Bearer <token>`` name a configured app; ``?accessAppId=``
acts on another app's groups when the configuration authorises it. Business errors come back with
HTTP 200 and ``{"error_code", "error_desc"}`` (the seed's quirk), invalid input 400/50400, bad
credentials 403/1010005, the throttle 403/1010009, an internal error 500/50252. Lists page with
``pageNo`` (from 0) and ``pageSize`` (1-500, default 1) over the core's keyset pages.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from tap_emulator.cloud import (
    MAX_PAGE_SIZE,
    OCEANCONNECT,
    UNSET,
    AppNotAuthorised,
    CapacityExceeded,
    CloudService,
    DeviceGroup,
    GroupChanges,
    GroupDraft,
    InvalidInput,
    NameTaken,
    NotFound,
    Tenant,
    UnknownApp,
    parse_int,
)

from .app import CloudContext
from .cloud_config import CloudConfig, OceanConnectApp
from .common import ID_MAX, is_cloud_error
from .routing import FaceError, Failure, FailureKind, face_route_class

__all__ = ["BASE", "PATH_PREFIXES", "Throttle", "render", "router", "tenant_of"]

BASE = "/iocm/app/devgroup/v1.3.0/devGroups"


def tenant_of(app_id: str) -> Tenant:
    """Each app is its own tenant: its groups are invisible to other apps (unless authorised)."""
    return Tenant(f"oceanconnect/{app_id}", OCEANCONNECT)


_INVALID = ("50400", "The input is invalid.")
_BAD_TOKEN = ("1010005", "App_key or access_token is invalid.")
_THROTTLED = ("1010009", "app throttle exceed.")
_INTERNAL = ("50252", "Internal server error.")
# Business errors, all with HTTP 200 as the seed documents.
_BUSINESS: tuple[tuple[type[Exception], str, str], ...] = (
    (UnknownApp, "100203", "The application is not existed."),
    (AppNotAuthorised, "100217", "The application hasn't been authorized."),
    (CapacityExceeded, "100601", "The number of device in the group has reach the max."),
    (NameTaken, "100602", "The device group name has been used."),
    (NotFound, "100603", "The device group is not existed."),
)


def _error(status: int, code: str, desc: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "error_desc": desc}, status_code=status)


PATH_PREFIXES = ("/iocm/",)  # paths this face answers, even where no route matches


def render(request: Request, failure: Failure) -> Response:
    error = failure.error
    if failure.kind is FailureKind.FACE and isinstance(error, FaceError):
        return _error(error.status, error.code, error.message)
    if failure.kind is FailureKind.DOMAIN:
        for kind, code, desc in _BUSINESS:
            if isinstance(error, kind):
                return _error(200, code, desc)
        if isinstance(error, InvalidInput):
            return _error(400, *_INVALID)
    if failure.kind is FailureKind.INTERNAL:
        return _error(500, *_INTERNAL)
    return _error(400, *_INVALID)


class Throttle:
    """At most ``per_minute`` calls per app in any fixed one-minute window; 0 turns it off.

    Keyed by configured app id only (checked after authentication), so its memory is bounded by the
    configuration, not by what clients send.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, app_id: str) -> bool:
        if self.per_minute == 0:
            return True
        now = self._clock()
        start, count = self._windows.get(app_id, (now, 0))
        if now - start >= 60.0:
            start, count = now, 0
        if count >= self.per_minute:
            return False
        self._windows[app_id] = (start, count + 1)
        return True


@dataclass(frozen=True, slots=True)
class Caller:
    app: OceanConnectApp
    acting_for: str  # the app whose groups the call reaches (itself, or accessAppId)

    @property
    def tenant(self) -> Tenant:
        return tenant_of(self.acting_for)


class DevGroupOut(BaseModel):
    name: str
    description: str
    id: str
    appId: str
    maxDevNum: int
    curDevNum: int


class DevGroupPage(BaseModel):
    totalCount: int
    pageNo: int
    pageSize: int
    list: list[DevGroupOut]


class ErrorOut(BaseModel):
    error_code: str
    error_desc: str


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DevGroupCreate(_Body):
    name: StrictStr
    description: StrictStr | None = None
    appId: StrictStr | None = None
    maxDevNum: StrictInt | StrictStr | None = None


class DevGroupModify(_Body):
    name: StrictStr
    description: StrictStr | None = None
    maxDevNum: StrictInt | StrictStr | None = None


def _group(group: DeviceGroup) -> DevGroupOut:
    return DevGroupOut(
        name=group.name,
        description=group.description,
        id=group.id,
        appId=group.tenant.removeprefix("oceanconnect/"),
        maxDevNum=group.max_devices,
        curDevNum=group.device_count,
    )


def _max_devices(raw: int | str | None) -> int | None:
    return None if raw is None else parse_int("maxDevNum", raw, minimum=0, numeric_string=True)


async def _skip_to_page(
    service: CloudService, tenant: Tenant, name: str | None, page_no: int, page_size: int
) -> list[DeviceGroup]:
    """Page ``page_no`` of ``page_size`` groups, walked over the core's keyset pages (no OFFSET)."""
    to_skip = page_no * page_size
    cursor: str | None = None
    while to_skip > 0:
        limit = min(to_skip, MAX_PAGE_SIZE)
        page = await service.list_groups(tenant, tenant.key, name=name, limit=limit, cursor=cursor)
        to_skip -= len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return []
    page = await service.list_groups(tenant, tenant.key, name=name, limit=page_size, cursor=cursor)
    return list(page.items)


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "50400 invalid input"},
    403: {"model": ErrorOut, "description": "1010005 bad credentials, 1010009 throttled"},
    500: {"model": ErrorOut, "description": "50252 internal error"},
}
_app_key = APIKeyHeader(name="app_key", auto_error=False, description="the application id")
_bearer = APIKeyHeader(name="Authorization", auto_error=False, description="Bearer {accessToken}")

AccessAppId = Annotated[str | None, Query(max_length=ID_MAX)]
DevGroupId = Annotated[str, Path(min_length=1, max_length=50)]


def caller_dependency(config: CloudConfig, throttle: Throttle) -> Callable[..., Awaitable[Caller]]:
    async def caller(
        app_key: Annotated[str | None, Security(_app_key)],
        authorization: Annotated[str | None, Security(_bearer)],
        accessAppId: AccessAppId = None,
    ) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        app = config.oceanconnect_app(app_key, token.strip() if scheme.lower() == "bearer" else None)
        if app is None:
            raise FaceError(*_BAD_TOKEN, status=403)
        if not throttle.allow(app.app_id):
            raise FaceError(*_THROTTLED, status=403)
        return Caller(app, _acting_for(config, app, accessAppId))

    return caller


def _acting_for(config: CloudConfig, app: OceanConnectApp, access_app_id: str | None) -> str:
    if not access_app_id or access_app_id == app.app_id:
        return app.app_id
    if not config.oceanconnect_app_exists(access_app_id):
        raise UnknownApp(access_app_id)
    if access_app_id not in app.authorized_apps:
        raise AppNotAuthorised(app.app_id, access_app_id)
    return access_app_id


def router(context: CloudContext) -> APIRouter:
    service = context.service
    config = context.config
    throttle = Throttle(config.oceanconnect_throttle_per_minute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(config, throttle))]
    api = APIRouter(
        prefix=BASE,
        tags=["oceanconnect"],
        route_class=face_route_class(render, is_cloud_error),
        responses=_ERRORS,
    )

    @api.post("", response_model=DevGroupOut | ErrorOut, summary="Create a device group")
    async def create(caller: CallerDep, body: DevGroupCreate) -> DevGroupOut:
        tenant = tenant_of(_acting_for(config, caller.app, body.appId)) if body.appId else caller.tenant
        draft = GroupDraft(
            name=body.name,
            description=body.description or "",
            max_devices=_max_devices(body.maxDevNum) or 0,
        )
        return _group(await service.create_group(tenant, tenant.key, draft, caller.app.app_id))

    @api.get("", response_model=DevGroupPage | ErrorOut, summary="Query device groups")
    async def query(
        caller: CallerDep,
        pageNo: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        pageSize: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 1,
        name: Annotated[str | None, Query(max_length=50)] = None,
    ) -> DevGroupPage:
        groups = await _skip_to_page(service, caller.tenant, name or None, pageNo, pageSize)
        total = await service.count_groups(caller.tenant, caller.tenant.key, name=name or None)
        return DevGroupPage(
            totalCount=total, pageNo=pageNo, pageSize=pageSize, list=[_group(g) for g in groups]
        )

    @api.get("/{devGroupId}", response_model=DevGroupOut | ErrorOut, summary="Query one device group")
    async def get(caller: CallerDep, devGroupId: DevGroupId) -> DevGroupOut:
        return _group(await service.get_group(devGroupId, caller.tenant))

    @api.put("/{devGroupId}", response_model=DevGroupOut | ErrorOut, summary="Modify a device group")
    async def modify(caller: CallerDep, devGroupId: DevGroupId, body: DevGroupModify) -> DevGroupOut:
        max_devices = _max_devices(body.maxDevNum)
        changes = GroupChanges(
            name=body.name,
            description=UNSET if body.description is None else body.description,
            max_devices=UNSET if max_devices is None else max_devices,
        )
        return _group(await service.update_group(devGroupId, changes, caller.app.app_id, caller.tenant))

    @api.delete(
        "/{devGroupId}",
        status_code=204,
        summary="Delete a device group",
        responses={200: {"model": ErrorOut, "description": "a business error (HTTP 200, as the seed's)"}},
    )
    async def delete(caller: CallerDep, devGroupId: DevGroupId) -> Response:
        await service.delete_group(devGroupId, caller.app.app_id, caller.tenant)
        return Response(status_code=204)

    return api
