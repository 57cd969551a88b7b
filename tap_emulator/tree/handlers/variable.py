"""Object 1029 (variable): a window on the emulated target memory, typed, in a bundle.

What a variable does beyond stored values (address, type, element count, meta, bundle id):

- Value (resources ``value`` and ``set-value``): the element count x element size bytes of the target
  memory at its address (``tree.memory``), so variables at one address share their bytes. A write is
  durable before it is answered and announces every variable it overlaps and their bundles' values.
  A write must carry exactly the variable's size (an ASCII variable: up to it, zero-padded).
- Layout: address, type and element count must keep the variable inside the target memory; the type's
  data code must be one the SDK defines (`tap_emulator.codec.variables`).
- Rights: reading or writing the value needs that right in its bundle's access list (`BundleHandler`);
  ``current-access`` answers the caller's rights as one access-list entry; configuring the variable is
  the generic writers' rule.
- Unit: the part of the meta text after its colon; writing it rewrites the meta.
- Value sources: `source_write` (contract C2) writes an element 0 in memory only, and announces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tap_emulator.codec import tlv
from tap_emulator.codec.variables import DATA_TYPES, DOMAINS, DataType, data_type_of, encode_number, type_byte
from tap_emulator.config import Profile
from tap_emulator.model import Operation
from tap_emulator.target.memory import TargetMemoryError, overlaps
from tap_emulator.tree.api import ChangeEvent, Response
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import FactoryInstance, ObjectHandler, StoredInstance, Target
from tap_emulator.tree.handlers.bundle import READ, WRITE, BundleHandler, encode_acl_entry
from tap_emulator.tree.status import Status

__all__ = ["VariableHandler", "VariableLayout"]

_MAINTENANCE_ENTRY = encode_acl_entry(0xFFFF, READ | WRITE)
_ACL_GOVERNED = ("value", "set-value", "bundle-values")


@dataclass(frozen=True, slots=True)
class VariableLayout:
    """Where a variable's bytes are and how they read."""

    address: int
    data_type: DataType
    count: int
    bundle_id: int

    @property
    def size(self) -> int:
        return self.data_type.size * self.count

    @property
    def span(self) -> tuple[int, int]:
        return self.address, self.size


