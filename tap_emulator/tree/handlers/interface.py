"""Object 1024 (interface): the device's login settings, security options and SCRAM hash iteration.

Its session resources (login, logout, current group, SCRAM handshake, encrypted frame) belong to a
connection, so the Tap session serves them; the dispatcher answers them 5.01 for any other face.
What this handler adds to stored values: the profile seeds the security mode and hash iteration, and
the rest of the device reads them through `security_mode` and `hash_iteration`.
"""

from __future__ import annotations

from typing import Any

from tap_emulator.config import Profile, SecurityMode
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import ObjectHandler

__all__ = ["InterfaceHandler"]


@handles("interface")
class InterfaceHandler(ObjectHandler):
    @property
    def security_mode(self) -> SecurityMode:
        return SecurityMode.from_options(self.device_int("security-options"))

    @property
    def hash_iteration(self) -> int:
        """PBKDF2 iterations for keys derived on the device (the model's default until one is set)."""
        return self.device_int("scram-hash-iteration")

    def factory_values(self, profile: Profile) -> dict[int, Any]:
        return {
            self.resource("security-options").id: profile.security.mode.options,
            self.resource("scram-hash-iteration").id: profile.security.hash_iteration,
        }
