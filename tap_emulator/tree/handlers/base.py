"""What an object handler is, and the behaviour every object shares unless its handler says otherwise.

The dispatcher (``tree.py``) resolves a request against the model (existence, allowed operation, limits,
rights) and hands the resolved `Target` to the handler of its object. A handler holds only that object's
behaviour: ``ObjectHandler`` itself serves stored values exactly as the model declares them (read the
value or the model's default, write it, create an instance with the model's defaults), so an object
whose resources are plain values needs no handler file at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tap_emulator.config import Profile
from tap_emulator.model import Behaviour, Form, ObjectDef, Operation, ResourceDef, ValueType
from tap_emulator.security import Credential
from tap_emulator.tree.api import Request, Response
from tap_emulator.tree.status import Status

if TYPE_CHECKING:
    from tap_emulator.tree.tree import DeviceTree

__all__ = ["FactoryInstance", "ObjectHandler", "StoredInstance", "Target"]


@dataclass(slots=True)
class StoredInstance:
    """One instance as the tree holds it: values by resource id, its secret (if any), its version."""

    values: dict[int, Any]
    credential: Credential | None
    version: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class FactoryInstance:
    """An instance a profile seeds: its values and, for objects with a credential, the secret."""

    values: dict[int, Any]
    credential: Credential | None = None


@dataclass(slots=True)  # not frozen: one is built per request, and a frozen one is slower to build
class Target:
    """A request the dispatcher has resolved: it exists, its operation is allowed, its value fits the
    model's limits, and its caller holds the generic rights. ``instance`` is the live instance
    addressed (``None`` for a single-instance object, a whole object, or a create); ``form`` is the form
    a written value was validated against."""

    request: Request
    obj: ObjectDef
    resource: ResourceDef | None
    instance: StoredInstance | None = None
    form: Form | None = None

    @property
    def instance_id(self) -> int | None:
        return self.request.instance_id

    @property
    def value(self) -> object:
        return self.request.value


class ObjectHandler:
    """The behaviour of one object of the model, found by its alias (``alias`` of a subclass)."""

    alias: ClassVar[str] = ""

    def __init__(self, obj: ObjectDef, tree: DeviceTree) -> None:
        self.obj = obj
        self.tree = tree

    def resource(self, slug: str) -> ResourceDef:
        """The resource a model alias slug names; a model without it is an error at start."""
        entry = self.obj.forms_by_alias.get(slug)
        if entry is None:
            raise LookupError(f"the model's object {self.obj.id} has no resource with alias {slug!r}")
        return entry[0]

    def device_int(self, slug: str) -> int:
        """An integer value of a single-instance object, or the model's default while none is stored."""
        resource = self.resource(slug)
        value = self.tree.device_value(self.obj.id, resource.id)
        if value is None:
            value = resource.default_value(None)
        return value if isinstance(value, int) else 0

    # ------------------------------------------------------------------ life cycle

    def loaded(self) -> None:
        """The tree has (re)read its state, or an instance of this object changed or was rolled back."""

    def factory_values(self, profile: Profile) -> dict[int, Any]:
        """Values of a single-instance object that a factory-fresh device holds (by resource id)."""
        return {}

    def factory_instances(self, profile: Profile) -> dict[int, FactoryInstance]:
        """Instances a factory-fresh device holds; every other instance becomes a tombstone."""
        return {}

    def factory_memory(self, profile: Profile) -> dict[int, bytes]:
        """Target memory contents a factory-fresh device holds (address -> bytes); zeros elsewhere."""
        return {}

    # ------------------------------------------------------------------ requests

    def wire_form(self, resource: ResourceDef, body: bytes) -> Form:
        """Which form a write body of the Tap face is in; only a resource with several forms asks. An
        empty body addresses the resource's form without a value, when it has one (an execute)."""
        if not body and len(resource.forms) > 1:
            return resource.form_for_type(ValueType.NONE) or resource.form
        return resource.form

    def authorize(self, caller: int, target: Target) -> Response | None:
        """The rights of a logged-in group on this object: a refusal, or None to go on. Unless the
        object says otherwise, every group reads, and only the profile's writers (by id or through
        their alias) write, execute or delete."""
        if target.request.operation is not Operation.READ and not self.tree.groups.may_write(caller):
            return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not write")
        return None

    def read(self, target: Target) -> Response:
        resource = target.resource
        assert resource is not None
        if target.instance is None:
            value = self.tree.device_value(self.obj.id, resource.id)
        else:
            value = target.instance.values.get(resource.id)
        return Response(
            Status.CONTENT, resource.default_value(target.instance_id) if value is None else value
        )

    def read_container(self, target: Target) -> Response:
        readable = [
            r for r in self.obj.resources.values() if r.readable and r.behaviour is not Behaviour.SESSION
        ]
        if not self.obj.multiple:
            return Response(
                Status.CONTENT, {r.id: self.tree.device_value(self.obj.id, r.id) for r in readable}
            )
        if target.instance is not None:
            return Response(Status.CONTENT, _values(target.instance.values, readable))
        live = self.tree.live_instances(self.obj.id)
        return Response(
            Status.CONTENT, {iid: _values(inst.values, readable) for iid, inst in sorted(live.items())}
        )

    async def write(self, target: Target) -> Response:
        resource = target.resource
        assert resource is not None
        if resource.behaviour not in (Behaviour.VALUE, Behaviour.REFERENCE):
            return Response(
                Status.NOT_IMPLEMENTED, diagnostic=f"object {self.obj.id} has no handler for {resource.name}"
            )
        if target.instance is None:
            return await self.tree.commit_value(self.obj, resource, target.value)
        assert target.instance_id is not None
        values = {**target.instance.values, resource.id: target.value}
        return await self.tree.commit_instance(
            self.obj, target.instance_id, values, target.instance.credential, frozenset({resource.id})
        )

    async def delete(self, target: Target) -> Response:
        """Delete the addressed instance (LwM2M Delete)."""
        assert target.instance_id is not None
        return await self.tree.delete_instance(self.obj, target.instance_id)

    async def create(self, target: Target) -> Response:
        assert target.instance_id is not None
        values = {r.id: r.default_value(target.instance_id) for r in self.obj.stored_resources()}
        response = await self.tree.commit_instance(
            self.obj, target.instance_id, values, None, frozenset(values), created=True
        )
        return Response(Status.CREATED) if response.status is Status.CHANGED else response


def _values(values: Mapping[int, Any], readable: list[ResourceDef]) -> dict[int, Any]:
    return {r.id: values.get(r.id) for r in readable}