@handles("variable")
class VariableHandler(ObjectHandler):
    _layouts: dict[int, VariableLayout]  # rebuilt by `loaded`
    _by_bundle: dict[int, list[tuple[int, VariableLayout]]]  # placed variables of each bundle, by id

    layout_generation = 0  # grows whenever a variable's layout may have changed

    def loaded(self) -> None:
        self.layout_generation += 1
        self._layouts = {
            vid: layout
            for vid, inst in sorted(self.tree.live_instances(self.obj.id).items())
            if (layout := self._layout(vid, inst.values)) is not None
        }
        region = self.tree.memory.region
        self._by_bundle = {}
        for vid, layout in self._layouts.items():
            if region.contains(*layout.span):
                self._by_bundle.setdefault(layout.bundle_id, []).append((vid, layout))

    def _stored(self, vid: int, values: dict[int, Any], slug: str) -> Any:
        resource = self.resource(slug)
        value = values.get(resource.id)
        return resource.default_value(vid) if value is None else value

    def _layout(self, vid: int, values: dict[int, Any]) -> VariableLayout | None:
        data_type = data_type_of(int(self._stored(vid, values, "type")))
        if data_type is None:
            return None
        return VariableLayout(
            int(self._stored(vid, values, "variable-address")),
            data_type,
            int(self._stored(vid, values, "number-of-elements")),
            int(self._stored(vid, values, "bundle-id")),
        )

    @property
    def _bundles(self) -> BundleHandler:
        return self.tree.handler_of(BundleHandler)

    def layout(self, variable_id: int) -> VariableLayout | None:
        return self._layouts.get(variable_id)

    def value_bytes(self, layout: VariableLayout) -> bytes | None:
        """A variable's bytes; None when it lies outside the target memory (a state written under a
        profile with another memory region)."""
        try:
            return self.tree.memory.read(*layout.span)
        except TargetMemoryError:
            return None

    def values_of_bundle(self, bundle_id: int) -> list[tuple[int, bytes]]:
        """(variable id, bytes) of each variable of a bundle inside the target memory, in id order."""
        read = self.tree.memory.read
        return [
            (vid, read(layout.address, layout.size)) for vid, layout in self._by_bundle.get(bundle_id, ())
        ]

    # ------------------------------------------------------------------ rights

    def _governed(self, target: Target) -> bool:
        resource = target.resource
        return resource is None or any(resource.id == self.resource(slug).id for slug in _ACL_GOVERNED)

    def authorize(self, caller: int, target: Target) -> Response | None:
        operation = target.request.operation
        vid = target.instance_id
        if vid is None or not self._governed(target):
            return None if operation is Operation.READ else super().authorize(caller, target)
        if target.resource is not None and target.resource.id == self.resource("bundle-values").id:
            layout = self._layouts.get(vid)
            bundle = None if layout is None else layout.bundle_id
        else:
            bundle = self._bundle_of(vid)
        needed = READ if operation is Operation.READ else WRITE
        if bundle is None or not self._bundles.rights_of(bundle, caller) & needed:
            verb = "read" if needed == READ else "write"
            return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not {verb} variable {vid}")
        return None

    def _bundle_of(self, vid: int) -> int | None:
        layout = self._layouts.get(vid)
        return None if layout is None else layout.bundle_id

    def _current_access(self, vid: int, caller: int | None) -> bytes:
        if caller is None:
            return _MAINTENANCE_ENTRY
        bundle = self._bundle_of(vid)
        rights = 0 if bundle is None else self._bundles.rights_of(bundle, caller)
        return encode_acl_entry(caller, rights)

    # ------------------------------------------------------------------ reads

    def read(self, target: Target) -> Response:
        resource, vid, inst = target.resource, target.instance_id, target.instance
        assert resource is not None
        if vid is None:  # the read profile: every variable the caller may read
            return Response(Status.CONTENT, self._read_profile(resource.id, target.request.caller.group_id))
        assert inst is not None
        slug = resource.form.alias
        layout = self._layouts.get(vid)
        if slug == "current-access":
            return Response(Status.CONTENT, self._current_access(vid, target.request.caller.group_id))
        if slug == "value":
            data = None if layout is None else self.value_bytes(layout)
            if data is None:
                return Response(
                    Status.BAD_REQUEST, diagnostic=f"variable {vid} is not inside the target memory"
                )
            return Response(Status.CONTENT, data)
        if slug == "bundle-values":
            return self._bundles.values_response(self._stored(vid, inst.values, "bundle-id"))
        if slug == "unit":
            return Response(Status.CONTENT, self._meta(vid, inst).partition(":")[2])
        if slug == "meta":
            return Response(Status.CONTENT, self._meta(vid, inst).encode("utf-8", "replace"))
        return super().read(target)

    def _read_profile(self, node_id: int, caller: int | None) -> bytes:
        """One OMA-TLV node with a child (id, bytes) per placed variable the caller may read, as the
        SDK's readProfile decodes it (it reads the ids)."""
        bundles = self._bundles
        children = tuple(
            tlv.TlvNode(tlv.TlvType.RESOURCE_INSTANCE, vid, self.tree.memory.read(*layout.span))
            for bundle_id, variables in sorted(self._by_bundle.items())
            if bundles.rights_of(bundle_id, caller) & READ
            for vid, layout in variables
        )
        return tlv.encode(
            [tlv.TlvNode(tlv.TlvType.MULTIPLE_RESOURCE, node_id, tuple(sorted(children, key=lambda c: c.id)))]
        )

    def _meta(self, vid: int, inst: StoredInstance) -> str:
        meta = inst.values.get(self.resource("meta").id)
        return meta.decode("utf-8", "replace") if isinstance(meta, bytes) else ""

    def read_container(self, target: Target) -> Response:
        response = super().read_container(target)
        if not isinstance(response.value, dict):
            return response
        caller = target.request.caller.group_id
        if target.instance_id is not None:
            return Response(Status.CONTENT, self._computed(target.instance_id, response.value, caller))
        readable = {
            vid: values
            for vid, values in response.value.items()
            if (bundle := self._bundle_of(vid)) is not None and self._bundles.rights_of(bundle, caller) & READ
        }
        return Response(
            Status.CONTENT, {vid: self._computed(vid, values, caller) for vid, values in readable.items()}
        )

    def _computed(self, vid: int, values: dict[int, Any], caller: int | None) -> dict[int, Any]:
        """An instance read: stored values plus value, current access and unit (bundle values, which
        repeat the bundle, are read on their own)."""
        layout = self._layouts.get(vid)
        inst = self.tree.live(self.obj.id, vid)
        computed = {**values, self.resource("current-access").id: self._current_access(vid, caller)}
        computed.pop(self.resource("bundle-values").id, None)
        data = None if layout is None else self.value_bytes(layout)
        if data is not None:
            computed[self.resource("value").id] = data
        if inst is not None:
            computed[self.resource("unit").id] = self._meta(vid, inst).partition(":")[2]
        return computed

    # ------------------------------------------------------------------ writes

    async def write(self, target: Target) -> Response:
        resource, vid, inst = target.resource, target.instance_id, target.instance
        assert resource is not None and vid is not None and inst is not None
        slug = resource.form.alias
        if slug in ("value", "set-value"):
            return await self._write_value(vid, target.value)
        value: Any = target.value
        if slug == "unit":
            name = self._meta(vid, inst).partition(":")[0]
            meta = f"{name}:{value}".encode()
            meta_form = self.resource("meta").form
            try:
                meta_form.validate(meta)
            except ValueError as exc:
                return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name}: {exc}")
            resource, value = self.resource("meta"), meta
        values = {**inst.values, resource.id: value}
        if slug in ("variable-address", "type", "number-of-elements"):
            layout, before = self._layout(vid, values), self._layouts.get(vid)
            region = self.tree.memory.region
            if layout is None:
                return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name}: unknown data type")
            # The address places the variable; a type or count may not move a placed one outside.
            placed = slug == "variable-address" or (before is not None and region.contains(*before.span))
            if placed and not region.contains(*layout.span):
                return Response(
                    Status.BAD_REQUEST,
                    diagnostic=f"{resource.name}: the variable would lie outside the target memory "
                    f"{self.tree.memory.region.describe()}",
                )
        changed = frozenset(
            {resource.id, self.resource("unit").id}
            if resource.id == self.resource("meta").id
            else {resource.id}
        )
        return await self.tree.commit_instance(self.obj, vid, values, inst.credential, changed)

    async def _write_value(self, vid: int, value: object) -> Response:
        layout = self._layouts.get(vid)
        if layout is None:
            return Response(Status.NOT_FOUND, diagnostic=f"variable {vid} has no valid type")
        data = value if isinstance(value, bytes) else b""
        if layout.data_type.name == "ASCII" and len(data) <= layout.size:
            data = data.ljust(layout.size, b"\0")
        if len(data) != layout.size:
            return Response(
                Status.BAD_REQUEST, diagnostic=f"variable {vid} takes {layout.size} bytes, not {len(data)}"
            )
        return await self.write_memory(layout.address, data)

    async def write_memory(self, address: int, data: bytes) -> Response:
        """A durable target-memory write (the tree's memory commit), announcing every variable it overlaps
        and their bundles' values: a value write and the control API's memory write both come here."""
        return await self.tree.commit_memory(address, data, self._events((address, len(data))))

    def _events(self, span: tuple[int, int]) -> list[ChangeEvent]:
        """Change events of a memory write: every variable it overlaps, and their bundles' values."""
        value_ids = frozenset({self.resource("value").id, self.resource("bundle-values").id})
        events, bundles = [], set()
        for vid, layout in sorted(self._layouts.items()):
            if overlaps(layout.span, span):
                events.append(ChangeEvent(self.obj.id, vid, value_ids))
                bundles.add(layout.bundle_id)
        # Every variable of a touched bundle shows the bundle's values (resource bundle-values).
        for vid, layout in sorted(self._layouts.items()):
            if layout.bundle_id in bundles and not overlaps(layout.span, span):
                events.append(ChangeEvent(self.obj.id, vid, frozenset({self.resource("bundle-values").id})))
        events += [self._bundles.values_changed(b) for b in sorted(bundles)]
        return events

    def source_write(self, variable_id: int, value: float) -> bool:
        """Encode ``value`` in the variable's type (integers rounded half-even and clamped to the type's
        range; element 0 of an array), write it to the emulated target memory, and emit the tree's change
        events for the variable's value, every variable overlapping those bytes, and their bundles' values.
        False if no such variable exists (the caller logs once, does not raise)."""
        layout = self._layouts.get(variable_id)
        if layout is None or self.tree.live(self.obj.id, variable_id) is None:
            return False
        data = encode_number(layout.data_type, value)
        try:
            self.tree.memory.write(layout.address, data)
        except TargetMemoryError:
            return False
        for event in self._events((layout.address, len(data))):
            self.tree.emit(event)
        return True

    # ------------------------------------------------------------------ factory state

    def factory_instances(self, profile: Profile) -> dict[int, FactoryInstance]:
        seeded = {}
        for bundle in profile.data.bundles:
            for variable in bundle.variables:
                values = {r.id: r.default_value(variable.id) for r in self.obj.stored_resources()}
                values[self.resource("variable-address").id] = variable.address
                values[self.resource("type").id] = type_byte(
                    DOMAINS[variable.domain], DATA_TYPES[variable.data_type]
                )
                values[self.resource("number-of-elements").id] = variable.length
                values[self.resource("bundle-id").id] = bundle.id
                values[self.resource("meta").id] = f"{variable.name}:{variable.unit}".encode()
                seeded[variable.id] = FactoryInstance(values)
        return seeded

    def factory_memory(self, profile: Profile) -> dict[int, bytes]:
        contents = {}
        for variable in profile.data.variables:
            if variable.value is None:
                continue
            data_type = DATA_TYPES[variable.data_type]
            contents[variable.address] = b"".join(encode_number(data_type, x) for x in variable.value)
        return contents
