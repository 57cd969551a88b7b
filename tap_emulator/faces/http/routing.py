"""Per-face error handling: every failure of a face's request is answered in that face's own vocabulary.

FastAPI's exception handlers are app-wide, yet the four seed clouds disagree on everything an error
looks like (IoTize 400 ``{message}``, OceanConnect HTTP 200 business codes, APP-service symbolic 400s,
ROMA ``{error_code, error_msg, request_id}``). So each face's router gets its own route class, built by
``face_route_class`` from the face's ``render`` function: request validation (FastAPI's 422), a body
too large, bad JSON, auth failures, the core's domain errors and unexpected exceptions all reach
``render`` as one ``Failure``, and nothing reaches uvicorn as a traceback.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from tap_emulator.logsafety import RateLimitedLog
from tap_emulator.store import StoreRejected

from .server import BODY_TOO_LARGE

__all__ = [
    "STARTED",
    "FaceError",
    "Failure",
    "FailureKind",
    "Render",
    "elapsed_ms",
    "face_route_class",
    "validation_message",
]

log = logging.getLogger(__name__)
_internal_log = RateLimitedLog(log, interval=10.0)
STARTED = "tap_emulator.started"  # scope key: perf_counter() when the face's route got the request


def elapsed_ms(request: Request) -> int:
    """Milliseconds since the route got the request (APP-service's ``time_used``)."""
    started = request.scope.get(STARTED)
    return 0 if started is None else int((time.perf_counter() - started) * 1000)


class FailureKind(enum.Enum):
    INVALID = "invalid"  # malformed request: validation, bad JSON, body too large
    FACE = "face"  # an error the face raised itself, auth included (carries its own code)
    DOMAIN = "domain"  # an error of the core (mapped by the face)
    INTERNAL = "internal"  # a bug or a store failure


class FaceError(Exception):
    """An error a face raises with its answer already decided (``code`` is the face's own vocabulary)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    message: str  # short, safe to return: never echoes a credential
    error: BaseException | None = None


Render = Callable[[Request, Failure], Response]


def validation_message(error: RequestValidationError) -> str:
    """A short summary of FastAPI's validation errors: where and why, never the rejected value."""
    parts = []
    for item in error.errors()[:3]:
        location = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body",)) or "body"
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def classify(request: Request, error: Exception, is_domain_error: Callable[[Exception], bool]) -> Failure:
    if request.scope.get(BODY_TOO_LARGE):
        return Failure(FailureKind.INVALID, "request body too large", error)
    if isinstance(error, RequestValidationError):
        return Failure(FailureKind.INVALID, validation_message(error), error)
    if isinstance(error, FaceError):
        return Failure(FailureKind.FACE, error.message, error)
    if isinstance(error, HTTPException) and error.status_code < 500:
        return Failure(FailureKind.INVALID, str(error.detail), error)
    if isinstance(error, StoreRejected):  # a value the store's constraints refuse: the input was bad
        return Failure(FailureKind.INVALID, "a value is out of range", error)
    if is_domain_error(error):
        return Failure(FailureKind.DOMAIN, str(error), error)
    _internal_log.log(
        logging.ERROR,
        type(error).__name__,
        "%s %s failed: %s: %s",
        request.method,
        request.url.path,
        type(error).__name__,
        error,
    )
    log.debug("internal error", exc_info=error)
    return Failure(FailureKind.INTERNAL, "internal error", error)


def face_route_class(render: Render, is_domain_error: Callable[[Exception], bool]) -> type[APIRoute]:
    """An APIRoute subclass whose handler answers every failure through ``render``."""

    class FaceRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                request.scope[STARTED] = time.perf_counter()
                if request.scope.get(BODY_TOO_LARGE):
                    return render(request, Failure(FailureKind.INVALID, "request body too large"))
                try:
                    return await handler(request)
                except Exception as error:
                    return render(request, classify(request, error, is_domain_error))

            return guarded

    return FaceRoute
