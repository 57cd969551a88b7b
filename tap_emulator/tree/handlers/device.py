"""Object 3 (device): the identity a profile gives the device, and its reboot and factory reset.

The identity (manufacturer, model, serial, firmware) is values this handler seeds from the profile and
reads back as one identity. Reboot and factory reset are actions only admin's profile may execute
(IoTize: "only profile authorized to execute a Factory Reset or reconfigure"); what they do to the
running device (sessions, observers, value sources) is the app's, reached through `DeviceTree.lifecycle`.
"""

from __future__ import annotations

from typing import Any

from tap_emulator.config import Profile
from tap_emulator.state import StateError
from tap_emulator.tree.api import Response
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import ObjectHandler, Target
from tap_emulator.tree.status import Status

__all__ = ["DeviceHandler"]

# Alias slug of each identity resource -> the profile's field (tap_emulator.config.DeviceIdentity).
IDENTITY = {
    "manufacturer": "manufacturer",
    "model": "model",
    "serial-number": "serial_number",
    "firmware-version": "firmware_version",
}


@handles("device")
class DeviceHandler(ObjectHandler):
    def identity(self) -> dict[str, str]:
        """The identity by profile field name ("" for a value never set)."""
        return {
            field: str(self.tree.device_value(self.obj.id, self.resource(slug).id) or "")
            for slug, field in IDENTITY.items()
        }

    @property
    def serial_number(self) -> str:
        return self.identity()["serial_number"]

    def factory_values(self, profile: Profile) -> dict[int, Any]:
        return {self.resource(slug).id: getattr(profile.device, field) for slug, field in IDENTITY.items()}

    def _is_lifecycle(self, target: Target) -> bool:
        resource = target.resource
        return resource is not None and resource.id in (
            self.resource("reboot").id,
            self.resource("factory-reset").id,
        )

    def authorize(self, caller: int, target: Target) -> Response | None:
        refused = super().authorize(caller, target)
        if refused is not None or not self._is_lifecycle(target):
            return refused
        account = self.tree.account(caller)
        admin = self.tree.access.admin_group
        if caller == admin or (account is not None and account.alias == admin):
            return None
        return Response(Status.UNAUTHORIZED, diagnostic="only admin may reboot or reset the device")

    async def write(self, target: Target) -> Response:
        if not self._is_lifecycle(target):
            return await super().write(target)
        lifecycle = self.tree.lifecycle
        if lifecycle is None:
            return Response(Status.SERVICE_UNAVAILABLE, diagnostic="this device cannot restart itself")
        assert target.resource is not None
        if target.resource.id == self.resource("reboot").id:
            lifecycle.reboot_soon()
        else:
            # Before the answer: the caller's next request must find the factory state.
            try:
                await lifecycle.factory_reset(keep_session=target.request.caller.session)
            except StateError:  # logged by the state, once per episode; nothing was reset
                return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="the reset could not be stored")
        return Response(Status.CHANGED)
