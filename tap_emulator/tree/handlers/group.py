"""Object 1025 (group): the device's accounts, their login names, credentials and rights over each other.

What a group does beyond stored values, all of it here:

- Login: `find_account` maps an exact, non-empty name to its group; names are unique per device.
- Credentials: the password resource takes an ASCII password or a key (`tap_emulator.security` says
  which body is which and what each stores); setting one updates the salt and iteration a SCRAM login
  announces, and a low-level write of salt or iteration changes only what is announced.
- Rights: who may write at all (the profile's writers, by id or profile), what anonymous may read, and
  the rank rule between groups (a group changes only groups ranked below it; see `authorize`).
- Factory state: the profile's groups, passwords derived as the tree's ``seed_credential`` says (a
  salt drawn for the device; one shared by a fleet's devices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tap_emulator.config import ANONYMOUS_GROUP, Profile, SecurityMode
from tap_emulator.model import Behaviour, Form, Operation, ResourceDef, ValueType
from tap_emulator.security import (
    SALT_LENGTH,
    Credential,
    CredentialError,
    credential_from_key,
    credential_from_password,
    draw_user_salt,
    is_password_key,
)
from tap_emulator.tree.api import Response
from tap_emulator.tree.handlers import handles
from tap_emulator.tree.handlers.base import FactoryInstance, ObjectHandler, StoredInstance, Target
from tap_emulator.tree.handlers.interface import InterfaceHandler
from tap_emulator.tree.status import Status

__all__ = ["Account", "GroupHandler"]


@dataclass(frozen=True, slots=True)
class Account:
    """What a login needs to know of a group (for the Tap session)."""

    group_id: int
    name: str
    alias: int
    session_lifetime: int
    credential: Credential | None = field(repr=False)


def _scram_fields(credential: Credential | None) -> tuple[int, int]:
    """(salt as uint32, iteration) that the salt and iteration resources show; 0 when no SCRAM key."""
    if credential is None or credential.scram is None:
        return 0, 0
    return int.from_bytes(credential.scram.salt, "big"), credential.scram.iterations


@handles("group")
class GroupHandler(ObjectHandler):
    _names: dict[str, int]  # login name -> group id, rebuilt by `loaded`

    def loaded(self) -> None:
        """Login names to groups. Empty names are no login. Names are unique since writes refuse a
        duplicate; a state written before that may hold one, which then designates the group ranked
        highest (the lowest id among equals), never a group a lower one could have renamed."""
        name_id = self.resource("name").id
        names: dict[str, int] = {}
        for gid, inst in sorted(self.tree.live_instances(self.obj.id).items()):
            name = inst.values.get(name_id)
            if not name:
                continue
            holder = names.get(name)
            if holder is None or self.rank_of(gid) < self.rank_of(holder):
                names[name] = gid
        self._names = names

    @property
    def _interface(self) -> InterfaceHandler:
        return self.tree.handler_of(InterfaceHandler)

    # ------------------------------------------------------------------ accounts

    def account(self, group_id: int) -> Account | None:
        inst = self.tree.live(self.obj.id, group_id)
        if inst is None:
            return None
        return Account(
            group_id,
            str(self._stored(inst, group_id, "name")),
            int(self._stored(inst, group_id, "alias")),
            int(self._stored(inst, group_id, "session-lifetime")),
            inst.credential,
        )

    def _stored(self, inst: StoredInstance, group_id: int, slug: str) -> Any:
        resource = self.resource(slug)
        value = inst.values.get(resource.id)
        return resource.default_value(group_id) if value is None else value

    def find_account(self, name: str) -> Account | None:
        """The group a login name designates: exact match (case and spaces count); "" is nobody."""
        gid = self._names.get(name)
        return None if gid is None else self.account(gid)

    # ------------------------------------------------------------------ rights

    def may_write(self, caller: int) -> bool:
        """Whether a group may write the device at all: it, or its profile (alias), is a writer."""
        account = self.account(caller)
        profile = caller if account is None else account.alias
        return caller in self.tree.access.writers or profile in self.tree.access.writers

    def rank_of(self, group_id: int) -> int:
        """A group's place in the profile order (0 is admin): the better of its id's and its profile's."""
        account = self.account(group_id)
        alias = group_id if account is None else account.alias
        return min(self.tree.access.rank(group_id), self.tree.access.rank(alias))

    def authorize(self, caller: int, target: Target) -> Response | None:
        """Anonymous reads as the profile allows. One rule for every write to a group (password, salt,
        iteration, alias, name, lifetime, create): a group may change only groups ranked strictly below
        it, and may not give one a rank as high as its own through the alias. Its own group it may
        change, except its alias (its own rights). Admin may change every group; only admin changes
        admin."""
        access = self.tree.access
        if target.request.operation is Operation.READ:
            if caller == ANONYMOUS_GROUP and not access.anonymous_read:
                return Response(Status.UNAUTHORIZED, diagnostic="log in to read groups")
            return None
        refused = super().authorize(caller, target)
        if refused is not None:
            return refused
        group = target.instance_id
        deletes = target.request.operation is Operation.DELETE
        if group == caller and deletes:
            return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not delete itself")
        if group is None or caller == access.admin_group:
            return None
        changes_alias = target.resource is not None and target.resource.id == self.resource("alias").id
        if group == caller and not changes_alias:
            return None
        rank = self.rank_of(caller)
        if self.rank_of(group) <= rank:
            return Response(Status.UNAUTHORIZED, diagnostic=f"group {caller} may not change group {group}")
        value = target.value
        if changes_alias and isinstance(value, int) and access.rank(value) <= rank:
            return Response(
                Status.UNAUTHORIZED, diagnostic=f"group {caller} may not grant the rights of group {value}"
            )
        return None

    # ------------------------------------------------------------------ writes

    def wire_form(self, resource: ResourceDef, body: bytes) -> Form:
        """A password body of the Tap face is text or a key as `is_password_key` decides."""
        text = resource.form_for_type(ValueType.STRING)
        key = resource.form_for_type(ValueType.OPAQUE)
        if resource.behaviour is not Behaviour.CREDENTIAL or text is None or key is None:
            return resource.form
        longest_text = text.lengths[1] if isinstance(text.lengths, tuple) else 0
        plain_mode = self._interface.security_mode is SecurityMode.NONE
        return key if is_password_key(body, longest_password=longest_text, plain_mode=plain_mode) else text

    async def write(self, target: Target) -> Response:
        resource, inst, gid = target.resource, target.instance, target.instance_id
        assert resource is not None and inst is not None and gid is not None
        if resource.behaviour is Behaviour.CREDENTIAL:
            return await self._set_credential(target)
        value: Any = target.value
        if resource.id == self.resource("name").id and value:
            holder = self._names.get(value)
            if holder is not None and holder != gid:
                return Response(
                    Status.BAD_REQUEST, diagnostic=f"{resource.name}: another group has this name"
                )
        credential = inst.credential
        scram = None if credential is None else credential.scram
        if credential is not None and scram is not None:
            # A low-level write of salt or iteration changes what the login announces, keys unchanged.
            if resource.id == self.resource("scram-user-salt").id:
                scram = scram.with_salt(value.to_bytes(SALT_LENGTH, "big"))
            elif resource.id == self.resource("scram-user-iteration").id:
                scram = scram.with_iterations(value)
            credential = Credential(credential.password_hash, scram)
        values = {**inst.values, resource.id: value}
        return await self.tree.commit_instance(self.obj, gid, values, credential, frozenset({resource.id}))

    async def delete(self, target: Target) -> Response:
        """A group is deleted as any instance is, except the admin group: the device keeps its admin."""
        if target.instance_id == self.tree.access.admin_group:
            return Response(Status.BAD_REQUEST, diagnostic="the admin group cannot be deleted")
        return await super().delete(target)

    async def _set_credential(self, target: Target) -> Response:
        resource, gid = target.resource, target.instance_id
        assert resource is not None and gid is not None
        iterations = self._interface.hash_iteration
        try:
            if isinstance(target.value, str):
                salt = draw_user_salt(self.tree.random_bytes)
                credential: Credential = await self.tree.offload(
                    credential_from_password, target.value, salt, iterations
                )
            elif isinstance(target.value, bytes):
                credential = credential_from_key(target.value, iterations)
            else:
                return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name} needs a password or a key")
        except CredentialError as exc:
            return Response(Status.BAD_REQUEST, diagnostic=f"{resource.name}: {exc}")
        inst = self.tree.live(self.obj.id, gid)
        if inst is None:  # reset while deriving
            return Response(Status.NOT_FOUND, diagnostic=f"{self.obj.name.lower()} {gid} does not exist")
        caller = target.request.caller.group_id
        if caller is not None:  # the group may have been promoted out of the caller's reach meanwhile
            denied = self.authorize(caller, Target(target.request, self.obj, resource, inst, target.form))
            if denied is not None:
                return denied
        salt_id, iteration_id = self.resource("scram-user-salt").id, self.resource("scram-user-iteration").id
        values = dict(inst.values)
        values[salt_id], values[iteration_id] = _scram_fields(credential)
        changed = frozenset({resource.id, salt_id, iteration_id})
        return await self.tree.commit_instance(self.obj, gid, values, credential, changed)

    # ------------------------------------------------------------------ factory state

    def factory_instances(self, profile: Profile) -> dict[int, FactoryInstance]:
        seeded = {}
        for seed in profile.groups:
            values = {r.id: r.default_value(seed.id) for r in self.obj.stored_resources()}
            values[self.resource("name").id] = seed.name
            if seed.session_lifetime is not None:
                values[self.resource("session-lifetime").id] = seed.session_lifetime
            values[self.resource("alias").id] = seed.id if seed.alias is None else seed.alias
            credential = None
            if seed.key is not None:  # as the configurator writes it: the /1024//42 of the profile
                credential = credential_from_key(seed.key, profile.security.hash_iteration)
            elif seed.password is not None:
                credential = self.tree.seed_credential(seed.password, profile.security.hash_iteration)
            salt_value, iteration = _scram_fields(credential)
            values[self.resource("scram-user-salt").id] = salt_value
            values[self.resource("scram-user-iteration").id] = iteration
            seeded[seed.id] = FactoryInstance(values, credential)
        return seeded
