"""The tree's neutral request API: what every face sends (`Request`) and gets back (`Response`).

Kept apart from the dispatcher so the object handlers and the faces share these types without importing
each other. A request always names its caller: a logged-in group, or `MAINTENANCE` (full rights).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tap_emulator.model import Form, Operation
from tap_emulator.tree.status import Status

__all__ = [
    "MAINTENANCE",
    "READ_ONLY_MAINTENANCE",
    "Caller",
    "ChangeEvent",
    "Lifecycle",
    "Offload",
    "Request",
    "Response",
    "run_in_thread",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request: a logged-in group id, or ``None`` for the unrestricted maintenance role.

    ``read_only`` withdraws every write, execute and delete from the caller's rights while keeping its
    reads (the CoAP face's ``--coap-access read-only``). ``session`` is the face's own handle on the
    connection the request came from (a Tap session), opaque to the tree: a factory reset keeps that
    connection open (`Lifecycle.factory_reset`).
    """

    group_id: int | None
    read_only: bool = False
    session: object | None = field(default=None, compare=False, repr=False)


MAINTENANCE = Caller(None)
READ_ONLY_MAINTENANCE = Caller(None, read_only=True)


@dataclass(frozen=True, slots=True)
class Request:
    """One operation on a path; ``caller`` is required (keyword), so no face acts with rights it did not
    choose. ``form`` is set when the face addressed one form (an alias path such as password-key)."""

    operation: Operation
    object_id: int
    instance_id: int | None = None
    resource_id: int | None = None
    value: object = field(default=None, repr=False)
    caller: Caller = field(kw_only=True)
    form: Form | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Response:
    status: Status
    value: object = None
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    object_id: int
    instance_id: int | None
    resource_ids: frozenset[int]
    version: int | None = None
    created: bool = False
    deleted: bool = False


class Lifecycle(Protocol):
    """What the running device does when a request reboots or factory-resets it (the app implements it;
    the device object's handler calls it, so no face knows which resource does what)."""

    def reboot_soon(self) -> None:
        """Reboot once the current answer is on its way: sessions end, the state is kept."""

    async def factory_reset(self, *, keep_session: object | None = None) -> None:
        """Back to the profile now; every session ends except ``keep_session``."""

    async def reload_config(self) -> None:
        """Apply the configuration written so far: the tree rereads it, value sources restart; sessions
        stay."""


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """The default ``Offload``: a worker thread of the event loop's default executor."""
    return await asyncio.to_thread(fn, *args)


Offload = Callable[..., Awaitable[Any]]
"""``await offload(fn, *args)`` runs a module-level function off the event loop (a thread, or the
low-priority process of ``tap_emulator.security.worker``)."""
