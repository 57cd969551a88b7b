"""The tree's rules that no face shows directly: change events after durability, rollback when the state
cannot store a change, rights of callers, login lookups, and secrets kept out of reprs and the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tap_emulator.app import open_device
from tap_emulator.config import GroupSeed, load_profile
from tap_emulator.model import Operation
from tap_emulator.state import InstanceWrite
from tap_emulator.tree import (
    MAINTENANCE,
    READ_ONLY_MAINTENANCE,
    Caller,
    ChangeEvent,
    DeviceTree,
    Request,
    Status,
)

ADMIN, SUPERVISOR, ANONYMOUS = 65535, 65534, 0


@pytest.fixture
def tree() -> Iterator[DeviceTree]:
    opened = open_device(
        load_profile(), ":memory:", random_bytes=os.urandom, clock_ms=lambda: 1_700_000_000_000
    )
    try:
        yield opened
    finally:
        opened.state.close()


async def put(tree: DeviceTree, gid: int, rid: int, value: Any, caller: Caller | None = None) -> Status:
    request = Request(Operation.WRITE, 1025, gid, rid, value, caller=caller or MAINTENANCE)
    return (await tree.handle(request)).status


async def test_the_profile_seeds_the_three_groups(tree: DeviceTree) -> None:
    assert tree.instance_ids(1025) == [ANONYMOUS, SUPERVISOR, ADMIN]
    admin = tree.account(ADMIN)
    assert admin is not None and (admin.name, admin.alias, admin.session_lifetime) == ("admin", ADMIN, 300)
    assert tree.hash_iteration == 5000 and tree.serial_number == "EMU0000000001"
    assert tree.device_identity()["firmware_version"] == "1.118.0"


async def test_a_change_event_follows_the_durable_write(tree: DeviceTree) -> None:
    seen: list[tuple[ChangeEvent, Any]] = []

    def listener(event: ChangeEvent) -> None:
        stored = tree.state.load().instances[(1025, event.instance_id)].values  # type: ignore[index]
        seen.append((event, dict(stored)))

    unsubscribe = tree.subscribe(listener)
    assert await put(tree, SUPERVISOR, 0, "night") is Status.CHANGED
    event, stored = seen[-1]
    assert (event.object_id, event.instance_id, event.resource_ids, event.created) == (
        1025,
        SUPERVISOR,
        frozenset({0}),
        False,
    )
    assert stored[0] == "night", "the event must come after the change is stored"
    assert (
        await tree.handle(Request(Operation.EXECUTE, 1025, 9, 65535, caller=MAINTENANCE))
    ).status is Status.CREATED
    assert seen[-1][0].created and seen[-1][0].instance_id == 9
    assert await put(tree, SUPERVISOR, 0, "x" * 17) is Status.BAD_REQUEST
    assert len(seen) == 2, "a refused write emits nothing"
    unsubscribe()
    assert await put(tree, SUPERVISOR, 0, "after") is Status.CHANGED
    assert len(seen) == 2


async def test_a_failing_listener_does_not_break_the_write_or_other_listeners(tree: DeviceTree) -> None:
    def broken(_event: ChangeEvent) -> None:
        raise RuntimeError("listener bug")

    heard: list[ChangeEvent] = []
    tree.subscribe(broken)
    tree.subscribe(heard.append)
    assert await put(tree, SUPERVISOR, 4, 12) is Status.CHANGED
    assert len(heard) == 1


async def test_a_change_the_state_cannot_store_is_5_00_and_rolled_back(tree: DeviceTree) -> None:
    heard: list[ChangeEvent] = []
    tree.subscribe(heard.append)
    tree.state.close()  # every later commit fails
    assert await put(tree, SUPERVISOR, 0, "lost") is Status.INTERNAL_SERVER_ERROR
    response = await tree.handle(Request(Operation.READ, 1025, SUPERVISOR, 0, caller=MAINTENANCE))
    assert response.value == "supervisor"
    assert (
        await tree.handle(Request(Operation.EXECUTE, 1025, 9, 65535, caller=MAINTENANCE))
    ).status is Status.INTERNAL_SERVER_ERROR
    assert (
        await tree.handle(Request(Operation.READ, 1025, 9, 0, caller=MAINTENANCE))
    ).status is Status.NOT_FOUND
    assert tree.find_account("lost") is None and tree.find_account("supervisor") is not None
    assert heard == []


async def test_login_names_follow_renames(tree: DeviceTree) -> None:
    assert await put(tree, SUPERVISOR, 0, "ops") is Status.CHANGED
    found = tree.find_account("ops")
    assert found is not None and found.group_id == SUPERVISOR
    assert tree.find_account("supervisor") is None


async def test_callers_rights(tree: DeviceTree) -> None:
    anonymous, supervisor, admin = Caller(ANONYMOUS), Caller(SUPERVISOR), Caller(ADMIN)
    assert (
        await tree.handle(Request(Operation.READ, 1025, ADMIN, 0, caller=anonymous))
    ).status is Status.CONTENT
    assert await put(tree, SUPERVISOR, 0, "x", anonymous) is Status.UNAUTHORIZED
    assert await put(tree, ANONYMOUS, 0, "x", supervisor) is Status.CHANGED
    admin_password = Request(Operation.EXECUTE, 1025, ADMIN, 2, "pw", caller=supervisor)
    assert (await tree.handle(admin_password)).status is Status.UNAUTHORIZED
    own = Request(Operation.EXECUTE, 1025, ADMIN, 2, "pw", caller=admin)
    assert (await tree.handle(own)).status is Status.CHANGED
    # A user whose alias names a writing profile inherits its rights.
    assert (
        await tree.handle(Request(Operation.EXECUTE, 1025, 5, 65535, caller=MAINTENANCE))
    ).status is Status.CREATED
    assert await put(tree, 5, 0, "user-5", Caller(5)) is Status.UNAUTHORIZED
    assert await put(tree, 5, 5, SUPERVISOR) is Status.CHANGED
    assert await put(tree, 5, 0, "user-5", Caller(5)) is Status.CHANGED


async def test_the_profile_order_is_the_order_of_the_writers_with_admin_first() -> None:
    """writers = [supervisor, 40, 30, admin]: admin still ranks first, then supervisor, 40, 30."""
    base = load_profile()
    profile = dataclasses.replace(
        base,
        access=dataclasses.replace(base.access, writers=(SUPERVISOR, 40, 30, ADMIN)),
        groups=(*base.groups, GroupSeed(30, "ops", "ops")),
    )
    tree = open_device(profile, ":memory:", random_bytes=os.urandom, clock_ms=lambda: 1_700_000_000_000)
    try:
        ops, supervisor = Caller(30), Caller(SUPERVISOR)
        assert await put(tree, SUPERVISOR, 4, 10, ops) is Status.UNAUTHORIZED
        assert await put(tree, 30, 4, 10, supervisor) is Status.CHANGED
        assert await put(tree, ADMIN, 4, 10, supervisor) is Status.UNAUTHORIZED
        assert await put(tree, SUPERVISOR, 4, 10, Caller(ADMIN)) is Status.CHANGED
        # A user ranks by its profile: one with supervisor's profile is out of reach of 30 and of peers.
        assert (await tree.handle(Request(Operation.EXECUTE, 1025, 31, 65535, caller=ops))).status is (
            Status.CREATED
        )
        assert await put(tree, 31, 5, 30, ops) is Status.UNAUTHORIZED, "30 may not grant its own rank"
        assert await put(tree, 31, 5, SUPERVISOR, supervisor) is Status.UNAUTHORIZED
        assert await put(tree, 31, 5, SUPERVISOR, Caller(ADMIN)) is Status.CHANGED
        assert await put(tree, 31, 0, "deputy", ops) is Status.UNAUTHORIZED
        assert await put(tree, 31, 0, "deputy", supervisor) is Status.UNAUTHORIZED
        assert await put(tree, 31, 0, "deputy", Caller(31)) is Status.CHANGED, "its own name"
        assert await put(tree, 31, 5, 31, Caller(31)) is Status.UNAUTHORIZED, "not its own alias"
        # Creating a group the writers rank (40, not seeded) is creating that rank: refused below it.
        create_40 = Request(Operation.EXECUTE, 1025, 40, 65535, caller=MAINTENANCE)
        assert (await tree.handle(dataclasses.replace(create_40, caller=ops))).status is Status.UNAUTHORIZED
        assert (await tree.handle(dataclasses.replace(create_40, caller=supervisor))).status is Status.CREATED
    finally:
        tree.state.close()


async def test_a_group_promoted_while_its_password_is_derived_is_out_of_reach() -> None:
    """The rank rule holds at the commit too: a supervisor's password change on group 9 that admin
    promotes to its own profile during the derivation is refused, and 9 keeps no new password."""
    deriving, promoted = asyncio.Event(), asyncio.Event()

    async def slow_offload(fn: Callable[..., Any], *args: Any) -> Any:
        deriving.set()
        await promoted.wait()
        return fn(*args)

    tree = open_device(
        load_profile(), ":memory:", random_bytes=os.urandom, clock_ms=lambda: 1, offload=slow_offload
    )
    try:
        create = Request(Operation.EXECUTE, 1025, 9, 65535, caller=MAINTENANCE)
        assert (await tree.handle(create)).status is Status.CREATED
        change = asyncio.create_task(
            tree.handle(Request(Operation.EXECUTE, 1025, 9, 2, "mine", caller=Caller(SUPERVISOR)))
        )
        await asyncio.wait_for(deriving.wait(), 5)
        assert await put(tree, 9, 5, ADMIN, Caller(ADMIN)) is Status.CHANGED
        promoted.set()
        assert (await asyncio.wait_for(change, 5)).status is Status.UNAUTHORIZED
        account = tree.account(9)
        assert account is not None and account.credential is None
    finally:
        tree.state.close()


async def test_a_duplicate_name_in_an_older_state_logs_in_to_the_higher_ranked_group(
    tree: DeviceTree,
) -> None:
    """States written before names were unique may hold a second "admin": it never wins the login."""
    assert (
        await tree.handle(Request(Operation.EXECUTE, 1025, 9, 65535, caller=MAINTENANCE))
    ).status is Status.CREATED
    row = tree.state.load().instances[(1025, 9)]
    values = {**row.values, 0: "admin"}
    tree.state.commit_sync(
        [InstanceWrite(dataclasses.replace(row, values=values, version=row.version + 1), {"values": {}})]
    )
    tree.reload()
    assert (await tree.handle(Request(Operation.READ, 1025, 9, 0, caller=MAINTENANCE))).value == "admin"
    found = tree.find_account("admin")
    assert found is not None and found.group_id == ADMIN
    assert tree.find_account("") is None


async def test_a_read_only_caller_reads_everything_and_changes_nothing(tree: DeviceTree) -> None:
    caller = READ_ONLY_MAINTENANCE
    read = await tree.handle(Request(Operation.READ, 1025, ADMIN, 0, caller=caller))
    assert (read.status, read.value) == (Status.CONTENT, "admin")
    assert (await tree.handle(Request(Operation.READ, 1025, caller=caller))).status is Status.CONTENT
    refused = [
        Request(Operation.WRITE, 1025, ADMIN, 0, "mine", caller=caller),
        Request(Operation.EXECUTE, 1025, ADMIN, 2, "pw", caller=caller),
        Request(Operation.EXECUTE, 1025, 77, 65535, caller=caller),
        Request(Operation.WRITE, 1024, None, 42, 1000, caller=caller),
    ]
    for request in refused:
        response = await tree.handle(request)
        assert response.status is Status.UNAUTHORIZED, request
        assert "read-only" in response.diagnostic
    assert tree.account(ADMIN) is not None and tree.account(ADMIN).name == "admin"  # type: ignore[union-attr]
    assert 77 not in tree.instance_ids(1025)
    assert tree.hash_iteration == 5000


async def test_secrets_stay_out_of_reprs_and_the_outbox(tree: DeviceTree) -> None:
    key = bytes(range(1, 17)) + bytes(range(101, 117)) + b"\x0a\x0b\x0c\x0d" + (50).to_bytes(4, "big")
    assert (
        await tree.handle(Request(Operation.EXECUTE, 1025, SUPERVISOR, 2, key, caller=MAINTENANCE))
    ).status is Status.CHANGED
    account = tree.account(SUPERVISOR)
    assert account is not None and account.credential is not None
    assert key[:16].hex() not in repr(account) and str(list(key[:16])) not in repr(account)
    assert "b'\\x01\\x02" not in repr(account)
    assert "secret" not in repr(Request(Operation.EXECUTE, 1025, SUPERVISOR, 2, "secret", caller=MAINTENANCE))
    rows = await tree.state.pending_outbox()
    last = rows[-1]
    assert last.instance_id == SUPERVISOR and last.payload["password_set"] is True
    text = json.dumps([r.payload for r in rows])
    for secret in (key[:16], key[16:32]):
        assert secret.hex() not in text
    assert "password" not in last.payload["values"]
    assert last.payload["values"]["scram-user-salt"] == 0x0A0B0C0D


async def test_out_of_range_or_unknown_targets_are_4_04(tree: DeviceTree) -> None:
    for request in (
        Request(Operation.READ, 1026, 0, 0, caller=MAINTENANCE),
        Request(Operation.READ, 1025, 70000, 0, caller=MAINTENANCE),
        Request(Operation.READ, 1025, 0, 3, caller=MAINTENANCE),
        Request(Operation.READ, 1025, None, 0, caller=MAINTENANCE),
        Request(Operation.READ, 1025, 12, None, caller=MAINTENANCE),
    ):
        assert (await tree.handle(request)).status is Status.NOT_FOUND, request
    assert (
        await tree.handle(Request(Operation.WRITE, 1025, 0, None, 1, caller=MAINTENANCE))
    ).status is Status.METHOD_NOT_ALLOWED


async def test_a_wrongly_typed_value_is_4_00(tree: DeviceTree) -> None:
    assert await put(tree, SUPERVISOR, 4, "12") is Status.BAD_REQUEST
    assert await put(tree, SUPERVISOR, 4, True) is Status.BAD_REQUEST
    assert await put(tree, SUPERVISOR, 0, 12) is Status.BAD_REQUEST
    assert await put(tree, SUPERVISOR, 0, None) is Status.BAD_REQUEST


async def test_factory_reset_restores_the_profile(tree: DeviceTree) -> None:
    assert (
        await tree.handle(Request(Operation.EXECUTE, 1025, 8, 65535, caller=MAINTENANCE))
    ).status is Status.CREATED
    assert await put(tree, ADMIN, 4, 1) is Status.CHANGED
    version_before = tree.state.load().instances[(1025, ADMIN)].version
    tree.seed(load_profile(), reset=True)
    assert tree.instance_ids(1025) == [ANONYMOUS, SUPERVISOR, ADMIN]
    assert (await tree.handle(Request(Operation.READ, 1025, ADMIN, 4, caller=MAINTENANCE))).value == 300
    stored = tree.state.load().instances
    assert stored[(1025, 8)].deleted and stored[(1025, ADMIN)].version > version_before
