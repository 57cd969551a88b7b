"""The device's control operations, in one place for every way in: the HTTP control API
(``/emulator/v1``), ``tap-emulator ctl`` (through that API), ``tap_emulator.testing`` (in-process).

A test rig steers the emulated device as well as talks to it: info and a state dump (never a secret:
the dump reads through the tree as maintenance, and the tree never returns a credential), reboot and
factory reset (C4's ``Emulator.reboot`` / ``factory_reset``, applied live), the Tap sessions and the
failed-login lockouts, the fault plan and the trace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tap_emulator import __version__
from tap_emulator.app import format_address
from tap_emulator.faults import parse_fault_plan
from tap_emulator.model import Operation
from tap_emulator.state.outbox import backlog_status
from tap_emulator.tree import MAINTENANCE, Request

if TYPE_CHECKING:
    from tap_emulator.app import Emulator

__all__ = ["DeviceControl", "NoSuchSession"]

MAX_TRACE_EVENTS = 500


class NoSuchSession(LookupError):
    pass


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class DeviceControl:
    """Control of one running ``Emulator``."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.started_at = time.time()
        self.closed = False  # the device is stopping: event streams end

    def close(self) -> None:
        self.closed = True

    def _tree(self) -> Any:
        tree = self.emulator.tree
        if tree is None:
            raise RuntimeError("the device is not running")
        return tree

    async def info(self) -> dict[str, Any]:
        """Identity, endpoints, what runs (sessions, faults, trace) and the sync backlog."""
        emulator = self.emulator
        tree = self._tree()
        endpoints = {
            kind: None if address is None else format_address(address)
            for kind, address in (
                ("coap", emulator.coap_address),
                ("tcp", emulator.tcp_address),
                ("ws", emulator.ws_address),
                ("http", emulator.http_address),
            )
        }
        backlog = await backlog_status(tree.state)
        face = emulator.tap_face
        return {
            "serial": tree.serial_number,
            "identity": dict(tree.device_identity()),
            "profile": emulator.profile.name,
            "security_mode": tree.security_mode.value,
            "emulator_version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "endpoints": endpoints,
            "sessions": 0 if face is None else face.session_count,
            "faults_active": emulator.faults.active,
            "trace_active": emulator.trace.active,
            "backlog": {
                "pending": backlog.pending,
                "oldest_pending_at": backlog.oldest_pending_at,
                "last_error": backlog.last_error,
                "rejected": backlog.rejected,
            },
        }

    async def state(self) -> dict[str, Any]:
        """Every object's readable values, by object, instance and resource alias (no secret is readable)."""
        tree = self._tree()
        objects: dict[str, Any] = {}
        for obj in sorted(tree.model.objects.values(), key=lambda o: o.id):
            response = await tree.handle(Request(Operation.READ, obj.id, None, caller=MAINTENANCE))
            if not response.status.is_success or not isinstance(response.value, dict):
                continue
            names = {r.id: r.form.alias or str(r.id) for r in obj.resources.values()}

            def named(values: Mapping[int, Any], names: Mapping[int, str] = names) -> dict[str, Any]:
                return {names.get(rid, str(rid)): _jsonable(v) for rid, v in values.items() if v is not None}

            if obj.multiple:
                instances = {str(iid): named(values) for iid, values in response.value.items()}
            else:
                instances = {"0": named(response.value)}
            objects[str(obj.id)] = {"name": obj.name, "alias": obj.alias, "instances": instances}
        return {"serial": tree.serial_number, "objects": objects}

    async def reboot(self) -> None:
        await self.emulator.reboot()

    async def factory_reset(self) -> None:
        await self.emulator.factory_reset()

    def sessions(self) -> list[dict[str, Any]]:
        face = self.emulator.tap_face
        if face is None:
            return []
        return [
            {
                "id": s.id,
                "face": s.transport,
                "peer": s.peer.partition(" ")[2],
                "group": s.group_id,
                "encrypted": s.encrypted,
                "frames": s.frames_answered,
                "opened_at": round(s.opened_at, 3),
            }
            for s in face.sessions
        ]

    def close_session(self, session_id: int) -> None:
        face = self.emulator.tap_face
        if face is None or not face.end_session(session_id):
            raise NoSuchSession(f"no session {session_id}")

    def lockouts(self) -> list[dict[str, Any]]:
        face = self.emulator.tap_face
        return [] if face is None else face.limiter.lockouts(face.clock())

    def clear_lockouts(self) -> int:
        face = self.emulator.tap_face
        return 0 if face is None else face.limiter.clear()

    def faults(self) -> dict[str, Any]:
        return self.emulator.faults.status()

    def set_faults(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the plan (ConfigError for a bad one, naming the key); returns the new status."""
        self.emulator.faults.set_plan(parse_fault_plan(raw, "fault plan"))
        return self.faults()

    def clear_faults(self) -> dict[str, Any]:
        self.emulator.faults.clear()
        return self.faults()

    def go_offline(self, seconds: float) -> dict[str, Any]:
        self.emulator.faults.go_offline(seconds)
        return self.faults()

    def trace(self, limit: int = 100) -> list[dict[str, Any]]:
        events = list(self.emulator.trace.recent)
        return events[-max(0, min(limit, MAX_TRACE_EVENTS)) :] if limit else []

    def set_trace(self, on: bool) -> bool:
        self.emulator.trace.enable(on)
        return self.emulator.trace.active
