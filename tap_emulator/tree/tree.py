"""The resource tree: one dispatcher over the device's objects, their values, durability and change events.

Every face (CoAP, Tap frames) turns its requests into ``Request(operation, path, value, caller=...)``
and gets back ``Response(status, value)``. The dispatcher resolves each request once, in one place, in
the order existence, allowed operation, limits, rights, all read from the model; then the handler of
the request's object (``tap_emulator.tree.handlers``) does what that object does. A face only
translates representations, so a group renamed through one face is renamed for all of them, and
observers of any face are told through ``subscribe``.

Writes are applied in memory at once (later requests build on them), made durable by the state store
(group commit) and only then acknowledged and announced. Nothing here names an object or a resource:
objects are found by the model's aliases, through their handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tap_emulator.config import AccessPolicy, Profile, SecurityMode
from tap_emulator.model import (
    Behaviour,
    DeviceModel,
    Form,
    ObjectDef,
    Operation,
    ResourceDef,
    ValueError_,
    ValueType,
)
from tap_emulator.security import Credential, SeedCredentials, credential_from_password, draw_user_salt
from tap_emulator.state import (
    Change,
    DeviceState,
    DeviceValueWrite,
    InstanceRow,
    InstanceWrite,
    MemoryPageWrite,
    StateError,
)
from tap_emulator.state.outbox import ReconcileWrites, apply_reconcile_sync
from tap_emulator.target.memory import MemoryRegion, TargetMemory, TargetMemoryError
from tap_emulator.tree.api import (
    MAINTENANCE,
    READ_ONLY_MAINTENANCE,
    Caller,
    ChangeEvent,
    Lifecycle,
    Offload,
    Request,
    Response,
    run_in_thread,
)
from tap_emulator.tree.handlers import ObjectHandler, StoredInstance, Target, handler_class
from tap_emulator.tree.handlers.device import DeviceHandler
from tap_emulator.tree.handlers.group import Account, GroupHandler
from tap_emulator.tree.handlers.interface import InterfaceHandler
from tap_emulator.tree.handlers.variable import VariableHandler
from tap_emulator.tree.status import Status

__all__ = [
    "MAINTENANCE",
    "READ_ONLY_MAINTENANCE",
    "Account",
    "Caller",
    "ChangeEvent",
    "DeviceTree",
    "FactoryState",
    "Lifecycle",
    "Offload",
    "Request",
    "Response",
    "run_in_thread",
]

log = logging.getLogger(__name__)
H = TypeVar("H", bound=ObjectHandler)

_VALUE_TYPES: tuple[tuple[type, ValueType], ...] = ((str, ValueType.STRING), (bytes, ValueType.OPAQUE))


def _row(object_id: int, instance_id: int, inst: StoredInstance) -> InstanceRow:
    return InstanceRow(
        object_id,
        instance_id,
        inst.version,
        inst.deleted,
        dict(inst.values),
        None if inst.credential is None else inst.credential.to_bytes(),
    )


def public_payload(obj: ObjectDef, instance_id: int, inst: StoredInstance) -> dict[str, Any]:
    """The outbox payload of an instance: readable values by alias slug; never a secret."""
    return _payload(obj, instance_id, inst.values, inst.version, inst.deleted, inst.credential is not None)


def stored_payload(obj: ObjectDef, row: InstanceRow) -> dict[str, Any]:
    """`public_payload` of an instance as the state stores it, for the sync of a device whose tree is
    not built (a fleet's idle device)."""
    return _payload(obj, row.instance_id, row.values, row.version, row.deleted, row.credential is not None)


def _payload(
    obj: ObjectDef,
    instance_id: int,
    stored: Mapping[int, Any],
    version: int,
    deleted: bool,
    password_set: bool,
) -> dict[str, Any]:
    values = {}
    for res in obj.resources.values():
        if res.readable and not res.secret and res.id in stored:
            values[res.form.alias] = stored[res.id]
    return {
        "object_id": obj.id,
        "instance_id": instance_id,
        "version": version,
        "deleted": deleted,
        "password_set": password_set,
        "values": {} if deleted else values,
    }


def _outbox_payload(obj: ObjectDef, instance_id: int, inst: StoredInstance) -> dict[str, Any] | None:
    """What the outbox queues for a change: the public payload of a synced object, else nothing."""
    return public_payload(obj, instance_id, inst) if obj.synced else None


@dataclass(frozen=True, slots=True)
class FactoryState:
    """What ``DeviceTree.factory_state`` computes: every change of a factory-fresh state, and its meta."""

    changes: tuple[Change, ...]
    meta: Mapping[str, str]
    instance_writes: tuple[InstanceWrite, ...]  # the instance rows among ``changes`` (a reset announces them)


def _value_type(value: object) -> ValueType:
    if isinstance(value, int) and not isinstance(value, bool):
        return ValueType.INTEGER
    for kind, value_type in _VALUE_TYPES:
        if isinstance(value, kind):
            return value_type
    return ValueType.NONE


class DeviceTree:
    """The device: model + handlers + in-memory values + durable state + change events."""

    def __init__(
        self,
        model: DeviceModel,
        state: DeviceState,
        *,
        access: AccessPolicy,
        random_bytes: Callable[[int], bytes],
        clock_ms: Callable[[], int],
        offload: Offload = run_in_thread,
        memory: MemoryRegion | None = None,
        seed_credentials: SeedCredentials | None = None,
    ) -> None:
        """``seed_credentials``: the credential a factory-fresh group gets for its password; by default
        a salt of this device's own is drawn and derived (a fleet shares one, see SharedSeedCredentials)."""
        self.model = model
        self.seed_credential: SeedCredentials = (
            self._own_seed_credential if seed_credentials is None else seed_credentials
        )
        # The emulated target's memory that variables address (the profile's region).
        self.memory = TargetMemory(memory or MemoryRegion())
        self.access = access
        self.random_bytes = random_bytes
        self.offload = offload
        self._state = state
        self._clock_ms = clock_ms
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        self._changes = 0  # grows with every in-memory change of values or instances (``generation``)
        # What a reboot or factory-reset request sets in motion (the running app); None: refused (5.03).
        self.lifecycle: Lifecycle | None = None
        self._device_values: dict[tuple[int, int], Any] = {}
        self._instances: dict[int, dict[int, StoredInstance]] = {
            o.id: {} for o in model.objects.values() if o.multiple
        }
        self._handlers: dict[int, ObjectHandler] = {
            obj.id: handler_class(obj.alias)(obj, self) for obj in model.objects.values()
        }
        self.groups = self.handler_of(GroupHandler)
        self.interface = self.handler_of(InterfaceHandler)
        self.device = self.handler_of(DeviceHandler)
        self.variables = self.handler_of(VariableHandler)
        self.group_object = self.groups.obj
        self.interface_object = self.interface.obj
        self.device_object = self.device.obj
        self.reload()

    def _own_seed_credential(self, password: str, iterations: int) -> Credential:
        return credential_from_password(password, draw_user_salt(self.random_bytes), iterations)

    def handler_of(self, kind: type[H]) -> H:
        """The handler of the given class; the model must hold its object."""
        for handler in self._handlers.values():
            if isinstance(handler, kind):
                return handler
        raise LookupError(f"the model lacks the {kind.alias or kind.__name__} object")

    # ------------------------------------------------------------------ loading

    @property
    def generation(self) -> int:
        """A number that changes whenever anything a read can observe changes: a stored value or
        instance (at once in memory, before it is durable, and again if it is rolled back), a reload,
        or the target memory (a write, a value source's sample). A rendering of a read is valid for as
        long as it holds, which is what the CoAP fast path's reply cache checks. Change events are not
        enough for that: they are announced after the commit, while reads see the change from the
        moment it is applied. Every handler's read is a function of this state and the caller (none
        reads a clock or draws randomness); one that did would have to be kept out of such caches."""
        return self._changes + self.memory.generation

    def reload(self) -> None:
        """(Re)read everything from the state store."""
        self._changes += 1
        snapshot = self._state.load()
        self._device_values = dict(snapshot.device_values)
        self.memory.load(snapshot.memory_pages)
        for instances in self._instances.values():
            instances.clear()
        for (object_id, instance_id), row in snapshot.instances.items():
            if object_id not in self._instances:
                log.warning("state holds instances of object %d, which the model does not know", object_id)
                continue
            credential = None if row.credential is None else Credential.from_bytes(row.credential)
            self._instances[object_id][instance_id] = StoredInstance(
                dict(row.values), credential, row.version, row.deleted
            )
        for handler in self._handlers.values():
            handler.loaded()

    @property
    def is_fresh(self) -> bool:
        return not self._device_values and not any(self._instances.values())

    def factory_state(
        self, profile: Profile, previous: Mapping[tuple[int, int], InstanceRow] | None = None
    ) -> FactoryState:
        """The changes (and meta) that make a state factory-fresh from ``profile``, written nowhere.

        The one rule of what a fresh device holds: ``seed`` writes it for this device, a fleet writes it
        for many devices in one transaction (each with its own serial in ``profile``). ``previous``: the
        instances the state holds now (a reset tombstones those the profile does not name); None for a
        fresh state.
        """
        device_values, writes = self._factory_writes(profile, previous or {})
        pages = self._factory_memory(profile)
        meta = {"profile": profile.name, "serial_number": profile.device.serial_number}
        return FactoryState((*device_values, *writes, *pages), meta, tuple(writes))

    def seed(self, profile: Profile, *, reset: bool = False) -> None:
        """Write the profile's factory state (on a fresh state, or as a factory reset).

        A reset announces every value and instance it rewrote, so observers of any face are told.
        """
        before = dict(self._device_values)
        factory = self.factory_state(profile, self._state.load().instances)
        if reset:
            self._state.reset_sync(list(factory.changes), factory.meta)
        else:
            self._state.commit_sync(list(factory.changes))
            self._state.set_meta_sync(factory.meta)
        self.reload()
        if reset:
            self._announce_reset(before, list(factory.instance_writes))

    def _announce_reset(self, before: Mapping[tuple[int, int], Any], writes: list[InstanceWrite]) -> None:
        changed: dict[int, set[int]] = {}
        for object_id, resource_id in {*before, *self._device_values}:
            changed.setdefault(object_id, set()).add(resource_id)
        for object_id, resource_ids in sorted(changed.items()):
            self._emit(ChangeEvent(object_id, None, frozenset(resource_ids)))
        for write in writes:
            row = write.row
            resources = frozenset(self.model.objects[row.object_id].resources)
            self._emit(
                ChangeEvent(row.object_id, row.instance_id, resources, row.version, deleted=row.deleted)
            )

    async def settle(self) -> None:
        """Wait until every change already accepted is durable (a barrier before a reload)."""
        await self._state.call(lambda _conn, _key: None)

    def _factory_writes(
        self, profile: Profile, previous: Mapping[tuple[int, int], InstanceRow]
    ) -> tuple[list[DeviceValueWrite], list[InstanceWrite]]:
        """The writes that make a state factory-fresh from ``profile``, as each handler seeds it.

        Instances the profile does not name become tombstones; every version grows past the previous
        one, so the management store accepts the reset as newer than what it holds.
        """
        now = self._clock_ms()
        device_values: list[DeviceValueWrite] = []
        writes: list[InstanceWrite] = []
        for obj_id, handler in self._handlers.items():
            obj = handler.obj
            if not obj.multiple:
                device_values += [
                    DeviceValueWrite(obj_id, r, v) for r, v in handler.factory_values(profile).items()
                ]
                continue
            seeded = handler.factory_instances(profile)
            stale = [
                i for (o, i), row in previous.items() if o == obj_id and i not in seeded and not row.deleted
            ]
            for instance_id in [*seeded, *stale]:
                before = previous.get((obj_id, instance_id))
                version = max(now, before.version + 1 if before else 1)
                fresh = seeded.get(instance_id)
                inst = (
                    StoredInstance(fresh.values, fresh.credential, version)
                    if fresh is not None
                    else StoredInstance({}, None, version, deleted=True)
                )
                writes.append(
                    InstanceWrite(_row(obj_id, instance_id, inst), _outbox_payload(obj, instance_id, inst))
                )
        return device_values, writes

    def _factory_memory(self, profile: Profile) -> list[MemoryPageWrite]:
        """The target memory pages a factory-fresh device holds: the handlers' initial contents."""
        fresh = TargetMemory(self.memory.region)
        spans: list[tuple[int, int]] = []
        for handler in self._handlers.values():
            for address, data in handler.factory_memory(profile).items():
                fresh.write(address, data)
                spans.append((address, len(data)))
        pages: dict[int, bytes] = {}
        for address, length in spans:
            pages.update(fresh.pages_of(address, length))
        return [MemoryPageWrite(page, data) for page, data in sorted(pages.items())]

    # ------------------------------------------------------------------ queries for sessions and sync

    def device_value(self, object_id: int, resource_id: int) -> Any:
        return self._device_values.get((object_id, resource_id))

    def live(self, object_id: int, instance_id: int) -> StoredInstance | None:
        inst = self._instances.get(object_id, {}).get(instance_id)
        return None if inst is None or inst.deleted else inst

    def live_instances(self, object_id: int) -> dict[int, StoredInstance]:
        return {i: inst for i, inst in self._instances.get(object_id, {}).items() if not inst.deleted}

    @property
    def security_mode(self) -> SecurityMode:
        return self.interface.security_mode

    @property
    def hash_iteration(self) -> int:
        return self.interface.hash_iteration

    @property
    def serial_number(self) -> str:
        return self.device.serial_number

    def device_identity(self) -> dict[str, str]:
        return self.device.identity()

    def account(self, group_id: int) -> Account | None:
        return self.groups.account(group_id)

    def find_account(self, name: str) -> Account | None:
        return self.groups.find_account(name)

    async def set_security_mode(self, mode: SecurityMode) -> None:
        """Switch the device's login mode (the ``--security`` override), durably."""
        resource = self.interface.resource("security-options")
        request = Request(
            Operation.WRITE, self.interface_object.id, None, resource.id, mode.options, caller=MAINTENANCE
        )
        response = await self.handle(request)
        if not response.status.is_success:
            raise RuntimeError(f"cannot set the security mode: {response.diagnostic}")

    def wire_form(self, obj: ObjectDef, resource: ResourceDef, body: bytes) -> Form:
        """Which form a Tap write body is in (the object's handler decides for resources with several)."""
        return self._handlers[obj.id].wire_form(resource, body)

    def instance_ids(self, object_id: int) -> list[int]:
        return sorted(self.live_instances(object_id))

    def outbox_payload(self, object_id: int, instance_id: int) -> dict[str, Any] | None:
        inst = self._instances.get(object_id, {}).get(instance_id)
        obj = self.model.objects[object_id]
        return None if inst is None else public_payload(obj, instance_id, inst)

    @property
    def state(self) -> DeviceState:
        return self._state

    async def sync_tree(self) -> DeviceTree:
        """The tree a sync reconcile applies its writes to: this one (see tap_emulator.sync.SyncSubject,
        where a lazy fleet device builds its tree here)."""
        return self

    def apply_reconcile(self, writes: ReconcileWrites, now: float) -> int:
        """Apply the sync task's reconcile (re-versions and tombstones) to the state and to the tree at
        once; returns the outbox rows queued. Blocking on purpose (a few milliseconds, rare): the state
        write and the tree's view must not interleave with a request, or a change could be versioned
        below the bump."""
        queued = apply_reconcile_sync(self._state, writes, now)
        if writes.bumps or writes.tombstones:
            self.reload()
        return queued

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Call ``listener`` after every durable change; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: ChangeEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a change listener failed")

    # ------------------------------------------------------------------ requests

    async def handle(self, request: Request) -> Response:
        """Serve one request; unexpected failures become 5.00 and are logged, never raised."""
        try:
            return await self._dispatch(request)
        except Exception:
            log.exception(
                "internal error serving %s /%s/%s/%s",
                request.operation.name,
                request.object_id,
                "" if request.instance_id is None else request.instance_id,
                "" if request.resource_id is None else request.resource_id,
            )
            return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="internal error")

    async def _dispatch(self, req: Request) -> Response:
        resolved = self._resolve(req)
        if isinstance(resolved, Response):
            return resolved
        handler = self._handlers[resolved.obj.id]
        resource = resolved.resource
        if resource is None:
            if req.operation is Operation.DELETE:
                return await handler.delete(resolved)
            return handler.read_container(resolved)
        if resource.behaviour is Behaviour.CREATE:
            return await handler.create(resolved)
        if req.operation is Operation.READ:
            return handler.read(resolved)
        return await handler.write(resolved)

    def _resolve(self, req: Request) -> Target | Response:
        """The one resolve step: existence, then allowed operation, then limits, then rights."""
        obj = self.model.objects.get(req.object_id)
        if obj is None:
            return Response(Status.NOT_FOUND, diagnostic=f"no object {req.object_id}")
        if req.instance_id is not None and not obj.multiple:
            return Response(Status.NOT_FOUND, diagnostic=f"object {obj.id} has a single instance")
        if req.instance_id is not None and not obj.valid_instance(req.instance_id):
            return Response(Status.NOT_FOUND, diagnostic=f"instance id {req.instance_id} is out of range")
        res = None if req.resource_id is None else obj.resources.get(req.resource_id)
        if req.resource_id is not None and res is None:
            return Response(Status.NOT_FOUND, diagnostic=f"object {obj.id} has no resource {req.resource_id}")
        on_object = res is not None and res.object_read and req.operation is Operation.READ
        if res is not None and obj.multiple and req.instance_id is None and not on_object:
            return Response(Status.NOT_FOUND, diagnostic="an instance id is required")
        creates = res is not None and res.behaviour is Behaviour.CREATE
        inst = None if req.instance_id is None else self.live(obj.id, req.instance_id)
        if req.instance_id is not None and inst is None and not creates:
            return Response(
                Status.NOT_FOUND, diagnostic=f"{obj.name.lower()} {req.instance_id} does not exist"
            )
        # allowed operation: a container is read; an instance of a multiple-instance object is deleted
        deletes_instance = res is None and inst is not None and req.operation is Operation.DELETE
        if res is None and req.operation is not Operation.READ and not deletes_instance:
            return Response(
                Status.METHOD_NOT_ALLOWED,
                diagnostic="an instance is read or deleted, an object read",
            )
        if res is not None and req.operation not in res.operations:
            return Response(
                Status.METHOD_NOT_ALLOWED, diagnostic=f"{req.operation.name} is not allowed on {res.name}"
            )
        if res is not None and res.behaviour is Behaviour.SESSION:
            return Response(Status.NOT_IMPLEMENTED, diagnostic=f"{res.name} is served by a Tap session only")
        if creates and inst is not None:
            return Response(
                Status.BAD_REQUEST, diagnostic=f"{obj.name.lower()} {req.instance_id} already exists"
            )
        # limits
        form = None
        if res is not None and req.operation is not Operation.READ:
            checked = self._checked_form(req, obj, res)
            if isinstance(checked, Response):
                return checked
            form = checked
        target = Target(req, obj, res, inst, form)
        # rights
        if req.caller.read_only and req.operation is not Operation.READ:
            return Response(Status.UNAUTHORIZED, diagnostic="this access is read-only")
        caller = req.caller.group_id
        if caller is None:
            return target
        return self._handlers[obj.id].authorize(caller, target) or target

    def _checked_form(self, req: Request, obj: ObjectDef, res: ResourceDef) -> Form | Response:
        """The form a write addresses, once the value is known to fit the model's limits for it."""
        form = (
            res.form
            if res.behaviour is Behaviour.CREATE
            else req.form or res.form_for_type(_value_type(req.value))
        )
        if form is None:
            return Response(Status.BAD_REQUEST, diagnostic=f"{res.name} does not take this kind of value")
        try:
            form.validate(req.value)
        except ValueError_ as exc:
            return Response(Status.BAD_REQUEST, diagnostic=f"{res.name}: {exc}")
        if res.behaviour is Behaviour.REFERENCE and (
            not isinstance(req.value, int) or self.live(obj.id, req.value) is None
        ):
            return Response(
                Status.BAD_REQUEST, diagnostic=f"{res.name}: {obj.name.lower()} {req.value} does not exist"
            )
        return form

    # ------------------------------------------------------------------ commits (for the handlers)

    async def commit_value(self, obj: ObjectDef, resource: ResourceDef, value: Any) -> Response:
        """Store a value of a single-instance object durably, then announce it."""
        try:
            await self._state.commit([DeviceValueWrite(obj.id, resource.id, value)])
        except StateError:  # logged by the state, once per episode
            return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="the change could not be stored")
        self._device_values[(obj.id, resource.id)] = value
        self._changes += 1
        self._emit(ChangeEvent(obj.id, None, frozenset({resource.id})))
        return Response(Status.CHANGED)

    async def delete_instance(self, obj: ObjectDef, instance_id: int) -> Response:
        """Delete an instance: a tombstone (versioned, so the management store hears of it), durable
        before it is announced; the instance id can be created again."""
        instances = self._instances[obj.id]
        previous = instances.get(instance_id)
        if previous is None or previous.deleted:
            return Response(Status.NOT_FOUND, diagnostic=f"{obj.name.lower()} {instance_id} does not exist")
        version = max(self._clock_ms(), previous.version + 1)
        tombstone = StoredInstance({}, None, version, deleted=True)
        instances[instance_id] = tombstone
        self._changes += 1
        handler = self._handlers[obj.id]
        handler.loaded()
        try:
            await self._state.commit(
                [
                    InstanceWrite(
                        _row(obj.id, instance_id, tombstone), _outbox_payload(obj, instance_id, tombstone)
                    )
                ]
            )
        except StateError:
            if instances.get(instance_id) is tombstone:
                instances[instance_id] = previous
                self._changes += 1
                handler.loaded()
            return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="the change could not be stored")
        self._emit(ChangeEvent(obj.id, instance_id, frozenset(), version, deleted=True))
        return Response(Status.DELETED)

    async def commit_memory(
        self, address: int, data: bytes, events: list[ChangeEvent], *, durable: bool = True
    ) -> Response:
        """Write target memory: at once in memory, then (``durable``) the pages it touched to the state
        (the bytes are restored if that fails), then ``events`` are announced."""
        try:
            previous = self.memory.read(address, len(data))
            self.memory.write(address, data)
        except TargetMemoryError as exc:
            return Response(Status.BAD_REQUEST, diagnostic=str(exc))
        if durable:
            pages = self.memory.pages_of(address, len(data))
            try:
                await self._state.commit([MemoryPageWrite(p, d) for p, d in pages.items()])
            except StateError:  # logged by the state, once per episode
                if self.memory.read(address, len(data)) == data:  # unless a later write replaced them
                    self.memory.write(address, previous)
                return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="the change could not be stored")
        for event in events:
            self._emit(event)
        return Response(Status.CHANGED)

    def emit(self, event: ChangeEvent) -> None:
        """Announce a change a handler made without a commit (a value source's memory write)."""
        self._emit(event)

    async def commit_instance(
        self,
        obj: ObjectDef,
        instance_id: int,
        values: dict[int, Any],
        credential: Credential | None,
        changed: frozenset[int],
        *,
        created: bool = False,
    ) -> Response:
        """Replace an instance: at once in memory, then durably (rolled back if the state fails), then
        announced. The handler learns of the change (``loaded``) both ways."""
        handler = self._handlers[obj.id]
        instances = self._instances[obj.id]
        previous = instances.get(instance_id)
        version = max(self._clock_ms(), previous.version + 1 if previous else 1)
        current = StoredInstance(values, credential, version)
        instances[instance_id] = current
        self._changes += 1
        handler.loaded()
        try:
            await self._state.commit(
                [
                    InstanceWrite(
                        _row(obj.id, instance_id, current), _outbox_payload(obj, instance_id, current)
                    )
                ]
            )
        except StateError:  # logged by the state, once per episode (a full disk fails every write)
            if instances.get(instance_id) is current:
                if previous is None:
                    del instances[instance_id]
                else:
                    instances[instance_id] = previous
                self._changes += 1
                handler.loaded()
            return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="the change could not be stored")
        self._emit(ChangeEvent(obj.id, instance_id, changed, version, created=created))
        return Response(Status.CHANGED)
