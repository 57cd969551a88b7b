"""Response status of the tree: CoAP class.detail codes, stored as the code byte both faces send.

A CoAP face sends ``Status.CONTENT`` (0x45) as code 2.05; the Tap face sends the same byte as its status
(tap-protocol.md C.2). Keeping one enum means one place decides what an outcome is called.
"""

from __future__ import annotations

import enum

__all__ = ["Status"]


class Status(enum.IntEnum):
    CREATED = 0x41  # 2.01
    DELETED = 0x42  # 2.02
    CHANGED = 0x44  # 2.04
    CONTENT = 0x45  # 2.05
    BAD_REQUEST = 0x80  # 4.00
    UNAUTHORIZED = 0x81  # 4.01
    FORBIDDEN = 0x83  # 4.03
    NOT_FOUND = 0x84  # 4.04
    METHOD_NOT_ALLOWED = 0x85  # 4.05
    NOT_ACCEPTABLE = 0x86  # 4.06
    UNSUPPORTED_CONTENT_FORMAT = 0x8F  # 4.15
    INTERNAL_SERVER_ERROR = 0xA0  # 5.00
    NOT_IMPLEMENTED = 0xA1  # 5.01
    SERVICE_UNAVAILABLE = 0xA3  # 5.03

    @property
    def is_success(self) -> bool:
        return self < 0x80

    @property
    def dotted(self) -> str:
        """``2.05`` style, for diagnostics and logs."""
        return f"{self >> 5}.{self & 0x1F:02d}"
