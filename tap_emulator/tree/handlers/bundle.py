"""Object 1028 (bundle): variables read together, and the access list that gives groups their rights.

What a bundle does beyond stored values (name, data-log period), all of it here:

- Access list (resource ``acl``): a write sets one group's entry, in the SDK's encodings (``41 id RW``,
  ``61 idHi idLo RW``, and the 3-byte ``61 lo RW`` that ``@iotize/tap`` sends for ids above 255, the
  admin entry being ``61 FF 03``); a read returns every entry. Stored in the instance as canonical bytes.
- Rights (`rights_of`): a group holds what the list gives it, or a user what the list gives its profile
  (``alias``); anonymous holds only group 0's entry. Reading the values needs read; every other write
  is the generic writers' rule.
- Values (resource ``values``): one OMA-TLV multiple-resource node (id = bundle id) with one resource
  instance per variable (id = variable id). The SDK's own encoder writes resource-value children; its
  parser reads both kinds as leaves, and resource instances keep the frame valid LwM2M TLV.
- Factory state: the profile's ``[data]`` bundles, access lists resolved from usernames.
"""

from __future__ import annotations

from typing import Any

from tap_emulator.codec import tlv
from tap_emulator.config import ANONYMOUS_GROUP, SPECIAL_USERNAMES, Profile
from tap_emulator.model import Operation, ResourceDef
from tap_emulator.tree.api import ChangeEvent, Response
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import FactoryInstance, ObjectHandler, Target
from tap_emulator.tree.status import Status

__all__ = ["READ", "WRITE", "BundleHandler", "decode_acl", "encode_acl_entry"]

READ = 0x01
WRITE = 0x02
_SHORT_HEADER = 0x41  # 1-byte group id
_LONG_HEADER = 0x61  # 2-byte group id (or, 3 bytes in all, the low byte of one above 255)


def encode_acl_entry(group_id: int, rights: int) -> bytes:
    if group_id <= 0xFF:
        return bytes([_SHORT_HEADER, group_id, rights & 0x03])
    return bytes([_LONG_HEADER]) + group_id.to_bytes(2, "big") + bytes([rights & 0x03])


def decode_acl(data: bytes) -> dict[int, int]:
    """A stored (canonical) access list: group id -> rights bits."""
    acl: dict[int, int] = {}
    position = 0
    while position + 3 <= len(data):
        if data[position] == _LONG_HEADER and position + 4 <= len(data):
            acl[int.from_bytes(data[position + 1 : position + 3], "big")] = data[position + 3] & 0x03
            position += 4
        else:
            acl[data[position + 1]] = data[position + 2] & 0x03
            position += 3
    return acl


def _encode_acl(acl: dict[int, int]) -> bytes:
    return b"".join(encode_acl_entry(gid, rights) for gid, rights in sorted(acl.items()) if rights)


