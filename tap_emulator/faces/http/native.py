"""The native API under ``/api/v1``: the emulator's own JSON view of the management store.

Devices (everything that synced, with its public access groups and sync status), device groups (CRUD,
keyset pages with ``limit`` and ``cursor``) and membership. Every device group is reached by its one
store-wide id, whichever face made it (ROMA's integer in decimal). No authentication: like the CoAP
face, this is the bench's own port (bound to 127.0.0.1 by default). Errors are ``{code, message}``
with a plain HTTP status; rules live in the core.
"""

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from tap_emulator.cloud import (
    NATIVE,
    UNSET,
    CloudError,
    CycleRefused,
    DeviceGroup,
    Forbidden,
    GroupChanges,
    GroupDraft,
    InvalidInput,
    NotFound,
    Tenant,
)
from tap_emulator.cloud import Device as DeviceRecord
from tap_emulator.state.outbox import backlog_status
from tap_emulator.store import StoreError

from .app import CloudContext
from .common import CURSOR_MAX, ID_MAX, is_cloud_error, iso_timestamp, json_response
from .routing import FaceError, Failure, FailureKind, face_route_class

__all__ = ["PATH_PREFIXES", "PREFIX", "render", "router"]

PREFIX = "/api/v1"
TENANT = Tenant("native", NATIVE)
ACTOR = "native-api"
_INT64 = {"ge": -(2**63), "le": 2**63 - 1}


class ErrorOut(BaseModel):
    code: str
    message: str


class DeviceOut(BaseModel):
    serial: str
    model: str
    firmware: str
    last_seen: str | None
    device_groups: list[str]


class AccessGroupOut(BaseModel):
    group_id: int
    name: str
    alias: int
    session_lifetime: int
    is_profile: bool
    password_set: bool
    scram_salt: int | None
    scram_iteration: int | None
    version: int
    updated_at: str | None


class DeviceDetailOut(DeviceOut):
    access_groups: list[AccessGroupOut]


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None


class BacklogOut(BaseModel):
    pending: int
    oldest_pending_at: float | None
    last_error: str | None
    rejected: int
    delivered: int


class SyncStatusOut(BaseModel):
    serial: str
    last_seen: str | None
    access_groups: int
    tombstones: int
    newest_version: int | None
    last_change_at: str | None
    backlog: BacklogOut | None = Field(
        None, description="the device's own outbox, when this process serves the device"
    )


class DeviceGroupOut(BaseModel):
    id: str
    tenant: str
    owner: str
    name: str
    description: str
    parent_id: str | None
    status: int
    sequence: int
    max_devices: int
    device_count: int
    tags: list[str]
    created_at: str | None
    created_by: str
    updated_at: str | None
    updated_by: str
    version: int


class DeviceGroupPage(BaseModel):
    items: list[DeviceGroupOut]
    next_cursor: str | None


class DeviceGroupIn(BaseModel):
    name: str
    description: str = ""
    parent_id: str | None = None
    status: Annotated[int, Field(**_INT64)] = 1
    sequence: Annotated[int, Field(**_INT64)] = 0
    max_devices: Annotated[int, Field(**_INT64)] = Field(0, description="0 = unlimited")
    tags: list[str] = Field(default_factory=list)


class DeviceGroupPatch(BaseModel):
    name: str | None = None
    description: str | None = None
    parent_id: str | None = Field(None, description="an empty string moves the group to the root")
    status: Annotated[int, Field(**_INT64)] | None = None
    sequence: Annotated[int, Field(**_INT64)] | None = None
    max_devices: Annotated[int, Field(**_INT64)] | None = None
    tags: list[str] | None = None


class MemberOut(BaseModel):
    group_id: str
    serial: str
    added_at: str | None
    added_by: str


def _device(device: DeviceRecord) -> DeviceOut:
    return DeviceOut(
        serial=device.serial,
        model=device.model,
        firmware=device.firmware,
        last_seen=iso_timestamp(device.last_seen),
        device_groups=list(device.group_ids),
    )


