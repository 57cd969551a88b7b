"""CloudService over a real store, on SQLite and on PostgreSQL: each domain rule, nothing half-written."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest
from store.conftest import raw_rows
from store.samples import group as access_group

from tap_emulator.cloud import (
    ADMIN_ROLE,
    APP_SERVICE,
    IOTIZE,
    MEMBER_ROLE,
    NATIVE,
    OCEANCONNECT,
    ROMA,
    Account,
    AlreadyShared,
    ApiKeyExists,
    CapacityExceeded,
    CloudService,
    CycleRefused,
    Forbidden,
    GroupChanges,
    GroupDraft,
    InvalidInput,
    MaxBelowCurrentCount,
    MembersStillExist,
    NameTaken,
    NotFound,
    ParentNotFound,
    ShareToSelf,
    Tenant,
)
from tap_emulator.store import ManagementStore
from tap_emulator.store.cloud import CloudStore, MembershipOutcome

from .conftest import T0, Clock

pytestmark = pytest.mark.timeout(60)

OC = Tenant("oceanconnect", OCEANCONNECT)
APP = Tenant("app-service", APP_SERVICE)
RM = Tenant("roma/proj-1/inst-1", ROMA)
IOT = Tenant("iotize", IOTIZE)
NAT = Tenant("native", NATIVE)
AddDevice = Callable[..., Any]


async def accounts(service: CloudService, tenant: Tenant, *ids: str) -> None:
    for account_id in ids:
        await service.ensure_account(
            tenant.key, Account(account_id, tenant.key, f"{account_id}@example.com", account_id)
        )


# --- groups -----------------------------------------------------------------------------------------


async def test_created_group_reads_back_with_its_audit_fields(service: CloudService, clock: Clock) -> None:
    draft = GroupDraft("lab", description="bench rigs", max_devices=5, tags=("a", "b"), sequence=3)
    created = await service.create_group(OC, "oc-app-1", draft, actor="oc-app-1")
    assert created.id == "id-1"
    assert (created.tenant, created.scope, created.name, created.description) == (
        "oceanconnect",
        "oc-app-1",
        "lab",
        "bench rigs",
    )
    assert (created.max_devices, created.device_count, created.tags, created.sequence) == (
        5,
        0,
        ("a", "b"),
        3,
    )
    assert (created.created_at, created.created_by, created.version) == (T0, "oc-app-1", 1)
    assert await service.get_group("id-1", OC) == created
    assert await service.get_group("id-1") == created  # the native API takes any tenant's id as is
    clock.advance(60)
    updated = await service.update_group(
        "id-1", GroupChanges(description="moved"), actor="oc-app-2", tenant=OC
    )
    assert (updated.description, updated.name, updated.version) == ("moved", "lab", 2)
    assert (updated.created_at, updated.updated_at, updated.updated_by) == (T0, clock.now, "oc-app-2")


async def test_a_group_of_another_tenant_is_not_found(service: CloudService) -> None:
    await service.create_group(OC, "oc-app-1", GroupDraft("lab"), actor="oc-app-1")
    with pytest.raises(NotFound) as caught:
        await service.get_group("id-1", RM)
    assert (caught.value.kind, caught.value.key) == ("device_group", "id-1")
    with pytest.raises(NotFound):
        await service.update_group("id-1", GroupChanges(name="x1"), actor="a", tenant=RM)
    with pytest.raises(NotFound):
        await service.delete_group("id-1", actor="a", tenant=RM)
    with pytest.raises(NotFound):
        await service.get_group("no-such-group")


async def test_roma_ids_are_integers_from_1_unique_in_the_store(service: CloudService) -> None:
    first = await service.create_group(RM, "app-1", GroupDraft("one"), actor="u")
    other = await service.create_group(OC, "oc-app-1", GroupDraft("x"), actor="u")
    second = await service.create_group(RM, "app-1", GroupDraft("two"), actor="u")
    assert (first.id, second.id) == ("1", "2")
    assert other.id not in ("1", "2")
    assert (await service.get_group("2")).name == "two"


async def test_oceanconnect_names_are_unique_per_app(service: CloudService) -> None:
    await service.create_group(OC, "oc-app-1", GroupDraft("lab"), actor="u")
    with pytest.raises(NameTaken) as caught:
        await service.create_group(OC, "oc-app-1", GroupDraft("lab"), actor="u")
    assert caught.value.scope == "oc-app-1"
    await service.create_group(OC, "oc-app-2", GroupDraft("lab"), actor="u")
    renamed = await service.create_group(OC, "oc-app-1", GroupDraft("lab2"), actor="u")
    with pytest.raises(NameTaken):
        await service.update_group(renamed.id, GroupChanges(name="lab"), actor="u", tenant=OC)
    await service.update_group(
        renamed.id, GroupChanges(name="lab2", description="same name"), actor="u", tenant=OC
    )
    assert await service.count_groups(OC, "oc-app-1") == 2
    assert await service.count_groups(OC, name="lab") == 2


async def test_roma_and_iotize_names_may_repeat(service: CloudService) -> None:
    await accounts(service, IOT, "alice")
    for tenant, scope in ((RM, "app-1"), (RM, "app-1"), (IOT, "alice"), (IOT, "alice")):
        await service.create_group(tenant, scope, GroupDraft("same"), actor="alice")
    assert await service.count_groups(RM, name="same") == 2


async def test_app_service_names_are_unique_per_account_and_need_a_known_account(
    service: CloudService,
) -> None:
    await accounts(service, APP, "acct-1", "acct-2")
    await service.create_group(APP, "acct-1", GroupDraft("baby-group"), actor="app-1")
    with pytest.raises(NameTaken):
        await service.create_group(APP, "acct-1", GroupDraft("baby-group"), actor="app-1")
    await service.create_group(APP, "acct-2", GroupDraft("baby-group"), actor="app-1")
    with pytest.raises(NotFound) as caught:
        await service.create_group(APP, "acct-9", GroupDraft("g"), actor="app-1")
    assert caught.value.kind == "account"
    with pytest.raises(NotFound):
        await service.list_groups(APP, "acct-9")
    assert [g.name for g in (await service.list_groups(APP, "acct-1")).items] == ["baby-group"]


async def test_invalid_fields_are_refused_before_anything_is_written(service: CloudService) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.create_group(OC, "oc-app-1", GroupDraft("not valid"), actor="u")
    assert caught.value.field == "name"
    with pytest.raises(InvalidInput):
        await service.create_group(RM, "app-1", GroupDraft("ab", description="d" * 201), actor="u")
    assert await service.count_groups(OC) == 0
    assert (await service.list_groups(None)).items == ()


# --- capacity -----------------------------------------------------------------------------------


async def test_capacity_refuses_the_device_past_max(service: CloudService, add_device: AddDevice) -> None:
    for serial in ("EMU1", "EMU2", "EMU3"):
        await add_device(serial)
    group = await service.create_group(OC, "oc-app-1", GroupDraft("small", max_devices=2), actor="u")
    await service.add_member(group.id, "EMU1", actor="u")
    again = await service.add_member(group.id, "EMU1", actor="someone-else")  # idempotent, not counted twice
    assert (again.serial, again.added_by, again.added_at) == ("EMU1", "u", T0)
    await service.add_member(group.id, "EMU2", actor="u")
    with pytest.raises(CapacityExceeded) as caught:
        await service.add_member(group.id, "EMU3", actor="u")
    assert (caught.value.max_devices, caught.value.device_count) == (2, 2)
    members = await service.list_members(group.id)
    assert [d.serial for d in members.items] == ["EMU1", "EMU2"]  # the refused add left no row
    assert (await service.get_group(group.id)).device_count == 2
    await service.remove_member(group.id, "EMU1", actor="u")
    await service.add_member(group.id, "EMU3", actor="u")
    assert (await service.get_group(group.id)).device_count == 2


async def test_zero_means_unlimited(service: CloudService, add_device: AddDevice) -> None:
    group = await service.create_group(NAT, "lab", GroupDraft("open"), actor="u")
    for index in range(12):
        await add_device(f"EMU{index:02}")
        await service.add_member(group.id, f"EMU{index:02}", actor="u")
    assert (await service.get_group(group.id)).device_count == 12


async def test_membership_needs_a_known_device_and_group(
    service: CloudService, add_device: AddDevice
) -> None:
    group = await service.create_group(NAT, "lab", GroupDraft("g"), actor="u")
    with pytest.raises(NotFound) as caught:
        await service.add_member(group.id, "EMU-NEVER-SYNCED", actor="u")
    assert caught.value.kind == "device"
    await add_device("EMU1")
    with pytest.raises(NotFound) as caught:
        await service.add_member("nope", "EMU1", actor="u")
    assert caught.value.kind == "device_group"
    with pytest.raises(NotFound) as caught:
        await service.remove_member(group.id, "EMU1", actor="u")
    assert caught.value.kind == "member"


async def test_max_devices_cannot_drop_below_the_current_count(
    service: CloudService, add_device: AddDevice
) -> None:
    group = await service.create_group(OC, "oc-app-1", GroupDraft("g"), actor="u")
    for serial in ("EMU1", "EMU2", "EMU3"):
        await add_device(serial)
        await service.add_member(group.id, serial, actor="u")
    with pytest.raises(MaxBelowCurrentCount) as caught:
        await service.update_group(group.id, GroupChanges(max_devices=2), actor="u", tenant=OC)
    assert isinstance(caught.value, CapacityExceeded)
    assert (caught.value.max_devices, caught.value.device_count) == (2, 3)
    assert (await service.get_group(group.id)).max_devices == 0
    assert (await service.update_group(group.id, GroupChanges(max_devices=3), actor="u")).max_devices == 3


# --- hierarchy ----------------------------------------------------------------------------------


async def test_parents_must_exist_in_the_tenant_and_never_form_a_cycle(service: CloudService) -> None:
    top = await service.create_group(RM, "app-1", GroupDraft("top"), actor="u")
    mid = await service.create_group(RM, "app-1", GroupDraft("mid", parent_id=top.id), actor="u")
    low = await service.create_group(RM, "app-1", GroupDraft("low", parent_id=mid.id), actor="u")
    with pytest.raises(CycleRefused):
        await service.update_group(top.id, GroupChanges(parent_id=low.id), actor="u")
    with pytest.raises(CycleRefused):
        await service.update_group(top.id, GroupChanges(parent_id=top.id), actor="u")
    with pytest.raises(ParentNotFound) as caught:
        await service.create_group(RM, "app-1", GroupDraft("orphan", parent_id="999"), actor="u")
    assert isinstance(caught.value, NotFound)
    foreign = await service.create_group(NAT, "lab", GroupDraft("foreign"), actor="u")
    with pytest.raises(ParentNotFound):
        await service.create_group(RM, "app-1", GroupDraft("cross", parent_id=foreign.id), actor="u")
    moved = await service.update_group(low.id, GroupChanges(parent_id=None), actor="u")
    assert moved.parent_id is None
    assert (await service.update_group(top.id, GroupChanges(parent_id=low.id), actor="u")).parent_id == low.id


async def test_deleting_a_parent_moves_its_children_up(service: CloudService) -> None:
    top = await service.create_group(NAT, "lab", GroupDraft("top"), actor="u")
    mid = await service.create_group(NAT, "lab", GroupDraft("mid", parent_id=top.id), actor="u")
    low = await service.create_group(NAT, "lab", GroupDraft("low", parent_id=mid.id), actor="u")
    await service.delete_group(mid.id, actor="u")
    assert (await service.get_group(low.id)).parent_id == top.id
    with pytest.raises(NotFound):
        await service.get_group(mid.id)


# --- delete -------------------------------------------------------------------------------------


async def test_an_app_service_account_changes_only_its_own_groups(service: CloudService) -> None:
    await accounts(service, APP, "acct-1", "acct-2")
    group = await service.create_group(APP, "acct-1", GroupDraft("g"), actor="app-1")
    with pytest.raises(NotFound) as caught:
        await service.update_group(group.id, GroupChanges(name="taken"), "acct-2", APP, owner="acct-2")
    assert caught.value.kind == "device_group"
    with pytest.raises(NotFound):
        await service.delete_group(group.id, "acct-2", APP, owner="acct-2")
    assert (await service.get_group(group.id)).name == "g"
    renamed = await service.update_group(group.id, GroupChanges(name="mine"), "acct-1", APP, owner="acct-1")
    assert renamed.name == "mine"
    await service.delete_group(group.id, "acct-1", APP, owner="acct-1")
    with pytest.raises(NotFound):
        await service.get_group(group.id)


async def test_app_service_refuses_to_delete_a_group_with_devices(
    service: CloudService, add_device: AddDevice
) -> None:
    await accounts(service, APP, "acct-1")
    group = await service.create_group(APP, "acct-1", GroupDraft("g"), actor="app-1")
    await add_device("EMU1")
    await service.add_member(group.id, "EMU1", actor="app-1")
    with pytest.raises(MembersStillExist) as caught:
        await service.delete_group(group.id, actor="app-1", tenant=APP)
    assert caught.value.device_count == 1
    assert (await service.get_group(group.id)).device_count == 1
    await service.remove_member(group.id, "EMU1", actor="app-1")
    await service.delete_group(group.id, actor="app-1", tenant=APP)
    with pytest.raises(NotFound):
        await service.get_group(group.id)


async def test_other_profiles_delete_a_group_with_its_memberships(
    service: CloudService, add_device: AddDevice
) -> None:
    group = await service.create_group(OC, "oc-app-1", GroupDraft("g"), actor="u")
    await add_device("EMU1")
    await service.add_member(group.id, "EMU1", actor="u")
    await service.delete_group(group.id, actor="u")
    assert (await service.get_device("EMU1")).device.group_ids == ()


# --- shares -------------------------------------------------------------------------------------


async def test_shares_follow_the_app_service_rules(service: CloudService) -> None:
    await accounts(service, APP, "acct-1", "acct-2", "acct-3")
    first = await service.create_group(APP, "acct-1", GroupDraft("one"), actor="app-1")
    second = await service.create_group(APP, "acct-1", GroupDraft("two"), actor="app-1")
    own = await service.create_group(APP, "acct-2", GroupDraft("own"), actor="app-1")
    shares = await service.share_groups(APP, "acct-2", [first.id])
    assert [(s.group_id, s.account_id, s.shared_by) for s in shares] == [(first.id, "acct-2", "acct-1")]
    with pytest.raises(AlreadyShared):
        await service.share_groups(APP, "acct-2", [first.id])
    with pytest.raises(ShareToSelf):
        await service.share_groups(APP, "acct-2", [own.id])
    # All or nothing: the good id before the bad one is not shared either.
    for bad in (own.id, first.id, "no-such-group"):
        with pytest.raises((ShareToSelf, AlreadyShared, NotFound)):
            await service.share_groups(APP, "acct-2", [second.id, bad])
    assert [g.id for g in (await service.list_shared_groups(APP, "acct-2")).items] == [first.id]
    with pytest.raises(NotFound) as caught:
        await service.share_groups(APP, "acct-9", [first.id])
    assert caught.value.kind == "account"
    with pytest.raises(InvalidInput):
        await service.share_groups(APP, "acct-3", [])
    await service.share_groups(APP, "acct-3", [first.id, second.id])
    await service.unshare_groups(APP, "acct-3", [first.id, own.id])
    assert [g.id for g in (await service.list_shared_groups(APP, "acct-3")).items] == [second.id]
    with pytest.raises(NotFound):
        await service.unshare_groups(APP, "acct-3", [second.id, "no-such-group"])
    assert [g.id for g in (await service.list_shared_groups(APP, "acct-3")).items] == [second.id]


# --- IoTize users, roles, invitations, keys -----------------------------------------------------


async def test_only_a_group_admin_updates_invites_or_manages_keys(service: CloudService) -> None:
    await accounts(service, IOT, "alice", "bob")
    group = await service.create_group(IOT, "alice", GroupDraft("home"), actor="alice")
    users = (await service.list_group_users(group.id, IOT)).items
    assert [(u.account.id, u.role.id) for u in users] == [("alice", ADMIN_ROLE)]
    assert [g.id for g in (await service.list_user_groups(IOT, "alice")).items] == [group.id]
    assert (await service.list_user_groups(IOT, "bob")).items == ()
    with pytest.raises(Forbidden):
        await service.update_group(group.id, GroupChanges(name="mine"), actor="bob", tenant=IOT)
    with pytest.raises(Forbidden):
        await service.invite_user(group.id, "carol@example.com", MEMBER_ROLE, actor="bob", tenant=IOT)
    with pytest.raises(Forbidden):
        await service.create_api_key(group.id, "sigfox", "k", "secret-token", actor="bob", tenant=IOT)
    with pytest.raises(Forbidden):
        await service.get_group(group.id, IOT, actor="bob")

    invitation = await service.invite_user(
        group.id, "bob@example.com", MEMBER_ROLE, actor="alice", tenant=IOT
    )
    assert invitation.accepted  # bob's account exists, so bob joined at once
    pending = await service.invite_user(group.id, "carol@example.com", MEMBER_ROLE, actor="alice", tenant=IOT)
    assert not pending.accepted
    assert (await service.get_group(group.id, IOT, actor="bob")).name == "home"
    with pytest.raises(Forbidden):
        await service.update_group(group.id, GroupChanges(name="mine"), actor="bob", tenant=IOT)
    await service.set_user_role(group.id, "bob", ADMIN_ROLE, actor="alice", tenant=IOT)
    assert (
        await service.update_group(group.id, GroupChanges(name="ours"), actor="bob", tenant=IOT)
    ).name == "ours"
    with pytest.raises(NotFound) as caught:
        await service.set_user_role(group.id, "bob", "no-such-role", actor="alice", tenant=IOT)
    assert caught.value.kind == "role"
    await service.remove_user(group.id, None, actor="bob", tenant=IOT)  # leaving needs no right
    with pytest.raises(NotFound):
        await service.remove_user(group.id, "bob", actor="alice", tenant=IOT)
    roles = (await service.list_roles(IOT)).items
    assert {r.id for r in roles} == {ADMIN_ROLE, MEMBER_ROLE}
    assert all(not r.removable for r in roles)


async def test_one_api_key_per_group_and_type_and_the_token_never_comes_back(
    service: CloudService, engine: ManagementStore, store_url: str
) -> None:
    await accounts(service, IOT, "alice")
    group = await service.create_group(IOT, "alice", GroupDraft("home"), actor="alice")
    key = await service.create_api_key(group.id, "sigfox", "main", "tok-SECRET-1", actor="alice", tenant=IOT)
    assert (key.type, key.name, key.token_set) == ("sigfox", "main", True)
    assert "tok-SECRET-1" not in repr(key)
    with pytest.raises(ApiKeyExists):
        await service.create_api_key(group.id, "sigfox", "again", "tok-2", actor="alice", tenant=IOT)
    await service.create_api_key(group.id, "lora", "other", "tok-3", actor="alice", tenant=IOT)
    changed = await service.update_api_key(group.id, "sigfox", "alice", IOT, token="tok-SECRET-2")
    assert changed.name == "main" and changed.token_fingerprint != key.token_fingerprint
    assert [k.type for k in await service.list_api_keys(group.id, IOT)] == ["lora", "sigfox"]
    await service.delete_api_key(group.id, "lora", actor="alice", tenant=IOT)
    with pytest.raises(NotFound) as caught:
        await service.delete_api_key(group.id, "lora", actor="alice", tenant=IOT)
    assert caught.value.kind == "api_key"
    dump = repr(raw_rows(store_url, "SELECT * FROM group_api_keys"))
    assert "tok-SECRET" not in dump


# --- pagination ---------------------------------------------------------------------------------


async def test_keyset_pages_cover_every_group_once(service: CloudService) -> None:
    created = [(await service.create_group(NAT, "lab", GroupDraft(f"g{i}"), actor="u")).id for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    sizes = []
    while True:
        page = await service.list_groups(NAT, limit=3, cursor=cursor)
        seen += [g.id for g in page.items]
        sizes.append(len(page.items))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert (seen, sizes) == (created, [3, 3, 1])
    exact = await service.list_groups(NAT, limit=7)
    assert exact.next_cursor is None and len(exact.items) == 7  # no empty last page


async def test_bad_limits_and_cursors_are_invalid_input(service: CloudService, add_device: AddDevice) -> None:
    for limit in (0, 501, -1):
        with pytest.raises(InvalidInput) as caught:
            await service.list_groups(None, limit=limit)
        assert caught.value.field == "limit"
    await add_device("EMU1")
    await add_device("EMU2")
    device_cursor = (await service.list_devices(limit=1)).next_cursor
    assert device_cursor is not None
    for cursor in ("%%%", "bm90LWEtY3Vyc29y", device_cursor, "Zzo" * 200):
        with pytest.raises(InvalidInput) as caught:
            await service.list_groups(None, cursor=cursor)
        assert caught.value.field == "cursor"


# --- devices ------------------------------------------------------------------------------------


async def test_synced_devices_show_their_groups_and_public_access_groups(
    service: CloudService, engine: ManagementStore, add_device: AddDevice
) -> None:
    await add_device("EMU0000000001")
    await engine.upsert_groups([access_group(5, 2), access_group(7, 1, deleted=True)])
    group = await service.create_group(NAT, "lab", GroupDraft("g"), actor="u")
    await service.add_member(group.id, "EMU0000000001", actor="u")
    page = await service.list_devices()
    assert [(d.serial, d.group_ids) for d in page.items] == [("EMU0000000001", (group.id,))]
    detail = await service.get_device("EMU0000000001")
    assert [a.group_id for a in detail.access_groups] == [5]  # the tombstone is left out
    view = detail.access_groups[0]
    assert (view.name, view.password_set, view.scram_iteration, view.version) == ("user5v2", True, 5000, 2)
    assert {f.name for f in dataclasses.fields(view)}.isdisjoint(
        {"password", "hash", "stored_key", "server_key"}
    )
    status = await service.sync_status("EMU0000000001")
    assert (status.access_groups, status.tombstones, status.newest_version) == (1, 1, 2)
    with pytest.raises(NotFound):
        await service.get_device("EMU-unknown")
    with pytest.raises(NotFound):
        await service.sync_status("EMU-unknown")


async def test_profile_groups_are_joined_once_and_created_if_missing(
    service: CloudService, engine: ManagementStore, add_device: AddDevice
) -> None:
    assert isinstance(engine, CloudStore)
    await add_device("EMU1")
    await add_device("EMU2")
    full = await service.create_group(NAT, "lab", GroupDraft("full", max_devices=1), actor="u")
    outcome = await engine.join_profile_groups("EMU1", ["fleet-a", full.id, "fleet-a"], T0)
    assert outcome == {"fleet-a": MembershipOutcome.ADDED, full.id: MembershipOutcome.ADDED}
    created = await service.get_group("fleet-a")
    assert (created.tenant, created.name, created.device_count) == ("native", "fleet-a", 1)
    await service.remove_member("fleet-a", "EMU1", actor="u")
    assert await engine.join_profile_groups("EMU1", ["fleet-a"], T0) == {}
    assert (await service.get_group("fleet-a")).device_count == 0  # a removal by a user sticks
    second = await engine.join_profile_groups("EMU2", [full.id, "fleet-a"], T0)
    assert second == {full.id: MembershipOutcome.FULL, "fleet-a": MembershipOutcome.ADDED}
    assert [d.serial for d in (await service.list_members(full.id)).items] == ["EMU1"]


async def test_profile_groups_of_many_devices_are_joined_in_one_call_as_one_by_one(
    service: CloudService, engine: ManagementStore, add_device: AddDevice
) -> None:
    assert isinstance(engine, CloudStore)
    for serial in ("EMU1", "EMU2", "EMU3"):
        await add_device(serial)
    small = await service.create_group(NAT, "lab", GroupDraft("small", max_devices=2), actor="u")
    await engine.join_profile_groups("EMU2", [small.id], T0)  # EMU2 joined before, one by one
    many = await engine.join_profile_groups_many(
        ["EMU1", "EMU2", "EMU3", "EMU-not-stored", "EMU1"], ["fleet-b", small.id], T0
    )
    assert many == {
        "EMU1": {"fleet-b": MembershipOutcome.ADDED, small.id: MembershipOutcome.ADDED},
        "EMU2": {},  # joined once already: never again
        "EMU3": {"fleet-b": MembershipOutcome.ADDED, small.id: MembershipOutcome.FULL},
        "EMU-not-stored": {},  # the store does not know it (its device record comes first)
    }
    assert (await service.get_group("fleet-b")).device_count == 2
    assert [d.serial for d in (await service.list_members(small.id)).items] == ["EMU1", "EMU2"]
    assert await engine.join_profile_groups_many(["EMU1", "EMU3"], ["fleet-b"], T0) == {
        "EMU1": {},
        "EMU3": {},
    }


# --- keys no store can hold ---------------------------------------------------------------------

UNSTORABLE = ["with\x00nul", "lone\ud800surrogate", "x" * 300]


@pytest.mark.parametrize("key", UNSTORABLE)
async def test_lookups_of_keys_no_store_can_hold_are_not_found_not_crashes(
    service: CloudService, add_device: AddDevice, key: str
) -> None:
    await accounts(service, IOT, "alice")
    await accounts(service, APP, "acct-1")
    group = await service.create_group(IOT, "alice", GroupDraft("home"), actor="alice")
    await add_device("EMU1")
    calls: list[Any] = [
        service.get_group(key),
        service.add_member(key, "EMU1", actor="u"),
        service.add_member(group.id, key, actor="alice", tenant=IOT),
        service.remove_member(group.id, key, actor="alice", tenant=IOT),
        service.get_device(key),
        service.sync_status(key),
        service.get_account(APP.key, key),
        service.share_groups(APP, key, ["x"]),
        service.set_user_role(group.id, key, MEMBER_ROLE, actor="alice", tenant=IOT),
        service.set_user_role(group.id, "alice", key, actor="alice", tenant=IOT),
        service.remove_user(group.id, key, actor="alice", tenant=IOT),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            await call
    for call in (
        service.list_groups(OC, key),
        service.list_groups(OC, name=key),
        service.count_groups(OC, key),
    ):
        with pytest.raises(InvalidInput):
            await call
    with pytest.raises(InvalidInput):
        await service.list_user_groups(IOT, key)


async def test_the_kept_count_always_equals_the_members_under_random_operations(
    service: CloudService, add_device: AddDevice, store_url: str
) -> None:
    shuffle = random.Random(20251201)
    serials = [f"EMU{index}" for index in range(6)]
    for serial in serials:
        await add_device(serial)
    groups = [
        (await service.create_group(NAT, "lab", GroupDraft(f"g{i}", max_devices=i), "u")).id for i in range(3)
    ]
    refusals = 0
    for _step in range(150):
        group_id, serial = shuffle.choice(groups), shuffle.choice(serials)
        action = shuffle.choice(("add", "add", "remove", "max"))
        try:
            if action == "add":
                await service.add_member(group_id, serial, "u")
            elif action == "remove":
                await service.remove_member(group_id, serial, "u")
            else:
                await service.update_group(group_id, GroupChanges(max_devices=shuffle.randrange(4)), "u")
        except (CapacityExceeded, NotFound):
            refusals += 1
    assert refusals > 0  # the walk did reach the limits
    for group_id in groups:
        group = await service.get_group(group_id)
        ((members,),) = raw_rows(
            store_url, f"SELECT COUNT(*) FROM device_group_members WHERE group_id = '{group_id}'"
        )
        assert group.device_count == members
        assert group.max_devices == 0 or members <= group.max_devices
