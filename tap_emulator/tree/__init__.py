"""The resource tree and its neutral request API (see ``tree.py``)."""

from tap_emulator.tree.status import Status
from tap_emulator.tree.tree import (
    MAINTENANCE,
    READ_ONLY_MAINTENANCE,
    Account,
    Caller,
    ChangeEvent,
    DeviceTree,
    Lifecycle,
    Offload,
    Request,
    Response,
    run_in_thread,
)

__all__ = [
    "MAINTENANCE",
    "READ_ONLY_MAINTENANCE",
    "Account",
    "Caller",
    "ChangeEvent",
    "DeviceTree",
    "Lifecycle",
    "Offload",
    "Request",
    "Response",
    "Status",
    "run_in_thread",
]
