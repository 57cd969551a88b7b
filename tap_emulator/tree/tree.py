"""The resource tree: the device's objects, instances and values behind one neutral request API.

Every face (CoAP, Tap frames) turns its requests into ``Request(operation, path, value, caller)`` and
gets back ``Response(status, value)``. All rules live here and in the model: existence, allowed
operations, value limits, references, credentials, rights, durability and change events. A face only
translates representations, so a group renamed through one face is renamed for all of them, and
observers of any face are told through ``subscribe``.

Writes are applied in memory at once (later requests build on them), made durable by the state store
(group commit) and only then acknowledged and announced. Semantic anchors are the model's alias slugs
(``name``, ``alias``, ``scram-user-salt`` ...), never resource id literals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tap_emulator.config import ANONYMOUS_GROUP, AccessPolicy, Profile, SecurityMode
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
from tap_emulator.security import (
    Credential,
    CredentialError,
    credential_from_key,
    credential_from_password,
    draw_user_salt,
)
from tap_emulator.state import DeviceState, DeviceValueWrite, InstanceRow, InstanceWrite, StateError
from tap_emulator.tree.status import Status

__all__ = [
    "MAINTENANCE",
    "Account",
    "Caller",
    "ChangeEvent",
    "DeviceTree",
    "Offload",
    "Request",
    "Response",
    "factory_changes",
    "run_in_thread",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Semantic anchors: alias slugs of the model, the stable names of the GroupService API.
GROUP_OBJECT = "group"
NAME, ALIAS, SALT, ITERATION, LIFETIME = (
    "name",
    "alias",
    "scram-user-salt",
    "scram-user-iteration",
    "session-lifetime",
)
INTERFACE_OBJECT, SECURITY_OPTIONS, HASH_ITERATION = "interface", "security-options", "scram-hash-iteration"
DEVICE_OBJECT = "device"
DEVICE_IDENTITY = {
    "manufacturer": "manufacturer",
    "model": "model",
    "serial-number": "serial_number",
    "firmware-version": "firmware_version",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request: a logged-in group id, or ``None`` for the unrestricted maintenance role."""

    group_id: int | None


MAINTENANCE = Caller(None)


@dataclass(frozen=True, slots=True)
class Request:
    operation: Operation
    object_id: int
    instance_id: int | None = None
    resource_id: int | None = None
    value: object = field(default=None, repr=False)
    caller: Caller = MAINTENANCE
    form: Form | None = None  # set when the face addressed one form (an alias path such as password-key)


@dataclass(frozen=True, slots=True)
class Response:
    status: Status
    value: object = None
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    object_id: int
    instance_id: int | None
    resource_ids: frozenset[int]
    version: int | None = None
    created: bool = False
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Account:
    """What a login needs to know of a group (for the Tap session)."""

    group_id: int
    name: str
    alias: int
    session_lifetime: int
    credential: Credential | None = field(repr=False)


@dataclass(slots=True)
class _Instance:
    values: dict[int, Any]
    credential: Credential | None
    version: int
    deleted: bool = False


def _row(object_id: int, instance_id: int, inst: _Instance) -> InstanceRow:
    return InstanceRow(
        object_id,
        instance_id,
        inst.version,
        inst.deleted,
        dict(inst.values),
        None if inst.credential is None else inst.credential.to_bytes(),
    )


def public_payload(obj: ObjectDef, instance_id: int, inst: _Instance) -> dict[str, Any]:
    """The outbox payload of an instance: readable values by alias slug; never a secret."""
    values = {}
    for res in obj.resources.values():
        if res.readable and not res.secret and res.id in inst.values:
            values[res.form.alias] = inst.values[res.id]
    return {
        "object_id": obj.id,
        "instance_id": instance_id,
        "version": inst.version,
        "deleted": inst.deleted,
        "password_set": inst.credential is not None,
        "values": {} if inst.deleted else values,
    }


def _resource(obj: ObjectDef, slug: str) -> ResourceDef:
    entry = obj.forms_by_alias.get(slug)
    if entry is None:
        raise LookupError(f"the model's object {obj.id} has no resource with alias {slug!r}")
    return entry[0]