def _group(group: DeviceGroup) -> DeviceGroupOut:
    return DeviceGroupOut(
        id=group.id,
        tenant=group.tenant,
        owner=group.scope,
        name=group.name,
        description=group.description,
        parent_id=group.parent_id,
        status=group.status,
        sequence=group.sequence,
        max_devices=group.max_devices,
        device_count=group.device_count,
        tags=list(group.tags),
        created_at=iso_timestamp(group.created_at),
        created_by=group.created_by,
        updated_at=iso_timestamp(group.updated_at),
        updated_by=group.updated_by,
        version=group.version,
    )


PATH_PREFIXES = (PREFIX + "/",)  # paths this face answers, even where no route matches


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _status_of(error: BaseException | None) -> int:
    if isinstance(error, InvalidInput):
        return 400
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Forbidden):
        return 403
    if isinstance(error, CycleRefused):
        return 409
    return 409  # every other refusal conflicts with the current state (name taken, full, not empty)


def render(request: Request, failure: Failure) -> Response:
    if isinstance(failure.error, HTTPException) and failure.error.status_code in (404, 405):
        status = failure.error.status_code
        code = "not_found" if status == 404 else "method_not_allowed"
    elif failure.kind is FailureKind.FACE and isinstance(failure.error, FaceError):
        status, code = failure.error.status, failure.error.code
    elif failure.kind is FailureKind.INVALID:
        status, code = 400, "invalid_input"
    elif failure.kind is FailureKind.DOMAIN and isinstance(failure.error, CloudError):
        status, code = _status_of(failure.error), _snake(type(failure.error).__name__)
    elif isinstance(failure.error, StoreError):
        status, code = 503, "store_unavailable"
    else:
        status, code = 500, "internal_error"
    message = {503: "the management store failed; retry later", 500: "internal error"}.get(
        status, failure.message
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid input"},
    404: {"model": ErrorOut, "description": "not found"},
    409: {"model": ErrorOut, "description": "refused by the current state (a cycle, a full group)"},
    503: {"model": ErrorOut, "description": "the management store is unreachable"},
}

SerialPath = Annotated[str, Path(min_length=1, max_length=64)]
GroupIdPath = Annotated[str, Path(min_length=1, max_length=ID_MAX)]
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=CURSOR_MAX)]


