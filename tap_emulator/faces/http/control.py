"""The control API under ``/emulator/v1``: the HTTP way into ``tap_emulator.control.DeviceControl``.

Device info and state dump, reboot, factory reset, sessions (list, close one), lockouts (list, clear),
the fault plan (get, replace, clear, an offline window), the trace (recent events, a server-sent
event stream for the live page, on/off), a variable's value (read, set) and the target memory (read,
write). Errors are ``{code, message}`` with a plain HTTP status, as on
the native API. Bearer-token checks for both APIs live here too (``api_guard``): a loopback bind is
open, any other bind requires the configured ``[control] token``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from tap_emulator.config import ConfigError
from tap_emulator.control import MAX_MEMORY_BYTES, DeviceControl, NoSuchSession, Refused

from .cloud_config import same_secret
from .routing import FaceError, Failure, FailureKind, face_route_class

__all__ = ["PATH_PREFIXES", "PREFIX", "api_guard", "page_router", "render", "router"]

PREFIX = "/emulator/v1"
PATH_PREFIXES = (PREFIX,)
_STATUS_EVERY = 3.0  # seconds between the stream's status events
_POLL = 0.5  # seconds: how soon a stream notices the device stopping
_PAGE_FILES = {"page.js": "text/javascript", "page.css": "text/css"}


class ErrorOut(BaseModel):
    code: str
    message: str


class OfflineIn(BaseModel):
    seconds: float = Field(gt=0, le=86_400)


class TraceSwitch(BaseModel):
    enabled: bool


class VariableIn(BaseModel):
    """Exactly one of ``value`` (a number, a list of ``count`` numbers, text for ASCII) and ``hex``."""

    value: int | float | list[int | float] | str | None = None
    hex: str | None = Field(default=None, max_length=2 * MAX_MEMORY_BYTES)


class VariableOut(BaseModel):
    id: int
    type: str
    count: int
    address: int
    bundle: int
    hex: str
    value: int | float | list[int | float | None] | str | None  # a NaN or infinity reads as null


class MemoryIn(BaseModel):
    hex: str = Field(min_length=2, max_length=2 * MAX_MEMORY_BYTES)


class MemoryOut(BaseModel):
    address: int
    length: int
    hex: str


def _address(text: str) -> int:
    """A memory address in the path: decimal or ``0x`` hexadecimal."""
    try:
        address = int(text, 0)
    except ValueError:
        raise Refused(400, f"not an address: {text[:40]!r} (decimal or 0x hexadecimal)") from None
    if address < 0:
        raise Refused(400, "an address is not negative")
    return address


class Done(BaseModel):
    done: bool = True


class Cleared(BaseModel):
    cleared: int


def render(request: Request, failure: Failure) -> Response:
    if isinstance(failure.error, HTTPException) and failure.error.status_code in (404, 405):
        status = failure.error.status_code
        code = "not_found" if status == 404 else "method_not_allowed"
    elif failure.kind is FailureKind.FACE and isinstance(failure.error, FaceError):
        status, code = failure.error.status, failure.error.code
    elif failure.kind is FailureKind.INVALID:
        status, code = 400, "invalid_input"
    else:
        status, code = 500, "internal_error"
    message = "internal error" if status == 500 else failure.message
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def api_guard(token: str | None, required: bool) -> Callable[[Request], None]:
    """A dependency: nothing on a loopback bind (``required`` False); else ``Authorization: Bearer``
    with ``token``, and every request refused when no token is configured."""

    def check(request: Request) -> None:
        if not required:
            return
        if token is None:
            raise FaceError("unauthorized", "no [control] token is configured: this API is closed", 401)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not same_secret(presented.strip(), token):
            raise FaceError("unauthorized", "a valid 'Authorization: Bearer <token>' is required", 401)

    return check


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid input"},
    401: {"model": ErrorOut, "description": "a bearer token is required (non-loopback bind)"},
    404: {"model": ErrorOut, "description": "not found"},
}


def _is_control_error(error: Exception) -> bool:
    return isinstance(error, ConfigError | NoSuchSession | Refused)


def router(control: DeviceControl, guard: Callable[[Request], None]) -> APIRouter:
    api = APIRouter(
        prefix=PREFIX,
        tags=["control"],
        route_class=face_route_class(_render_domain, _is_control_error),
        responses=_ERRORS,
        dependencies=[Depends(guard)],
    )

    @api.get("/device", summary="Identity, endpoints, sessions, faults, trace and sync backlog")
    async def device() -> dict[str, Any]:
        return await control.info()

    @api.get("/state", summary="Every object's readable values (never a secret)")
    async def state() -> dict[str, Any]:
        return await control.state()

    @api.post("/reboot", response_model=Done, summary="Reboot: sessions end, observers end, state reloads")
    async def reboot() -> Done:
        await control.reboot()
        return Done()

    @api.post("/reset", response_model=Done, summary="Factory reset to the profile, live")
    async def reset() -> Done:
        await control.factory_reset()
        return Done()

    @api.get("/sessions", summary="The open Tap sessions")
    async def sessions() -> list[dict[str, Any]]:
        return control.sessions()

    @api.delete("/sessions/{session_id}", response_model=Done, summary="Close one session's connection")
    async def close_session(session_id: int) -> Done:
        control.close_session(session_id)
        return Done()

    @api.get("/lockouts", summary="Peers and accounts with failed logins")
    async def lockouts() -> list[dict[str, Any]]:
        return control.lockouts()

    @api.delete("/lockouts", response_model=Cleared, summary="Forget every failed login")
    async def clear_lockouts() -> Cleared:
        return Cleared(cleared=control.clear_lockouts())

    @api.get("/faults", summary="The fault plan, its offline window and what it applied")
    async def faults() -> dict[str, Any]:
        return control.faults()

    @api.put("/faults", summary="Replace the fault plan (the --faults TOML shape, as JSON)")
    async def set_faults(plan: dict[str, Any]) -> dict[str, Any]:
        return control.set_faults(plan)

    @api.delete("/faults", summary="No faults")
    async def clear_faults() -> dict[str, Any]:
        return control.clear_faults()

    @api.post("/faults/offline", summary="Nothing answers for this many seconds")
    async def offline(body: OfflineIn) -> dict[str, Any]:
        return control.go_offline(body.seconds)

    @api.get("/trace", summary="The last trace events")
    async def trace(limit: Annotated[int, Query(ge=0, le=500)] = 100) -> list[dict[str, Any]]:
        return control.trace(limit)

    @api.put("/trace", summary="Record the trace even with no file and no listener")
    async def trace_switch(body: TraceSwitch) -> dict[str, bool]:
        return {"active": control.set_trace(body.enabled)}

    @api.get("/variables/{variable_id}", response_model=VariableOut, summary="A variable's value")
    async def variable(variable_id: int) -> dict[str, Any]:
        return await control.variable(variable_id)

    @api.put(
        "/variables/{variable_id}",
        response_model=VariableOut,
        summary="Set a variable's value (as a CoAP PUT of its value: durable, observers told)",
    )
    async def set_variable(variable_id: int, body: VariableIn) -> dict[str, Any]:
        if (body.value is None) == (body.hex is None):
            raise Refused(400, "give exactly one of 'value' and 'hex'")
        return await control.set_variable(variable_id, value=body.value, hex_bytes=body.hex)

    @api.get(
        "/memory/{address}",
        response_model=MemoryOut,
        summary="Target memory bytes (address decimal or 0x hexadecimal)",
    )
    async def memory(
        address: str, length: Annotated[int, Query(ge=1, le=MAX_MEMORY_BYTES)]
    ) -> dict[str, Any]:
        return control.memory(_address(address), length)

    @api.put(
        "/memory/{address}",
        response_model=MemoryOut,
        summary="Write target memory (durable; observers of overlapping variables and bundles told)",
    )
    async def write_memory(address: str, body: MemoryIn) -> dict[str, Any]:
        return await control.write_memory(_address(address), body.hex)

    @api.get(
        "/events",
        summary="Server-sent events: each trace event, then 'status' every few seconds",
        response_class=StreamingResponse,
    )
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(_event_stream(control, request), media_type="text/event-stream")

    return api


async def _event_stream(control: DeviceControl, request: Request) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    with control.emulator.trace.subscribe() as queue:
        if queue is None:
            yield "event: error\ndata: too many listeners\n\n"
            return
        yield f"event: status\ndata: {json.dumps(await _status(control))}\n\n"
        next_status = loop.time() + _STATUS_EVERY
        while not control.closed and not await request.is_disconnected():
            try:
                event = await asyncio.wait_for(queue.get(), _POLL)
            except TimeoutError:
                if loop.time() >= next_status:
                    next_status = loop.time() + _STATUS_EVERY
                    yield f"event: status\ndata: {json.dumps(await _status(control))}\n\n"
                continue
            yield f"event: trace\ndata: {json.dumps(event)}\n\n"


def page_router() -> APIRouter:
    """The live page at ``/`` and its two files, from the package (no CDN: it works offline)."""
    from importlib.resources import files

    folder = files("tap_emulator.faces.http") / "page"
    index = (folder / "index.html").read_text(encoding="utf-8")
    assets = {name: (folder / name).read_text(encoding="utf-8") for name in _PAGE_FILES}
    page = APIRouter(include_in_schema=False)
    security = {
        "Content-Security-Policy": "default-src 'self'; connect-src 'self'; object-src 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }

    @page.get("/")
    async def live_page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=security)

    @page.get("/page/{name}")
    async def page_file(name: str) -> Response:
        if name not in assets:
            return JSONResponse({"code": "not_found", "message": "no such file"}, status_code=404)
        return Response(assets[name], media_type=f"{_PAGE_FILES[name]}; charset=utf-8", headers=security)

    return page


async def _status(control: DeviceControl) -> dict[str, Any]:
    return {"device": await control.info(), "sessions": control.sessions(), "faults": control.faults()}


def _render_domain(request: Request, failure: Failure) -> Response:
    """``render`` plus the control's own refusals: a bad plan is 400, an unknown session 404, a refused
    data-plane request its own status."""
    if failure.kind is FailureKind.DOMAIN and isinstance(failure.error, Refused):
        status = failure.error.status
        code = {404: "not_found", 500: "internal_error"}.get(status, "invalid_input")
        message = "internal error" if status >= 500 else str(failure.error)
        return JSONResponse({"code": code, "message": message}, status_code=status)
    if failure.kind is FailureKind.DOMAIN and isinstance(failure.error, NoSuchSession):
        return JSONResponse({"code": "not_found", "message": str(failure.error)}, status_code=404)
    if failure.kind is FailureKind.DOMAIN and isinstance(failure.error, ConfigError):
        return JSONResponse({"code": "invalid_input", "message": str(failure.error)}, status_code=400)
    return render(request, failure)