def _scram_fields(credential: Credential | None) -> tuple[int, int]:
    """(salt as uint32, iteration) that resources 16 and 7 show for a credential; 0 when no SCRAM key."""
    if credential is None or credential.scram is None:
        return 0, 0
    return int.from_bytes(credential.scram.salt, "big"), credential.scram.iterations


def factory_changes(
    model: DeviceModel,
    profile: Profile,
    previous: Mapping[tuple[int, int], InstanceRow],
    *,
    random_bytes: Callable[[int], bytes],
    clock_ms: Callable[[], int],
) -> tuple[list[DeviceValueWrite], list[InstanceWrite]]:
    """The writes that make a state factory-fresh from ``profile``.

    Groups the profile does not name become tombstones; every version grows past the previous one, so
    the management store accepts the reset as newer than what it holds.
    """
    group_obj = model.object_by_alias(GROUP_OBJECT)
    iface = model.object_by_alias(INTERFACE_OBJECT)
    device = model.object_by_alias(DEVICE_OBJECT)
    if group_obj is None or iface is None or device is None:
        raise LookupError("the model lacks the group, interface or device object")
    device_values = [
        DeviceValueWrite(device.id, _resource(device, slug).id, getattr(profile.device, attr))
        for slug, attr in DEVICE_IDENTITY.items()
    ]
    device_values.append(
        DeviceValueWrite(iface.id, _resource(iface, SECURITY_OPTIONS).id, profile.security.mode.options)
    )
    device_values.append(
        DeviceValueWrite(iface.id, _resource(iface, HASH_ITERATION).id, profile.security.hash_iteration)
    )
    now = clock_ms()

    def next_version(instance_id: int) -> int:
        prev = previous.get((group_obj.id, instance_id))
        return max(now, prev.version + 1 if prev else 1)

    writes: list[InstanceWrite] = []
    seeded = set()
    for seed in profile.groups:
        values = {r.id: r.default_value(seed.id) for r in group_obj.stored_resources()}
        values[_resource(group_obj, NAME).id] = seed.name
        values[_resource(group_obj, LIFETIME).id] = seed.session_lifetime
        values[_resource(group_obj, ALIAS).id] = seed.id if seed.alias is None else seed.alias
        credential = None
        if seed.password is not None:
            credential = credential_from_password(
                seed.password, draw_user_salt(random_bytes), profile.security.hash_iteration
            )
        salt, iteration = _scram_fields(credential)
        values[_resource(group_obj, SALT).id] = salt
        values[_resource(group_obj, ITERATION).id] = iteration
        inst = _Instance(values, credential, next_version(seed.id))
        writes.append(
            InstanceWrite(_row(group_obj.id, seed.id, inst), public_payload(group_obj, seed.id, inst))
        )
        seeded.add(seed.id)
    for (object_id, instance_id), row in previous.items():
        if object_id == group_obj.id and instance_id not in seeded and not row.deleted:
            tomb = _Instance({}, None, next_version(instance_id), deleted=True)
            writes.append(
                InstanceWrite(
                    _row(object_id, instance_id, tomb), public_payload(group_obj, instance_id, tomb)
                )
            )
    return device_values, writes


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """The default ``Offload``: a worker thread of the event loop's default executor."""
    return await asyncio.to_thread(fn, *args)


Offload = Callable[..., Awaitable[Any]]
"""``await offload(fn, *args)`` runs a module-level function off the event loop (a thread, or the
low-priority process of ``tap_emulator.security.worker``)."""


