"""What the sync needs of a device, so a fleet's idle devices can sync without building their trees.

`SyncSubject` is the whole surface the sync touches: the serial, the device's state (its outbox), the
identity for the device record, change events, and the tree itself only when a reconcile must write
(most reconciles find nothing to do: the versions come from the state). `DeviceTree` satisfies it; a
fleet's lazy device does too, building its tree inside `sync_tree` on the rare reconcile with work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tap_emulator.state import DeviceState
from tap_emulator.tree import ChangeEvent, DeviceTree

__all__ = ["SyncSubject"]


@runtime_checkable
class SyncSubject(Protocol):
    """One device as the sync task sees it."""

    @property
    def serial_number(self) -> str: ...

    @property
    def state(self) -> DeviceState: ...

    def device_identity(self) -> dict[str, str]:
        """At least "model" and "firmware_version" (the device record's fields)."""
        ...

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Call `listener` after every durable change of the device; returns the unsubscribe function."""
        ...

    async def sync_tree(self) -> DeviceTree:
        """The device's tree, built if need be: asked for only when a reconcile has writes to apply."""
        ...
