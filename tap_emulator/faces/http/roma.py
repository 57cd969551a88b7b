"""The Huawei ROMA Connect face: device groups of an instance (seed 004), create, list (a tree) and read.

``X-Auth-Token`` names a configured token; the project and instance in the path must be configured,
and a missing instance is answered 500 ``ROMA.00110002`` exactly as the seed shows. Ids are the
core's integers from 1; ``parent_id`` 0 is the root and a number is rounded down (the core parses
it). Errors are ``{error_code, error_msg, request_id}``: 400 ``SCB.00000000`` for invalid input,
404 ``ROMA.00110006`` for a missing group, 401 ``APIGW.0301`` for a bad token (the API gateway's code;
the seed is silent).
"""

import time
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from tap_emulator.cloud import (
    MAX_PAGE_SIZE,
    ROMA,
    DeviceGroup,
    GroupDraft,
    NotFound,
    Tenant,
    parse_parent_id,
)

from .app import CloudContext
from .cloud_config import CloudConfig, RomaToken
from .common import is_cloud_error, iso_timestamp
from .routing import FaceError, Failure, FailureKind, face_route_class

__all__ = ["PATH_PREFIXES", "render", "router", "tenant_of"]

BASE = "/v2/{project_id}/link/instances/{instance_id}/device-groups"
PERMISSIONS = ["read", "access", "delete", "modify"]  # what the creator holds (the seed's example)
_INVALID_CODE = "SCB.00000000"
_NOT_FOUND_CODE = "ROMA.00110006"
_NO_INSTANCE_CODE = "ROMA.00110002"
_BAD_TOKEN_CODE = "APIGW.0301"
_INTERNAL_CODE = "ROMA.00110001"


def tenant_of(project_id: str, instance_id: str) -> Tenant:
    return Tenant(f"roma/{project_id}/{instance_id}", ROMA)


def _request_id() -> str:
    return f"{uuid.uuid4()}-{int(time.time() * 1000)}-tap-emulator"


def _error(status: int, code: str, message: str) -> JSONResponse:
    body = {"error_code": code, "error_msg": message[:200], "request_id": _request_id()}
    return JSONResponse(body, status_code=status)


PATH_PREFIXES = ("/v2/",)  # paths this face answers, even where no route matches


def render(request: Request, failure: Failure) -> Response:
    error = failure.error
    if failure.kind is FailureKind.FACE and isinstance(error, FaceError):
        return _error(error.status, error.code, error.message)
    if failure.kind is FailureKind.DOMAIN and isinstance(error, NotFound):
        return _error(
            404,
            _NOT_FOUND_CODE,
            f"The resource does not exist. Check whether the resource ID {error.key} is correct.",
        )
    if failure.kind is FailureKind.INTERNAL:
        return _error(500, _INTERNAL_CODE, "Internal server error.")
    return _error(
        400,
        _INVALID_CODE,
        f"Parameter is not valid for operation [romalink.link-device-groups]. {failure.message}",
    )


class ErrorOut(BaseModel):
    error_code: str
    error_msg: str
    request_id: str


class UserOut(BaseModel):
    user_id: str
    user_name: str


class GroupOut(BaseModel):
    permissions: list[str]
    parent_id: int
    id: int
    name: str
    description: str
    app_id: str
    created_user: UserOut
    last_updated_user: UserOut
    created_datetime: str | None
    last_updated_datetime: str | None


class GroupTree(BaseModel):
    id: int
    name: str
    parent_id: int
    app_id: str
    permissions: list[str]
    children: list["GroupTree"]


class GroupTreeList(BaseModel):
    total: int
    size: int
    items: list[GroupTree]


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    parent_id: StrictInt | StrictFloat
    name: StrictStr
    description: StrictStr | None = None
    app_id: StrictStr = Field(max_length=36)


@dataclass(frozen=True, slots=True)
class Caller:
    token: RomaToken
    tenant: Tenant


