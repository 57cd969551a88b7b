"""OSCORE credentials for the CoAP face (``--coap-oscore PATH``): authenticated maintenance access.

The CoAP face has no login of its own; OSCORE (RFC 8613, aiocoap's implementation) gives it one at the
message layer. PATH is an aiocoap credentials file (JSON) whose OSCORE entries each name a security
context directory (``basedir``: ``settings.json`` or ``secret.json`` with the sender and recipient ids
and the master secret; aiocoap keeps its sequence numbers beside them). A request one of these contexts
unprotects acts with maintenance rights; every other request keeps the ``--coap-access`` rights.
Needs the ``oscore`` extra (``pip install 'tap-emulator[oscore]'``). Nothing read from the files is
ever logged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tap_emulator.config import ConfigError

__all__ = ["load_oscore_credentials"]


def load_oscore_credentials(path: str) -> Any:
    """An aiocoap CredentialsMap with at least one OSCORE context; ConfigError (exit 2) otherwise."""
    import aiocoap.defaults

    missing = aiocoap.defaults.oscore_missing_modules()
    if missing:
        raise ConfigError(
            "--coap-oscore needs the oscore extra (pip install 'tap-emulator[oscore]'); missing: "
            + ", ".join(missing)
        )
    from aiocoap.credentials import CredentialsMap

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the OSCORE credentials ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the OSCORE credentials must be a JSON object")
    credentials = CredentialsMap()
    try:
        credentials.load_from_dict(data)
    except Exception as exc:  # aiocoap raises several kinds; the message names files and keys, not values
        raise ConfigError(f"{path}: unusable OSCORE credentials: {type(exc).__name__}: {exc}") from None
    if not any(hasattr(item, "get_oscore_context_for") for item in credentials.values()):
        raise ConfigError(f"{path}: no OSCORE security context in the credentials")
    return credentials
