"""A Python client of a running device's control API (``/emulator/v1``), also what ``tap-emulator ctl``
uses. Standard library only (``urllib``), blocking: a script or a rig drives a device with it without
an event loop; an asyncio test calls it through ``asyncio.to_thread`` or uses ``tap_emulator.testing``.
"""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ControlClient", "ControlError", "Unreachable"]

DEFAULT_URL = "http://127.0.0.1:8080"
_MAX_ANSWER = 16 * 1024 * 1024


class ControlError(Exception):
    """The device refused the request (``status`` is the HTTP status, ``code`` the API's)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No device answered at the URL."""


class ControlClient:
    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.base = url.rstrip("/") + "/emulator/v1"
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ControlClient({self.base!r})"  # never the token

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read(_MAX_ANSWER) or b"null")
        except urllib.error.HTTPError as error:
            try:
                document = json.loads(error.read(_MAX_ANSWER))
                code, message = str(document.get("code")), str(document.get("message"))
            except (ValueError, AttributeError):
                code, message = "http_error", error.reason
            raise ControlError(error.code, code, message) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise Unreachable(f"no device answers at {self.base}: {reason}") from None

    def device(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/device")
        return result

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/state")
        return result

    def reboot(self) -> None:
        self._call("POST", "/reboot")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/sessions")
        return result

    def close_session(self, session_id: int) -> None:
        self._call("DELETE", f"/sessions/{int(session_id)}")

    def lockouts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/lockouts")
        return result

    def clear_lockouts(self) -> int:
        return int(self._call("DELETE", "/lockouts")["cleared"])

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/faults")
        return result

    def set_faults(self, plan: dict[str, Any] | str | Path) -> dict[str, Any]:
        """Replace the plan: a mapping, or the path of a ``--faults`` TOML file."""
        if not isinstance(plan, dict):
            plan = tomllib.loads(Path(plan).read_text(encoding="utf-8"))
        result: dict[str, Any] = self._call("PUT", "/faults", plan)
        return result

    def clear_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", "/faults")
        return result

    def offline(self, seconds: float) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/faults/offline", {"seconds": seconds})
        return result

    def trace(self, limit: int = 100) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/trace?limit={int(limit)}")
        return result

    def set_trace(self, enabled: bool) -> bool:
        return bool(self._call("PUT", "/trace", {"enabled": enabled})["active"])

    def variable(self, variable_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/variables/{int(variable_id)}")
        return result

    def set_variable(
        self,
        variable_id: int,
        value: float | list[float] | str | None = None,
        *,
        hex_bytes: str | None = None,
    ) -> dict[str, Any]:
        """Set a variable: ``value`` (a number, a list for an array, text for ASCII) or its raw bytes."""
        body = {"hex": hex_bytes} if hex_bytes is not None else {"value": value}
        result: dict[str, Any] = self._call("PUT", f"/variables/{int(variable_id)}", body)
        return result

    def memory(self, address: int, length: int) -> bytes:
        answer = self._call("GET", f"/memory/{int(address)}?length={int(length)}")
        return bytes.fromhex(answer["hex"])

    def write_memory(self, address: int, data: bytes) -> None:
        self._call("PUT", f"/memory/{int(address)}", {"hex": bytes(data).hex()})