def _user(config: CloudConfig, user_id: str) -> UserOut:
    token = next((t for t in config.roma_tokens if t.user_id == user_id), None)
    return UserOut(user_id=user_id, user_name=token.user_name if token else user_id)


def _id(text: str | None) -> int:
    return int(text) if text else 0


def _group(config: CloudConfig, group: DeviceGroup) -> GroupOut:
    return GroupOut(
        permissions=PERMISSIONS,
        parent_id=_id(group.parent_id),
        id=_id(group.id),
        name=group.name,
        description=group.description,
        app_id=group.scope,
        created_user=_user(config, group.created_by),
        last_updated_user=_user(config, group.updated_by),
        created_datetime=iso_timestamp(group.created_at),
        last_updated_datetime=iso_timestamp(group.updated_at),
    )


def _tree(groups: list[DeviceGroup]) -> list[GroupTree]:
    """The groups as a forest: roots (and groups whose parent is not listed) with their children."""
    nodes = {
        g.id: GroupTree(
            id=_id(g.id),
            name=g.name,
            parent_id=_id(g.parent_id),
            app_id=g.scope,
            permissions=PERMISSIONS,
            children=[],
        )
        for g in groups
    }
    roots: list[GroupTree] = []
    for group in groups:
        parent = nodes.get(group.parent_id) if group.parent_id else None
        (parent.children if parent is not None else roots).append(nodes[group.id])
    return roots


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "SCB.00000000 invalid parameter"},
    401: {"model": ErrorOut, "description": "APIGW.0301 bad token"},
    404: {"model": ErrorOut, "description": "ROMA.00110006 no such resource"},
    500: {"model": ErrorOut, "description": "ROMA.00110002 no such instance"},
}
_token = APIKeyHeader(name="X-Auth-Token", auto_error=False, description="the IAM user token")

ProjectId = Annotated[str, Path(max_length=32)]
InstanceId = Annotated[str, Path(max_length=36)]


def router(context: CloudContext) -> APIRouter:
    service = context.service
    config = context.config

    async def caller(
        project_id: ProjectId, instance_id: InstanceId, token: Annotated[str | None, Security(_token)]
    ) -> Caller:
        known = config.roma_token(token)
        if known is None:
            raise FaceError(
                _BAD_TOKEN_CODE, "Incorrect IAM authentication information: the token is invalid", 401
            )
        if not config.roma_instance_exists(project_id, instance_id):
            raise FaceError(
                _NO_INSTANCE_CODE,
                f"The instance does not exist. project_id: {project_id}, instance_id: {instance_id}",
                500,
            )
        return Caller(known, tenant_of(project_id, instance_id))

    CallerDep = Annotated[Caller, Depends(caller)]
    api = APIRouter(
        prefix=BASE, tags=["roma"], route_class=face_route_class(render, is_cloud_error), responses=_ERRORS
    )

    @api.post("", response_model=GroupOut, summary="Creating a Device Group")
    async def create(who: CallerDep, body: GroupIn) -> GroupOut:
        draft = GroupDraft(
            name=body.name,
            description=body.description or "",
            parent_id=parse_parent_id(ROMA, body.parent_id),
        )
        scope = body.app_id
        group = await service.create_group(who.tenant, scope, draft, who.token.user_id)
        return _group(config, group)

    @api.get("", response_model=GroupTreeList, summary="Querying All Device Groups")
    async def list_all(
        who: CallerDep, app_id: Annotated[str | None, Query(max_length=36)] = None
    ) -> GroupTreeList:
        groups: list[DeviceGroup] = []
        cursor: str | None = None
        while True:
            page = await service.list_groups(who.tenant, app_id, limit=MAX_PAGE_SIZE, cursor=cursor)
            groups.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        return GroupTreeList(total=len(groups), size=len(groups), items=_tree(groups))

    @api.get("/{group_id}", response_model=GroupOut, summary="Querying Device Group Details")
    async def detail(who: CallerDep, group_id: Annotated[int, Path(ge=0, le=99999999999999999)]) -> GroupOut:
        return _group(config, await service.get_group(str(group_id), who.tenant))

    return api