class DeviceTree:
    """The device: model + in-memory values + durable state + change events + rights."""

    def __init__(
        self,
        model: DeviceModel,
        state: DeviceState,
        *,
        access: AccessPolicy,
        random_bytes: Callable[[int], bytes],
        clock_ms: Callable[[], int],
        offload: Offload = run_in_thread,
    ) -> None:
        self.model = model
        self.access = access
        self._state = state
        self._random_bytes = random_bytes
        self._clock_ms = clock_ms
        self._offload = offload
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        group_obj = model.object_by_alias(GROUP_OBJECT)
        iface = model.object_by_alias(INTERFACE_OBJECT)
        device = model.object_by_alias(DEVICE_OBJECT)
        if group_obj is None or iface is None or device is None:
            raise LookupError("the model lacks the group, interface or device object")
        self.group_object = group_obj
        self.interface_object = iface
        self.device_object = device
        self._name_id = _resource(group_obj, NAME).id
        self._alias_id = _resource(group_obj, ALIAS).id
        self._salt_id = _resource(group_obj, SALT).id
        self._iteration_id = _resource(group_obj, ITERATION).id
        self._lifetime_id = _resource(group_obj, LIFETIME).id
        self._security_key = (iface.id, _resource(iface, SECURITY_OPTIONS).id)
        self._hash_iteration_key = (iface.id, _resource(iface, HASH_ITERATION).id)
        self._device_values: dict[tuple[int, int], Any] = {}
        self._instances: dict[int, dict[int, _Instance]] = {
            o.id: {} for o in model.objects.values() if o.multiple
        }
        self._name_index: dict[str, int] = {}
        self.reload()

    # ------------------------------------------------------------------ loading

    def reload(self) -> None:
        """(Re)read everything from the state store."""
        snapshot = self._state.load()
        self._device_values = dict(snapshot.device_values)
        for instances in self._instances.values():
            instances.clear()
        for (object_id, instance_id), row in snapshot.instances.items():
            if object_id not in self._instances:
                log.warning("state holds instances of object %d, which the model does not know", object_id)
                continue
            credential = None if row.credential is None else Credential.from_bytes(row.credential)
            self._instances[object_id][instance_id] = _Instance(
                dict(row.values), credential, row.version, row.deleted
            )
        self._rebuild_name_index()

    @property
    def is_fresh(self) -> bool:
        return not self._device_values and not any(self._instances.values())

    def seed(self, profile: Profile, *, reset: bool = False) -> None:
        """Write the profile's factory state (on a fresh state, or as a factory reset)."""
        previous = self._state.load().instances
        device_values, writes = factory_changes(
            self.model, profile, previous, random_bytes=self._random_bytes, clock_ms=self._clock_ms
        )
        meta = {"profile": profile.name, "serial_number": profile.device.serial_number}
        if reset:
            self._state.reset_sync([*device_values, *writes], meta)
        else:
            self._state.commit_sync([*device_values, *writes])
            self._state.set_meta_sync(meta)
        self.reload()

    def _rebuild_name_index(self) -> None:
        """Login names to groups. Empty names are no login. Names are unique since writes refuse a
        duplicate; a state written before that may hold one, which then designates the group ranked
        highest (the lowest id among equals), never a group a lower one could have renamed."""
        live = [gid for gid, inst in self._instances[self.group_object.id].items() if not inst.deleted]
        self._name_index = {}
        for gid in sorted(live, key=lambda g: (self._rank_of(g), g)):
            name = self._instances[self.group_object.id][gid].values.get(self._name_id, "")
            if name:
                self._name_index.setdefault(name, gid)

    # ------------------------------------------------------------------ queries for sessions and sync

    def device_value(self, object_id: int, resource_id: int) -> Any:
        return self._device_values.get((object_id, resource_id))

    @property
    def security_mode(self) -> SecurityMode:
        return SecurityMode.from_options(int(self._device_values.get(self._security_key, 0)))

    @property
    def hash_iteration(self) -> int:
        return int(self._device_values.get(self._hash_iteration_key, 5000))

    @property
    def serial_number(self) -> str:
        res = _resource(self.device_object, "serial-number")
        return str(self._device_values.get((self.device_object.id, res.id), ""))

    def device_identity(self) -> dict[str, str]:
        return {
            attr: str(
                self._device_values.get((self.device_object.id, _resource(self.device_object, slug).id), "")
            )
            for slug, attr in DEVICE_IDENTITY.items()
        }

    async def set_security_mode(self, mode: SecurityMode) -> None:
        """Switch the device's login mode (the ``--security`` override), durably."""
        object_id, resource_id = self._security_key
        response = await self.handle(Request(Operation.WRITE, object_id, None, resource_id, mode.options))
        if not response.status.is_success:
            raise RuntimeError(f"cannot set the security mode: {response.diagnostic}")

    def account(self, group_id: int) -> Account | None:
        inst = self._instances[self.group_object.id].get(group_id)
        if inst is None or inst.deleted:
            return None
        return Account(
            group_id,
            inst.values.get(self._name_id, ""),
            inst.values.get(self._alias_id, group_id),
            inst.values.get(self._lifetime_id, 0),
            inst.credential,
        )

    def find_account(self, name: str) -> Account | None:
        """The group a login name designates: exact match (case and spaces count); "" is nobody."""
        gid = self._name_index.get(name)
        return None if gid is None else self.account(gid)

    def instance_ids(self, object_id: int) -> list[int]:
        return sorted(i for i, inst in self._instances.get(object_id, {}).items() if not inst.deleted)

    def outbox_payload(self, object_id: int, instance_id: int) -> dict[str, Any] | None:
        inst = self._instances.get(object_id, {}).get(instance_id)
        obj = self.model.objects[object_id]
        return None if inst is None else public_payload(obj, instance_id, inst)

    @property
    def state(self) -> DeviceState:
        return self._state

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
        obj = self.model.objects.get(req.object_id)
        if obj is None:
            return Response(Status.NOT_FOUND, diagnostic=f"no object {req.object_id}")
        if req.instance_id is not None and not obj.multiple:
            return Response(Status.NOT_FOUND, diagnostic=f"object {obj.id} has a single instance")
        if req.instance_id is not None and not obj.valid_instance(req.instance_id):
            return Response(Status.NOT_FOUND, diagnostic=f"instance id {req.instance_id} is out of range")
        if req.resource_id is None:
            return self._read_container(req, obj)
        res = obj.resources.get(req.resource_id)
        if res is None:
            return Response(Status.NOT_FOUND, diagnostic=f"object {obj.id} has no resource {req.resource_id}")
        if obj.multiple and req.instance_id is None:
            return Response(Status.NOT_FOUND, diagnostic="an instance id is required")
        if req.operation not in res.operations:
            return Response(
                Status.METHOD_NOT_ALLOWED, diagnostic=f"{req.operation.name} is not allowed on {res.name}"
            )
        if res.behaviour is Behaviour.SESSION:
            return Response(Status.NOT_IMPLEMENTED, diagnostic=f"{res.name} is served by a Tap session only")
        if res.behaviour is Behaviour.CREATE:
            return await self._create(req, obj, res)
        inst = None
        if obj.multiple:
            assert req.instance_id is not None
            inst = self._live(obj, req.instance_id)
            if inst is None:
                return Response(
                    Status.NOT_FOUND, diagnostic=f"{obj.name.lower()} {req.instance_id} does not exist"
                )
        denied = self._authorize(req, obj, res)
        if denied is not None:
            return denied
        if req.operation is Operation.READ:
            values = inst.values if inst is not None else {res.id: self._device_values.get((obj.id, res.id))}
            return Response(Status.CONTENT, values.get(res.id, res.default_value(req.instance_id)))
        if res.behaviour is Behaviour.CREDENTIAL:
            return await self._set_credential(req, obj, res)
        return await self._write(req, obj, res, inst)

    def _live(self, obj: ObjectDef, instance_id: int) -> _Instance | None:
        inst = self._instances[obj.id].get(instance_id)
        return None if inst is None or inst.deleted else inst

    def _read_container(self, req: Request, obj: ObjectDef) -> Response:
        if req.operation is not Operation.READ:
            return Response(
                Status.METHOD_NOT_ALLOWED, diagnostic="only GET is allowed on an instance or object"
            )
        denied = self._authorize(req, obj, None)
        if denied is not None:
            return denied
        readable = [r for r in obj.resources.values() if r.readable and r.behaviour is not Behaviour.SESSION]
        if not obj.multiple:
            return Response(Status.CONTENT, {r.id: self._device_values.get((obj.id, r.id)) for r in readable})
        if req.instance_id is None:
            return Response(
                Status.CONTENT,
                {
                    gid: {r.id: inst.values.get(r.id) for r in readable}
                    for gid, inst in sorted(self._instances[obj.id].items())
                    if not inst.deleted
                },
            )
        inst = self._live(obj, req.instance_id)
        if inst is None:
            return Response(
                Status.NOT_FOUND, diagnostic=f"{obj.name.lower()} {req.instance_id} does not exist"
            )
        return Response(Status.CONTENT, {r.id: inst.values.get(r.id) for r in readable})

    def _authorize(self, req: Request, obj: ObjectDef, res: ResourceDef | None) -> Response | None:
        caller = req.caller.group_id
        if caller is None:
            return None
        if req.operation is Operation.READ:
            if caller == ANONYMOUS_GROUP and obj is self.group_object and not self.access.anonymous_read:
                return Response(Status.UNAUTHORIZED, diagnostic="log in to read groups")
            return None
        account = self.account(caller)
        profile = account.alias if account is not None else caller
        if caller not in self.access.writers and profile not in self.access.writers:
            return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not write")
        if obj is self.group_object and req.instance_id is not None:
            return self._authorize_over_group(caller, req.instance_id, res, req.value)
        return None

    def _rank_of(self, group_id: int) -> int:
        """A group's place in the profile order (0 is admin): the better of its id's and its profile's."""
        account = self.account(group_id)
        alias = group_id if account is None else account.alias
        return min(self.access.rank(group_id), self.access.rank(alias))

    def _authorize_over_group(
        self, caller: int, target: int, res: ResourceDef | None, value: object
    ) -> Response | None:
        """One rule for every write to a group (password, salt, iteration, alias, name, lifetime, create):
        a group may change only groups ranked strictly below it, and may not give one a rank as high as
        its own through the alias. Its own group it may change, except its alias (its own rights).
        Admin may change every group, and only admin may change admin."""
        if caller == self.access.admin_group:
            return None
        changes_alias = res is not None and res.id == self._alias_id
        if target == caller and not changes_alias:
            return None
        rank = self._rank_of(caller)
        if self._rank_of(target) <= rank:
            return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not change group {target}")
        if changes_alias and isinstance(value, int) and self.access.rank(value) <= rank:
            return Response(
                Status.UNAUTHORIZED, diagnostic=f"group {caller} may not grant the rights of group {value}"
            )
        return None

    def _pick_form(self, req: Request, res: ResourceDef) -> Form | Response:
        if req.form is not None:
            return req.form
        value_type = (
            ValueType.STRING
            if isinstance(req.value, str)
            else ValueType.OPAQUE
            if isinstance(req.value, bytes)
            else ValueType.INTEGER
            if isinstance(req.value, int) and not isinstance(req.value, bool)
            else ValueType.NONE
        )
        form = res.form_for_type(value_type)
        if form is None:
            return Response(Status.BAD_REQUEST, diagnostic=f"{res.name} does not take this kind of value")
        return form

    def _validated_form(self, req: Request, res: ResourceDef) -> Form | Response:
        """The form a write addresses, once the value is known to fit it (else a 4.00 response)."""
        form = self._pick_form(req, res)
        if isinstance(form, Response):
            return form
        try:
            form.validate(req.value)
        except ValueError_ as exc:
            return Response(Status.BAD_REQUEST, diagnostic=f"{res.name}: {exc}")
        return form

    async def _write(
        self, req: Request, obj: ObjectDef, res: ResourceDef, inst: _Instance | None
    ) -> Response:
        form = self._validated_form(req, res)
        if isinstance(form, Response):
            return form
        value: Any = req.value
        if res.behaviour is Behaviour.REFERENCE and self._live(obj, value) is None:
            return Response(
                Status.BAD_REQUEST, diagnostic=f"{res.name}: {obj.name.lower()} {value} does not exist"
            )
        if obj is self.group_object and res.id == self._name_id and value:
            holder = self._name_index.get(value)
            if holder is not None and holder != req.instance_id:
                return Response(Status.BAD_REQUEST, diagnostic=f"{res.name}: another group has this name")
        if inst is None:
            key = (obj.id, res.id)
            await self._state.commit([DeviceValueWrite(obj.id, res.id, value)])
            self._device_values[key] = value
            self._emit(ChangeEvent(obj.id, None, frozenset({res.id})))
            return Response(Status.CHANGED)
        assert req.instance_id is not None
        values = dict(inst.values)
        values[res.id] = value
        credential = inst.credential
        scram = None if credential is None else credential.scram
        if credential is not None and scram is not None:
            # A low-level write of salt or iteration changes what the login announces, keys unchanged.
            if res.id == self._salt_id:
                scram = scram.with_salt(value.to_bytes(4, "big"))
            elif res.id == self._iteration_id:
                scram = scram.with_iterations(value)
            credential = Credential(credential.password_hash, scram)
        return await self._commit_instance(obj, req.instance_id, values, credential, frozenset({res.id}))

    async def _set_credential(self, req: Request, obj: ObjectDef, res: ResourceDef) -> Response:
        form = self._validated_form(req, res)
        if isinstance(form, Response):
            return form
        iterations = self.hash_iteration
        try:
            if isinstance(req.value, str):
                salt = draw_user_salt(self._random_bytes)
                credential: Credential = await self._offload(
                    credential_from_password, req.value, salt, iterations
                )
            elif isinstance(req.value, bytes):
                credential = credential_from_key(req.value, iterations)
            else:
                return Response(Status.BAD_REQUEST, diagnostic=f"{res.name} needs a password or a key")
        except CredentialError as exc:
            return Response(Status.BAD_REQUEST, diagnostic=f"{res.name}: {exc}")
        assert req.instance_id is not None
        inst = self._live(obj, req.instance_id)
        if inst is None:  # reset while deriving
            return Response(
                Status.NOT_FOUND, diagnostic=f"{obj.name.lower()} {req.instance_id} does not exist"
            )
        values = dict(inst.values)
        values[self._salt_id], values[self._iteration_id] = _scram_fields(credential)
        changed = frozenset({res.id, self._salt_id, self._iteration_id})
        return await self._commit_instance(obj, req.instance_id, values, credential, changed)

    async def _create(self, req: Request, obj: ObjectDef, res: ResourceDef) -> Response:
        denied = self._authorize(req, obj, res)
        if denied is not None:
            return denied
        try:
            res.form.validate(req.value)
        except ValueError_ as exc:
            return Response(Status.BAD_REQUEST, diagnostic=f"{res.name}: {exc}")
        assert req.instance_id is not None
        if self._live(obj, req.instance_id) is not None:
            return Response(
                Status.BAD_REQUEST, diagnostic=f"{obj.name.lower()} {req.instance_id} already exists"
            )
        values = {r.id: r.default_value(req.instance_id) for r in obj.stored_resources()}
        response = await self._commit_instance(
            obj, req.instance_id, values, None, frozenset(values), created=True
        )
        return Response(Status.CREATED) if response.status is Status.CHANGED else response

    async def _commit_instance(
        self,
        obj: ObjectDef,
        instance_id: int,
        values: dict[int, Any],
        credential: Credential | None,
        changed: frozenset[int],
        *,
        created: bool = False,
    ) -> Response:
        instances = self._instances[obj.id]
        previous = instances.get(instance_id)
        version = max(self._clock_ms(), previous.version + 1 if previous else 1)
        current = _Instance(values, credential, version)
        instances[instance_id] = current
        if obj is self.group_object:
            self._rebuild_name_index()
        try:
            await self._state.commit(
                [InstanceWrite(_row(obj.id, instance_id, current), public_payload(obj, instance_id, current))]
            )
        except StateError:
            log.exception("could not store a change of %s %d", obj.name.lower(), instance_id)
            if instances.get(instance_id) is current:
                if previous is None:
                    del instances[instance_id]
                else:
                    instances[instance_id] = previous
                if obj is self.group_object:
                    self._rebuild_name_index()
            return Response(Status.INTERNAL_SERVER_ERROR, diagnostic="the change could not be stored")
        self._emit(ChangeEvent(obj.id, instance_id, changed, version, created=created))
        return Response(Status.CHANGED)
