"""The HTTP app factory: one FastAPI app composed of one router per face, over one cloud context.

``build_app`` mounts the native API (``/api/v1``) and the four seed clouds at their own paths; each
router brings its own route class (its error vocabulary, see ``routing``) and its own OpenAPI document
(``/openapi/{face}.json``) besides the whole app's ``/openapi.json``. A later face (the control API,
a live page) is one more router given to the same app, with no change to the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tap_emulator.cloud import CloudService
from tap_emulator.state import DeviceState

from .cloud_config import CloudConfig
from .routing import Failure, FailureKind, Render

if TYPE_CHECKING:
    from tap_emulator.control import DeviceControl

__all__ = ["CloudContext", "build_app", "face_openapi"]


@dataclass(slots=True)
class CloudContext:
    """What every face serves from: the core, the credentials, and the devices this process runs.

    ``local_devices`` maps the serial of each device served by this process to its state, so the
    native sync status can add the device's own outbox backlog to what the store knows.
    """

    service: CloudService
    config: CloudConfig
    local_devices: Mapping[str, DeviceState] = field(default_factory=dict)
    # The device this process runs, for the control API (None for ``tap-emulator cloud``).
    control: DeviceControl | None = None
    # A non-loopback bind: the control and native APIs need ``config.control_token`` as a bearer token.
    token_required: bool = False


def _routers(context: CloudContext) -> dict[str, APIRouter]:
    from . import appservice, control, iotize, native, oceanconnect, roma

    guard = control.api_guard(context.config.control_token, context.token_required)
    routers = {
        "native": native.router(context, guard),
        "iotize": iotize.router(context),
        "oceanconnect": oceanconnect.router(context),
        "appservice": appservice.router(context),
        "roma": roma.router(context),
    }
    if context.control is not None:
        routers["control"] = control.router(context.control, guard)
    return routers


def _renderers() -> list[tuple[tuple[str, ...], Render]]:
    """Each face's path prefixes and error renderer, for requests no route of the face matched."""
    from . import appservice, control, iotize, native, oceanconnect, roma

    return [
        (control.PATH_PREFIXES, control.render),
        (native.PATH_PREFIXES, native.render),
        (iotize.PATH_PREFIXES, iotize.render),
        (oceanconnect.PATH_PREFIXES, oceanconnect.render),
        (appservice.PATH_PREFIXES, appservice.render),
        (roma.PATH_PREFIXES, roma.render),
    ]


def face_openapi(app: FastAPI, router: APIRouter, face: str) -> dict[str, Any]:
    """The OpenAPI document of one face alone (its paths, schemas and auth headers)."""
    return get_openapi(
        title=f"tap-emulator {face} face",
        version=app.version,
        routes=router.routes,
        description=f"The {face} face of tap-emulator.",
    )


def build_app(context: CloudContext) -> FastAPI:
    app = FastAPI(
        title="tap-emulator",
        version="0.1.0",
        description="The emulated management cloud: native API and four seed cloud faces.",
        docs_url=None,
        redoc_url=None,
    )
    routers = _routers(context)
    renderers = _renderers()

    async def unrouted(request: Request, error: Exception) -> Response:
        """A path or method no route serves: under a face's paths, that face's error; else plain JSON."""
        assert isinstance(error, HTTPException)
        path = request.url.path
        for prefixes, render in renderers:
            if path.startswith(prefixes):
                return render(request, Failure(FailureKind.INVALID, "no such path or method", error))
        return JSONResponse({"message": str(error.detail)}, status_code=error.status_code)

    app.add_exception_handler(HTTPException, unrouted)
    documents: dict[str, dict[str, Any]] = {}
    for face_router in routers.values():
        app.include_router(face_router)
    if context.control is not None:
        from . import control

        app.include_router(control.page_router())

    def document_route(face: str) -> Callable[[], JSONResponse]:
        """The route serving one face's document (built once, on first use); it takes no parameter."""

        def document() -> JSONResponse:
            if face not in documents:
                documents[face] = face_openapi(app, routers[face], face)
            return JSONResponse(documents[face])

        return document

    for face in routers:
        app.add_api_route(
            f"/openapi/{face}.json", document_route(face), methods=["GET"], include_in_schema=False
        )
    return app
