"""Hypothesis drives the tree with random GroupService sequences and compares it with a plain dict model.

The model below is the issue's table written as the simplest code that could hold it: groups are dicts,
limits are comparisons. Any difference in status or value, in the change events, or after reopening the
state, is a bug in one of them. Passwords set in clear are rare (PBKDF2 is slow); key blobs are common.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.model import Operation
from tap_emulator.tree import MAINTENANCE, ChangeEvent, DeviceTree, Request, Status

RID = {
    "name": 0,
    "password": 2,
    "session-lifetime": 4,
    "alias": 5,
    "scram-user-iteration": 7,
    "scram-user-salt": 16,
}
CREATE = 65535
HASH_ITERATION = 3
GROUPS = st.sampled_from([0, 1, 2, 3, 4242, 65534, 65535])
U32 = 2**32 - 1

names = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=18),
    st.sampled_from(["admin", "supervisor", "anonymous", "a", ""]),  # taken names and duplicates
    st.text(max_size=4),  # sometimes control characters or non-ASCII
)
values = {
    "name": names,
    "session-lifetime": st.integers(-2, 70000) | st.sampled_from([0, 65535, 65536]),
    "alias": GROUPS | st.sampled_from([-1, 65536]),
    "scram-user-iteration": st.integers(-1, 10) | st.sampled_from([U32, U32 + 1]),
    "scram-user-salt": st.integers(-1, 10) | st.sampled_from([U32, U32 + 1]),
}
key_blobs = st.builds(
    lambda size, body, iteration: (
        (body * 41)[:size][: size - 4] + iteration.to_bytes(4, "big") if size == 40 else (body * 41)[:size]
    ),
    st.sampled_from([0, 15, 16, 17, 36, 40, 41]),
    st.binary(min_size=1, max_size=8),
    st.sampled_from([0, 1, 777, U32]),
)
operations = st.one_of(
    st.tuples(st.just("create"), GROUPS),
    *[st.tuples(st.just("put"), GROUPS, st.just(slug), strategy) for slug, strategy in values.items()],
    st.tuples(st.just("get"), GROUPS, st.sampled_from(sorted(values))),
    st.tuples(st.just("key"), GROUPS, key_blobs),
    st.tuples(st.just("password"), GROUPS, st.sampled_from(["pw", "x" * 16, "x" * 17, "t\tab"])),
)


class DictModel:
    """The issue's rules, restated without the tree's machinery."""

    def __init__(self, groups: dict[int, dict[str, Any]]) -> None:
        self.groups = groups

    def apply(self, op: tuple[Any, ...]) -> tuple[Status, Any]:
        kind, gid = op[0], op[1]
        group = self.groups.get(gid)
        if kind == "create":
            if group is not None:
                return Status.BAD_REQUEST, None
            self.groups[gid] = {
                "name": "",
                "session-lifetime": 300,
                "alias": gid,
                "scram-user-iteration": 0,
                "scram-user-salt": 0,
            }
            return Status.CREATED, None
        if group is None:
            return Status.NOT_FOUND, None
        if kind == "get":
            return Status.CONTENT, group[op[2]]
        if kind == "put":
            slug, value = op[2], op[3]
            if not self.valid(slug, value) or (slug == "name" and self.name_taken(value, gid)):
                return Status.BAD_REQUEST, None
            group[slug] = value
            return Status.CHANGED, None
        if kind == "password":
            password = op[2]
            if len(password) > 16 or not all(0x20 <= ord(c) <= 0x7E for c in password):
                return Status.BAD_REQUEST, None
            group["scram-user-salt"] = None  # drawn by the device: any non-zero first byte
            group["scram-user-iteration"] = HASH_ITERATION
            return Status.CHANGED, None
        blob: bytes = op[2]
        if len(blob) == 16:
            group["scram-user-salt"], group["scram-user-iteration"] = 0, 0
        elif len(blob) == 36:
            group["scram-user-salt"] = int.from_bytes(blob[32:36], "big")
            group["scram-user-iteration"] = HASH_ITERATION
        elif len(blob) == 40 and int.from_bytes(blob[36:], "big") != 0:
            group["scram-user-salt"] = int.from_bytes(blob[32:36], "big")
            group["scram-user-iteration"] = int.from_bytes(blob[36:], "big")
        else:
            return Status.BAD_REQUEST, None
        return Status.CHANGED, None

    def name_taken(self, name: str, gid: int) -> bool:
        """Names are unique per device; empty names never clash."""
        return name != "" and any(g["name"] == name for other, g in self.groups.items() if other != gid)

    def valid(self, slug: str, value: Any) -> bool:
        if slug == "name":
            return len(value) <= 16 and all(0x20 <= ord(c) <= 0x7E for c in value)
        if slug == "session-lifetime":
            return bool(0 <= value <= 65535)
        if slug == "alias":
            return value in self.groups
        if slug == "scram-user-iteration":
            return bool(1 <= value <= U32)
        return bool(0 <= value <= U32)


def to_request(op: tuple[Any, ...]) -> Request:
    kind, gid = op[0], op[1]
    if kind == "create":
        return Request(Operation.EXECUTE, 1025, gid, CREATE, caller=MAINTENANCE)
    if kind == "get":
        return Request(Operation.READ, 1025, gid, RID[op[2]], caller=MAINTENANCE)
    if kind == "put":
        return Request(Operation.WRITE, 1025, gid, RID[op[2]], op[3], caller=MAINTENANCE)
    return Request(Operation.EXECUTE, 1025, gid, RID["password"], op[2], caller=MAINTENANCE)


async def read_all(tree: DeviceTree) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for gid in tree.instance_ids(1025):
        out[gid] = {}
        for slug in values:
            response = await tree.handle(Request(Operation.READ, 1025, gid, RID[slug], caller=MAINTENANCE))
            assert response.status is Status.CONTENT
            out[gid][slug] = response.value
    return out


def reconcile(expected: dict[int, dict[str, Any]], actual: dict[int, dict[str, Any]]) -> None:
    """Adopt the device-drawn salts (the model only knows they are non-zero with a non-zero first byte)."""
    for gid, group in expected.items():
        if group.get("scram-user-salt", 0) is None and gid in actual:
            drawn = actual[gid]["scram-user-salt"]
            assert drawn >> 24 != 0, drawn
            group["scram-user-salt"] = drawn


PROFILE = load_profile()
PROFILE = dataclasses.replace(
    PROFILE, security=dataclasses.replace(PROFILE.security, hash_iteration=HASH_ITERATION)
)


async def run_sequence(ops: list[tuple[Any, ...]]) -> None:
    rng = random.Random(7)
    clock = iter(range(10**6, 10**9))
    tree = open_device(PROFILE, ":memory:", random_bytes=rng.randbytes, clock_ms=lambda: next(clock))
    try:
        events: list[ChangeEvent] = []
        tree.subscribe(events.append)
        model = DictModel(await read_all(tree))
        for op in ops:
            expected_status, expected_value = model.apply(op)
            before = len(events)
            response = await tree.handle(to_request(op))
            assert response.status is expected_status, (op, response)
            if expected_status is Status.CONTENT:
                if expected_value is None:  # a salt drawn by the device
                    expected_value = response.value
                    model.groups[op[1]][op[2]] = expected_value
                assert response.value == expected_value, op
            changed = expected_status in (Status.CHANGED, Status.CREATED)
            assert len(events) == before + changed, op
            if changed:
                assert events[-1].instance_id == op[1] and events[-1].created == (op[0] == "create")
        actual = await read_all(tree)
        reconcile(model.groups, actual)
        assert actual == model.groups
        # What was acknowledged is what the state holds: a tree reopened on it reads the same.
        reopened = DeviceTree(
            tree.model,
            tree.state,
            access=PROFILE.access,
            random_bytes=rng.randbytes,
            clock_ms=lambda: next(clock),
        )
        assert await read_all(reopened) == actual
        for gid in actual:
            assert reopened.account(gid) == tree.account(gid)
    finally:
        tree.state.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, max_size=30))
def test_random_sequences_match_the_dict_model(ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(asyncio.wait_for(run_sequence(ops), 30))
