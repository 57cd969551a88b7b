"""The device's control operations, in one place for every way in: the HTTP control API
(``/emulator/v1``), ``tap-emulator ctl`` (through that API), ``tap_emulator.testing`` (in-process).

A test rig steers the emulated device as well as talks to it: info and a state dump (never a secret:
the dump reads through the tree as maintenance, and the tree never returns a credential), reboot and
factory reset (C4's ``Emulator.reboot`` / ``factory_reset``, applied live), the Tap sessions and the
failed-login lockouts, the fault plan and the trace, and the data plane: a variable's value and the
target memory, written through the tree as maintenance (durable, observers told) like a CoAP PUT.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tap_emulator import __version__
from tap_emulator.app import format_address
from tap_emulator.codec.variables import decode_number, encode_number
from tap_emulator.faults import parse_fault_plan
from tap_emulator.model import Operation
from tap_emulator.state.outbox import backlog_status
from tap_emulator.target.memory import TargetMemoryError
from tap_emulator.tree import MAINTENANCE, Request
from tap_emulator.tree.status import Status

if TYPE_CHECKING:
    from tap_emulator.app import Emulator

__all__ = ["MAX_MEMORY_BYTES", "DeviceControl", "NoSuchSession", "Refused"]

MAX_TRACE_EVENTS = 500
MAX_MEMORY_BYTES = 4096  # one memory read or write of the control API


class NoSuchSession(LookupError):
    pass


class Refused(ValueError):
    """The device refused a data-plane request: ``status`` is the HTTP status (from the tree's 4.xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _refused(status: Status, diagnostic: str) -> Refused:
    code = int(status)
    return Refused((code >> 5) * 100 + (code & 0x1F), diagnostic or status.dotted)


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

    async def variable(self, variable_id: int) -> dict[str, Any]:
        """A variable's layout and value (``hex``: its bytes; ``value``: the number, a list for an
        array, text for ASCII), read through the tree as maintenance."""
        tree = self._tree()
        variables = tree.variables
        response = await tree.handle(
            Request(
                Operation.READ,
                variables.obj.id,
                variable_id,
                variables.resource("value").id,
                caller=MAINTENANCE,
            )
        )
        layout = variables.layout(variable_id)
        if not response.status.is_success or layout is None or not isinstance(response.value, bytes):
            raise _refused(response.status, response.diagnostic)
        data, data_type = response.value, layout.data_type
        value: Any
        if data_type.name == "ASCII":
            value = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        else:
            size = data_type.size
            numbers = [decode_number(data_type, data[i : i + size]) for i in range(0, len(data), size)]
            value = numbers[0] if layout.count == 1 else numbers
        return {
            "id": variable_id,
            "type": data_type.name,
            "count": layout.count,
            "address": layout.address,
            "bundle": layout.bundle_id,
            "hex": data.hex(),
            "value": value,
        }

    async def set_variable(
        self, variable_id: int, *, value: Any = None, hex_bytes: str | None = None
    ) -> dict[str, Any]:
        """Write a variable's value as the CoAP PUT of its value resource does (durable before the
        answer, observers told): ``hex_bytes`` (its raw bytes) or ``value`` (a number, a list of
        ``count`` numbers, text for ASCII), encoded in its type as a value source does."""
        tree = self._tree()
        variables = tree.variables
        layout = variables.layout(variable_id)
        if hex_bytes is not None:
            data = _from_hex(hex_bytes)
        elif layout is None:
            raise Refused(404, f"variable {variable_id} does not exist")
        elif layout.data_type.name == "ASCII":
            if not isinstance(value, str):
                raise Refused(400, "an ASCII variable takes text (or hex)")
            data = value.encode("utf-8")
        else:
            numbers = value if isinstance(value, list) else [value]
            if len(numbers) != layout.count or not all(
                isinstance(n, int | float) and not isinstance(n, bool) for n in numbers
            ):
                raise Refused(400, f"variable {variable_id} takes {layout.count} number(s)")
            data = b"".join(encode_number(layout.data_type, n) for n in numbers)
        response = await tree.handle(
            Request(
                Operation.WRITE,
                variables.obj.id,
                variable_id,
                variables.resource("value").id,
                data,
                caller=MAINTENANCE,
            )
        )
        if not response.status.is_success:
            raise _refused(response.status, response.diagnostic)
        return await self.variable(variable_id)

    def _checked_span(self, address: int, length: int) -> None:
        if not 0 < length <= MAX_MEMORY_BYTES:
            raise Refused(400, f"the length must be 1..{MAX_MEMORY_BYTES} bytes, not {length}")
        region = self._tree().memory.region
        if not region.contains(address, length):
            raise Refused(
                400, f"{length} bytes at 0x{address:08X} are outside the target memory {region.describe()}"
            )

    def memory(self, address: int, length: int) -> dict[str, Any]:
        """``length`` bytes of the target memory at ``address``."""
        self._checked_span(address, length)
        try:
            data = self._tree().memory.read(address, length)
        except TargetMemoryError as exc:
            raise Refused(400, str(exc)) from None
        return {"address": address, "length": length, "hex": data.hex()}

    async def write_memory(self, address: int, hex_bytes: str) -> dict[str, Any]:
        """Write target memory through the tree's memory commit (durable before the answer; observers of
        every overlapping variable and of their bundles are told)."""
        data = _from_hex(hex_bytes)
        self._checked_span(address, len(data))
        response = await self._tree().variables.write_memory(address, data)
        if not response.status.is_success:
            raise _refused(response.status, response.diagnostic)
        return self.memory(address, len(data))

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


def _from_hex(text: str) -> bytes:
    if len(text) > 2 * MAX_MEMORY_BYTES:
        raise Refused(400, f"at most {MAX_MEMORY_BYTES} bytes")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Refused(400, "hex must be pairs of hexadecimal digits") from None