@handles("bundle")
class BundleHandler(ObjectHandler):
    _acls: dict[int, dict[int, int]]  # access list of each live bundle, rebuilt by `loaded`
    # Encoded values of a bundle, with the (memory, layout) generations they were read at.
    _values: dict[int, tuple[tuple[int, int], bytes]]

    def loaded(self) -> None:
        acl_id = self._acl_resource().id
        self._acls = {
            bid: decode_acl(stored) if isinstance(stored := inst.values.get(acl_id), bytes) else {}
            for bid, inst in self.tree.live_instances(self.obj.id).items()
        }
        self._values = {}

    def _acl_resource(self) -> ResourceDef:
        return self.resource("acl")

    def acl(self, bundle_id: int) -> dict[int, int] | None:
        """The bundle's access list (a copy), or None when there is no such bundle."""
        acl = self._acls.get(bundle_id)
        return None if acl is None else dict(acl)

    def rights_of(self, bundle_id: int, caller: int | None) -> int:
        """READ | WRITE bits a caller holds on a bundle's variables (maintenance: both)."""
        if caller is None:
            return READ | WRITE
        acl = self._acls.get(bundle_id)
        if acl is None:
            return 0
        rights = acl.get(caller, 0)
        if caller != ANONYMOUS_GROUP:
            account = self.tree.account(caller)
            if account is not None and account.alias != caller:
                rights |= acl.get(account.alias, 0)
        return rights

    def authorize(self, caller: int, target: Target) -> Response | None:
        operation = target.request.operation
        resource = target.resource
        reads_values = resource is None or resource.id == self.resource("values").id
        if operation is Operation.READ:
            bid = target.instance_id
            if reads_values and bid is not None and not self.rights_of(bid, caller) & READ:
                return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not read this bundle")
            return None
        return super().authorize(caller, target)

    # ------------------------------------------------------------------ reads

    def values_changed(self, bundle_id: int) -> ChangeEvent:
        """The change event of a bundle whose values changed (a variable of it was written)."""
        return ChangeEvent(self.obj.id, bundle_id, frozenset({self.resource("values").id}))

    def values_tlv(self, bundle_id: int) -> bytes:
        """The bundle's values as the SDK decodes them: one node, one child per variable (encoded once
        per change of the memory or of a variable, since apps poll bundles)."""
        variables = self.tree.variables
        generations = (self.tree.memory.generation, variables.layout_generation)
        cached = self._values.get(bundle_id)
        if cached is not None and cached[0] == generations:
            return cached[1]
        children = tuple(
            tlv.TlvNode(tlv.TlvType.RESOURCE_INSTANCE, vid, value)
            for vid, value in variables.values_of_bundle(bundle_id)
        )
        encoded = tlv.encode([tlv.TlvNode(tlv.TlvType.MULTIPLE_RESOURCE, bundle_id, children)])
        if len(self._values) >= len(self._acls):  # bounded by the live bundles
            self._values.clear()
        self._values[bundle_id] = (generations, encoded)
        return encoded

    def values_response(self, bundle_id: int) -> Response:
        """A read of the bundle's values; 5.00 for a bundle whose values outgrow one TLV node (16 MiB)."""
        try:
            return Response(Status.CONTENT, self.values_tlv(bundle_id))
        except tlv.TlvError as exc:
            return Response(Status.INTERNAL_SERVER_ERROR, diagnostic=f"bundle {bundle_id}: {exc}")

    def read(self, target: Target) -> Response:
        resource, bid = target.resource, target.instance_id
        assert resource is not None and bid is not None
        if resource.id == self.resource("values").id:
            return self.values_response(bid)
        if resource.id == self._acl_resource().id:
            return Response(Status.CONTENT, _encode_acl(self.acl(bid) or {}))
        return super().read(target)

    def read_container(self, target: Target) -> Response:
        response = super().read_container(target)
        if not isinstance(response.value, dict):
            return response
        values_id, acl_id = self.resource("values").id, self._acl_resource().id
        caller = target.request.caller.group_id
        if target.instance_id is not None:
            return Response(
                Status.CONTENT, self._computed(target.instance_id, response.value, values_id, acl_id)
            )
        return Response(
            Status.CONTENT,
            {
                bid: self._computed(bid, values, values_id, acl_id)
                for bid, values in response.value.items()
                if self.rights_of(bid, caller) & READ
            },
        )

    def _computed(self, bid: int, values: dict[int, Any], values_id: int, acl_id: int) -> dict[int, Any]:
        computed = {**values, acl_id: _encode_acl(self.acl(bid) or {})}
        response = self.values_response(bid)
        if response.status is Status.CONTENT:
            computed[values_id] = response.value
        return computed

    # ------------------------------------------------------------------ writes

    def _entry(self, body: bytes) -> tuple[int, int] | None:
        """(group id, rights) of one access-list entry as a client sends it; None if malformed."""
        if len(body) == 4 and body[0] == _LONG_HEADER:
            return int.from_bytes(body[1:3], "big"), body[3] & 0x03
        if len(body) == 3 and body[0] == _SHORT_HEADER:
            return body[1], body[2] & 0x03
        if len(body) == 3 and body[0] == _LONG_HEADER:
            # @iotize/tap announces a 2-byte id and writes its low byte: the group above 255 with that
            # low byte when exactly one exists, else 0xFF00 | low byte (admin, supervisor, ...).
            low = body[1]
            groups = self.tree.live_instances(self.tree.group_object.id)
            matches = [gid for gid in groups if gid > 0xFF and gid & 0xFF == low]
            return (matches[0] if len(matches) == 1 else 0xFF00 | low), body[2] & 0x03
        return None

    async def write(self, target: Target) -> Response:
        resource, inst, bid = target.resource, target.instance, target.instance_id
        assert resource is not None and inst is not None and bid is not None
        if resource.id != self._acl_resource().id:
            return await super().write(target)
        entry = self._entry(target.value if isinstance(target.value, bytes) else b"")
        if entry is None:
            return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name}: not an access-list entry")
        acl = self.acl(bid) or {}
        group_id, rights = entry
        acl[group_id] = rights
        values = {**inst.values, resource.id: _encode_acl(acl)}
        return await self.tree.commit_instance(
            self.obj, bid, values, inst.credential, frozenset({resource.id})
        )

    # ------------------------------------------------------------------ factory state

    def factory_instances(self, profile: Profile) -> dict[int, FactoryInstance]:
        by_name = {**SPECIAL_USERNAMES, **{g.name: g.id for g in profile.groups}}
        seeded = {}
        for bundle in profile.data.bundles:
            values = {r.id: r.default_value(bundle.id) for r in self.obj.stored_resources()}
            values[self.resource("name").id] = bundle.name
            values[self.resource("data-log-period").id] = bundle.data_log_period
            acl = {
                by_name[e.username]: (READ if e.read else 0) | (WRITE if e.write else 0) for e in bundle.acls
            }
            values[self._acl_resource().id] = _encode_acl(acl)
            seeded[bundle.id] = FactoryInstance(values)
        return seeded
