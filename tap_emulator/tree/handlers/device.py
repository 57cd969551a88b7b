"""Object 3 (device): the identity a profile gives the device (manufacturer, model, serial, firmware).

Values only; this handler seeds them from the profile and reads them back as one identity.
"""

from __future__ import annotations

from typing import Any

from tap_emulator.config import Profile
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import ObjectHandler

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
