"""The resource tree and its neutral request API (see ``tree.py``)."""

from tap_emulator.tree.status import Status
from tap_emulator.tree.tree import (
    MAINTENANCE,
    Account,
    Caller,
    ChangeEvent,
    DeviceTree,
    Request,
    Response,
    factory_changes,
)

__all__ = [
    "MAINTENANCE",
    "Account",
    "Caller",
    "ChangeEvent",
    "DeviceTree",
    "Request",
    "Response",
    "Status",
    "factory_changes",
]