def router(context: CloudContext, guard: Callable[[Request], None] | None = None) -> APIRouter:
    """``guard`` checks each request first (the bearer token on a non-loopback bind)."""
    service = context.service
    api = APIRouter(
        prefix=PREFIX,
        tags=["native"],
        route_class=face_route_class(render, is_cloud_error),
        responses=_ERRORS,
        dependencies=[] if guard is None else [Depends(guard)],
    )

    @api.get("/devices", response_model=DevicePage, summary="Every device that synced")
    async def list_devices(limit: Limit = 100, cursor: Cursor = None) -> Response:
        page = await service.list_devices(limit=limit, cursor=cursor)
        return json_response(DevicePage(items=[_device(d) for d in page.items], next_cursor=page.next_cursor))

    @api.get("/devices/{serial}", response_model=DeviceDetailOut, summary="A device with its access groups")
    async def get_device(serial: SerialPath) -> DeviceDetailOut:
        detail = await service.get_device(serial)
        return DeviceDetailOut(
            **_device(detail.device).model_dump(),
            access_groups=[
                AccessGroupOut(
                    group_id=g.group_id,
                    name=g.name,
                    alias=g.alias,
                    session_lifetime=g.session_lifetime,
                    is_profile=g.is_profile,
                    password_set=g.password_set,
                    scram_salt=g.scram_salt,
                    scram_iteration=g.scram_iteration,
                    version=g.version,
                    updated_at=iso_timestamp(g.updated_at),
                )
                for g in detail.access_groups
            ],
        )

    @api.get("/devices/{serial}/sync", response_model=SyncStatusOut, summary="Sync status of a device")
    async def sync_status(serial: SerialPath) -> SyncStatusOut:
        status = await service.sync_status(serial)
        backlog = None
        state = context.local_devices.get(serial)
        if state is not None:
            local = await backlog_status(state)
            backlog = BacklogOut(
                pending=local.pending,
                oldest_pending_at=local.oldest_pending_at,
                last_error=local.last_error,
                rejected=local.rejected,
                delivered=local.delivered,
            )
        return SyncStatusOut(
            serial=status.serial,
            last_seen=iso_timestamp(status.last_seen),
            access_groups=status.access_groups,
            tombstones=status.tombstones,
            newest_version=status.newest_version,
            last_change_at=iso_timestamp(status.last_change_at),
            backlog=backlog,
        )

    @api.get("/device-groups", response_model=DeviceGroupPage, summary="Every device group, any face's")
    async def list_groups(limit: Limit = 100, cursor: Cursor = None) -> Response:
        page = await service.list_groups(None, limit=limit, cursor=cursor)
        return json_response(
            DeviceGroupPage(items=[_group(g) for g in page.items], next_cursor=page.next_cursor)
        )

    @api.post(
        "/device-groups", response_model=DeviceGroupOut, status_code=201, summary="Create a device group"
    )
    async def create_group(body: DeviceGroupIn) -> DeviceGroupOut:
        draft = GroupDraft(
            name=body.name,
            description=body.description,
            parent_id=body.parent_id or None,
            status=body.status,
            sequence=body.sequence,
            max_devices=body.max_devices,
            tags=tuple(body.tags),
        )
        return _group(await service.create_group(TENANT, TENANT.key, draft, ACTOR))

    @api.get("/device-groups/{group_id}", response_model=DeviceGroupOut, summary="One device group")
    async def get_group(group_id: GroupIdPath) -> DeviceGroupOut:
        return _group(await service.get_group(group_id))

    @api.patch("/device-groups/{group_id}", response_model=DeviceGroupOut, summary="Change some fields")
    async def update_group(group_id: GroupIdPath, body: DeviceGroupPatch) -> DeviceGroupOut:
        given = body.model_fields_set
        changes = GroupChanges(
            name=body.name if "name" in given and body.name is not None else UNSET,
            description=body.description
            if "description" in given and body.description is not None
            else UNSET,
            parent_id=(body.parent_id or None) if "parent_id" in given else UNSET,
            status=body.status if body.status is not None else UNSET,
            sequence=body.sequence if body.sequence is not None else UNSET,
            max_devices=body.max_devices if body.max_devices is not None else UNSET,
            tags=tuple(body.tags) if body.tags is not None else UNSET,
        )
        return _group(await service.update_group(group_id, changes, ACTOR))

    @api.delete("/device-groups/{group_id}", status_code=204, summary="Delete a device group")
    async def delete_group(group_id: GroupIdPath) -> Response:
        await service.delete_group(group_id, ACTOR)
        return Response(status_code=204)

    @api.get("/device-groups/{group_id}/devices", response_model=DevicePage, summary="Devices of a group")
    async def list_members(group_id: GroupIdPath, limit: Limit = 100, cursor: Cursor = None) -> Response:
        page = await service.list_members(group_id, limit=limit, cursor=cursor)
        return json_response(DevicePage(items=[_device(d) for d in page.items], next_cursor=page.next_cursor))

    @api.put(
        "/device-groups/{group_id}/devices/{serial}",
        response_model=MemberOut,
        summary="Put a device in a group (refused past its capacity)",
    )
    async def add_member(group_id: GroupIdPath, serial: SerialPath) -> MemberOut:
        member = await service.add_member(group_id, serial, ACTOR)
        return MemberOut(
            group_id=member.group_id,
            serial=member.serial,
            added_at=iso_timestamp(member.added_at),
            added_by=member.added_by,
        )

    @api.delete("/device-groups/{group_id}/devices/{serial}", status_code=204, summary="Take a device out")
    async def remove_member(group_id: GroupIdPath, serial: SerialPath) -> Response:
        await service.remove_member(group_id, serial, ACTOR)
        return Response(status_code=204)

    return api
