"""Small pieces every HTTP face shares: timestamps, the store-failure test, and query bounds."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Response
from pydantic import BaseModel

from tap_emulator.cloud import CloudError

__all__ = ["CURSOR_MAX", "ID_MAX", "is_cloud_error", "iso_date", "iso_timestamp", "json_response"]

CURSOR_MAX = 512  # characters of an opaque page token a client may send back
ID_MAX = 128  # characters of an id in a path or query


def iso_timestamp(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a trailing Z, as the store's JSON snapshot writes it."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def iso_date(moment: datetime | None) -> str | None:
    """The date part only (the IoTize and ROMA examples show ``2019-08-24``)."""
    return None if moment is None else moment.astimezone(UTC).date().isoformat()


def is_cloud_error(error: Exception) -> bool:
    """A refusal of the core (each face maps these to its own vocabulary)."""
    return isinstance(error, CloudError)


def json_response(model: BaseModel, *, exclude_unset: bool = False) -> Response:
    """The model's JSON, serialised once by pydantic.

    Returned from a route (whose decorator still names the model for OpenAPI), it skips FastAPI's
    second validation and encoding of the answer: lists answer about 30 % faster.
    """
    return Response(model.model_dump_json(exclude_unset=exclude_unset), media_type="application/json")
