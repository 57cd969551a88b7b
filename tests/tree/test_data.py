"""Variables (1029), bundles (1028), the target memory and the access-list rights, through the tree.

The demo profile (resources/profiles/demo.toml) seeds three bundles: sensors (anonymous reads, tech
reads and writes), control (tech reads, supervisor writes) and maintenance (admin only); variable 31
shares the address of variable 20. Group 20 (alice) is a user of profile 3 (tech).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.app import open_device
from tap_emulator.codec import tlv
from tap_emulator.codec.variables import DATA_TYPES, encode_number
from tap_emulator.config import ConfigError, load_profile
from tap_emulator.model import Operation
from tap_emulator.state import DeviceState
from tap_emulator.tree import MAINTENANCE, Caller, ChangeEvent, DeviceTree, Request, Status
from tap_emulator.tree.handlers.bundle import BundleHandler

BUNDLE, VARIABLE = 1028, 1029
ADMIN, SUPERVISOR, ANONYMOUS, TECH, ALICE = 65535, 65534, 0, 3, 20
ACL, VALUES, NAME = 0, 1, 4
ADDRESS, TYPE, COUNT, ACCESS, VALUE, SET_VALUE, BUNDLE_ID, BUNDLE_VALUES, META, UNIT = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
)
CREATE = 65535
DEMO = load_profile("demo")


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[DeviceTree]:
    device = open_device(DEMO, str(tmp_path / "state.db"))
    yield device
    device.state.close()


async def call(
    tree: DeviceTree,
    op: Operation,
    obj: int,
    inst: int | None,
    res: int | None,
    value: object = None,
    *,
    group: int | None = None,
) -> Any:
    caller = MAINTENANCE if group is None else Caller(group)
    return await tree.handle(Request(op, obj, inst, res, value, caller=caller))


async def read(tree: DeviceTree, obj: int, inst: int, res: int, *, group: int | None = None) -> Any:
    response = await call(tree, Operation.READ, obj, inst, res, group=group)
    assert response.status is Status.CONTENT, response
    return response.value


async def test_profile_values_are_in_the_target_memory_in_the_sdk_encodings(tree: DeviceTree) -> None:
    assert await read(tree, VARIABLE, 10, VALUE) == struct.pack(">f", 21.5)
    assert await read(tree, VARIABLE, 11, VALUE) == (40).to_bytes(2, "big")
    assert await read(tree, VARIABLE, 12, VALUE) == bytes([0xFF, 0, 1, 2])
    assert await read(tree, VARIABLE, 10, TYPE) == 19  # domain TARGET (0) << 6 | FLOAT32
    assert await read(tree, VARIABLE, 12, COUNT) == 4
    assert await read(tree, VARIABLE, 10, ADDRESS) == 0x20000000
    assert await read(tree, VARIABLE, 10, META) == b"temperature:C"
    assert await read(tree, VARIABLE, 10, UNIT) == "C"
    assert await read(tree, VARIABLE, 22, BUNDLE_ID) == 2
    assert await read(tree, BUNDLE, 1, NAME) == "sensors"


async def test_bundle_values_are_one_tlv_node_with_a_child_per_variable(tree: DeviceTree) -> None:
    (node,) = tlv.decode(await read(tree, BUNDLE, 1, VALUES))
    assert node.type is tlv.TlvType.MULTIPLE_RESOURCE and node.id == 1
    assert node.value == (
        tlv.TlvNode(tlv.TlvType.RESOURCE_INSTANCE, 10, struct.pack(">f", 21.5)),
        tlv.TlvNode(tlv.TlvType.RESOURCE_INSTANCE, 11, b"\x00\x28"),
        tlv.TlvNode(tlv.TlvType.RESOURCE_INSTANCE, 12, b"\xff\x00\x01\x02"),
    )
    assert await read(tree, VARIABLE, 11, BUNDLE_VALUES) == await read(tree, BUNDLE, 1, VALUES)


async def test_two_variables_at_one_address_see_one_value(tree: DeviceTree) -> None:
    response = await call(tree, Operation.WRITE, VARIABLE, 20, VALUE, (4242).to_bytes(4, "big"))
    assert response.status is Status.CHANGED
    assert await read(tree, VARIABLE, 31, VALUE) == (4242).to_bytes(4, "big")
    response = await call(tree, Operation.EXECUTE, VARIABLE, 31, SET_VALUE, (7).to_bytes(4, "big"))
    assert response.status is Status.CHANGED
    assert await read(tree, VARIABLE, 20, VALUE) == (7).to_bytes(4, "big")


async def test_a_value_of_the_wrong_size_is_refused_and_ascii_is_padded(tree: DeviceTree) -> None:
    response = await call(tree, Operation.WRITE, VARIABLE, 20, VALUE, b"\x01\x02")
    assert response.status is Status.BAD_REQUEST and "4 bytes" in response.diagnostic
    assert (await call(tree, Operation.WRITE, VARIABLE, 22, VALUE, b"pump")).status is Status.CHANGED
    assert await read(tree, VARIABLE, 22, VALUE) == b"pump\0\0\0\0"
    assert (await call(tree, Operation.WRITE, VARIABLE, 22, VALUE, b"x" * 9)).status is Status.BAD_REQUEST


@pytest.mark.parametrize(
    ("group", "variable", "may_read", "may_write"),
    [
        (ANONYMOUS, 10, True, False),  # sensors: anonymous reads
        (TECH, 10, True, True),
        (ALICE, 10, True, True),  # a user holds its profile's rights (alias 3)
        (SUPERVISOR, 10, False, False),  # not in the sensors list
        (TECH, 20, True, False),  # control: tech reads
        (ALICE, 20, True, False),
        (SUPERVISOR, 20, True, True),
        (ANONYMOUS, 20, False, False),
        (TECH, 30, False, False),  # maintenance: admin only
        (ADMIN, 30, True, True),
    ],
)
async def test_rights_come_from_the_bundles_access_list(
    tree: DeviceTree, group: int, variable: int, may_read: bool, may_write: bool
) -> None:
    size = len(await read(tree, VARIABLE, variable, VALUE))
    value = await call(tree, Operation.READ, VARIABLE, variable, VALUE, group=group)
    assert value.status is (Status.CONTENT if may_read else Status.UNAUTHORIZED)
    bundle = await call(
        tree, Operation.READ, BUNDLE, await read(tree, VARIABLE, variable, BUNDLE_ID), VALUES, group=group
    )
    assert bundle.status is value.status
    for op, res in ((Operation.WRITE, VALUE), (Operation.EXECUTE, SET_VALUE)):
        written = await call(tree, op, VARIABLE, variable, res, bytes(size), group=group)
        assert written.status is (Status.CHANGED if may_write else Status.UNAUTHORIZED)
    rights = (2 if may_write else 0) | (1 if may_read else 0)
    expected = (
        bytes([0x41, group, rights]) if group <= 255 else bytes([0x61, group >> 8, group & 0xFF, rights])
    )
    assert await read(tree, VARIABLE, variable, ACCESS, group=group) == expected


async def test_an_unconfigured_variable_or_bundle_is_not_found(tree: DeviceTree) -> None:
    assert (await call(tree, Operation.READ, VARIABLE, 99, VALUE, group=ADMIN)).status is Status.NOT_FOUND
    assert (await call(tree, Operation.READ, BUNDLE, 99, VALUES, group=ADMIN)).status is Status.NOT_FOUND


async def test_access_list_entries_in_the_sdk_encodings(tree: DeviceTree) -> None:
    # Supervisor gets the sensors bundle through the SDK's short form (61 lo RW), tech loses write.
    assert (
        await call(tree, Operation.WRITE, BUNDLE, 1, ACL, bytes([0x61, 0xFE, 0x01]), group=ADMIN)
    ).status is Status.CHANGED
    assert (
        await call(tree, Operation.WRITE, BUNDLE, 1, ACL, bytes([0x41, TECH, 0x01]), group=ADMIN)
    ).status is Status.CHANGED
    assert (
        await call(tree, Operation.WRITE, BUNDLE, 1, ACL, bytes([0x61, 0x01, 0x2C, 0x03]), group=ADMIN)
    ).status is Status.CHANGED
    acl = await read(tree, BUNDLE, 1, ACL)
    assert acl == bytes(
        [0x41, 0, 1, 0x41, TECH, 1, 0x61, 0x01, 0x2C, 3, 0x61, 0xFF, 0xFE, 1, 0x61, 0xFF, 0xFF, 3]
    )
    assert (await call(tree, Operation.READ, VARIABLE, 10, VALUE, group=SUPERVISOR)).status is Status.CONTENT
    assert (
        await call(tree, Operation.WRITE, VARIABLE, 10, VALUE, bytes(4), group=TECH)
    ).status is Status.UNAUTHORIZED
    for bad in (b"\x41\x01", b"\x42\x01\x03", b"\x61\x01\x02\x03\x04"):
        assert (await call(tree, Operation.WRITE, BUNDLE, 1, ACL, bad)).status is Status.BAD_REQUEST


async def test_configuring_needs_a_writer_not_an_access_list(tree: DeviceTree) -> None:
    # tech may write the sensors' values but not their configuration, nor an access list.
    assert (
        await call(tree, Operation.WRITE, VARIABLE, 10, ADDRESS, 0x20000010, group=TECH)
    ).status is Status.UNAUTHORIZED
    assert (
        await call(tree, Operation.WRITE, BUNDLE, 1, ACL, bytes([0x41, TECH, 3]), group=TECH)
    ).status is Status.UNAUTHORIZED
    assert (
        await call(tree, Operation.EXECUTE, BUNDLE, 9, CREATE, None, group=TECH)
    ).status is Status.UNAUTHORIZED
    assert (
        await call(tree, Operation.WRITE, VARIABLE, 10, ADDRESS, 0x20000010, group=SUPERVISOR)
    ).status is Status.CHANGED


async def test_a_variable_is_created_and_configured_as_the_sdk_does(tree: DeviceTree) -> None:
    steps = [
        (Operation.EXECUTE, BUNDLE, 5, CREATE, None),
        (Operation.WRITE, BUNDLE, 5, NAME, "extra"),
        (Operation.WRITE, BUNDLE, 5, ACL, bytes([0x61, 0xFF, 0x03])),
        (Operation.EXECUTE, VARIABLE, 50, CREATE, b"\x06"),
        (Operation.WRITE, VARIABLE, 50, ADDRESS, 0x20000300),
        (Operation.WRITE, VARIABLE, 50, TYPE, 2),  # INT16
        (Operation.WRITE, VARIABLE, 50, COUNT, 2),
        (Operation.WRITE, VARIABLE, 50, BUNDLE_ID, 5),
        (Operation.WRITE, VARIABLE, 50, META, b"flow:l"),
        (Operation.WRITE, VARIABLE, 50, VALUE, bytes([0xFF, 0xFE, 0x00, 0x05])),
    ]
    for op, obj, inst, res, value in steps:
        response = await call(tree, op, obj, inst, res, value, group=ADMIN)
        assert response.status.is_success, (obj, inst, res, response)
    assert await read(tree, VARIABLE, 50, VALUE, group=ADMIN) == bytes([0xFF, 0xFE, 0x00, 0x05])
    assert (await call(tree, Operation.WRITE, VARIABLE, 50, UNIT, "m3")).status is Status.CHANGED
    assert await read(tree, VARIABLE, 50, META) == b"flow:m3"
    (node,) = tlv.decode(await read(tree, BUNDLE, 5, VALUES, group=ADMIN))
    assert [c.id for c in node.value if isinstance(c, tlv.TlvNode)] == [50]


async def test_variables_outside_the_target_memory_or_of_unknown_type_are_refused(tree: DeviceTree) -> None:
    for res, value in ((ADDRESS, 0x10000000), (ADDRESS, 0x2000FFFE), (TYPE, 7)):
        response = await call(tree, Operation.WRITE, VARIABLE, 30, res, value)
        assert response.status is Status.BAD_REQUEST, (res, value)
    assert await read(tree, VARIABLE, 30, ADDRESS) == 0x20000200
    assert (await call(tree, Operation.WRITE, VARIABLE, 30, ADDRESS, 0x2000FFFC)).status is Status.CHANGED
    assert (await call(tree, Operation.WRITE, VARIABLE, 30, COUNT, 2)).status is Status.BAD_REQUEST


async def test_value_writes_survive_a_restart_with_variables_bundles_and_acls(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    tree = open_device(DEMO, path)
    await call(tree, Operation.WRITE, VARIABLE, 20, VALUE, (99).to_bytes(4, "big"))
    await call(tree, Operation.EXECUTE, VARIABLE, 60, CREATE, b"")
    await call(tree, Operation.WRITE, VARIABLE, 60, ADDRESS, 0x20000400)
    await call(tree, Operation.WRITE, VARIABLE, 60, BUNDLE_ID, 2)
    await call(tree, Operation.WRITE, BUNDLE, 2, ACL, bytes([0x41, ANONYMOUS, 0x01]))
    tree.state.close()
    reopened = open_device(DEMO, path)
    try:
        assert await read(reopened, VARIABLE, 31, VALUE) == (99).to_bytes(4, "big")
        assert await read(reopened, VARIABLE, 60, ADDRESS) == 0x20000400
        assert await read(reopened, VARIABLE, 20, VALUE, group=ANONYMOUS) == (99).to_bytes(4, "big")
        (node,) = tlv.decode(await read(reopened, BUNDLE, 2, VALUES))
        assert [c.id for c in node.value if isinstance(c, tlv.TlvNode)] == [20, 21, 22, 60]
        reopened.seed(DEMO, reset=True)  # factory reset: the profile's values and lists again
        assert await read(reopened, VARIABLE, 20, VALUE) == (1500).to_bytes(4, "big")
        assert (await call(reopened, Operation.READ, VARIABLE, 60, VALUE)).status is Status.NOT_FOUND
        assert (
            await call(reopened, Operation.READ, VARIABLE, 20, VALUE, group=ANONYMOUS)
        ).status is Status.UNAUTHORIZED
    finally:
        reopened.state.close()


async def test_a_value_write_the_state_cannot_store_is_not_acknowledged(tree: DeviceTree) -> None:
    before = await read(tree, VARIABLE, 20, VALUE)

    async def failing(changes: Any) -> None:
        from tap_emulator.state import StateError

        raise StateError("disk full", "SQLITE_FULL")

    tree.state.commit = failing  # type: ignore[method-assign]
    response = await call(tree, Operation.WRITE, VARIABLE, 20, VALUE, (5).to_bytes(4, "big"))
    assert response.status is Status.INTERNAL_SERVER_ERROR
    assert tree.memory.read(0x20000100, 4) == before


def _events(tree: DeviceTree) -> list[ChangeEvent]:
    seen: list[ChangeEvent] = []
    tree.subscribe(seen.append)
    return seen


async def test_a_write_announces_overlapping_variables_and_their_bundles(tree: DeviceTree) -> None:
    seen = _events(tree)
    await call(tree, Operation.WRITE, VARIABLE, 20, VALUE, (1).to_bytes(4, "big"))
    touched = {(e.object_id, e.instance_id) for e in seen if VALUE in e.resource_ids or e.object_id == BUNDLE}
    assert touched == {(VARIABLE, 20), (VARIABLE, 31), (BUNDLE, 2), (BUNDLE, 3)}
    assert any(e.instance_id == 21 and e.resource_ids == {BUNDLE_VALUES} for e in seen)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (11, 40.5, (40).to_bytes(2, "big")),  # half-even
        (11, 41.5, (42).to_bytes(2, "big")),
        (11, -3.0, (0).to_bytes(2, "big")),  # clamped to UINT16
        (11, 1e9, (0xFFFF).to_bytes(2, "big")),
        (12, -300.0, bytes([0x80, 0, 1, 2])),  # INT8, element 0 only
        (10, 1.25, struct.pack(">f", 1.25)),
        (21, 7.0, b"\x01"),  # BOOLEAN
        (30, math.nan, bytes(4)),
    ],
)
async def test_source_write_encodes_in_the_variables_type(
    tree: DeviceTree, variable: int, value: float, expected: bytes
) -> None:
    seen = _events(tree)
    assert tree.variables.source_write(variable, value) is True
    assert (await read(tree, VARIABLE, variable, VALUE)).startswith(expected)
    assert any(
        e.object_id == VARIABLE and e.instance_id == variable and VALUE in e.resource_ids for e in seen
    )
    assert any(e.object_id == BUNDLE for e in seen)


async def test_source_write_of_an_unknown_variable_is_false(tree: DeviceTree) -> None:
    assert tree.variables.source_write(99, 1.0) is False


async def test_source_write_is_in_memory_only(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    tree = open_device(DEMO, path)
    tree.variables.source_write(20, 77.0)
    assert tree.memory.read(0x20000100, 4) == (77).to_bytes(4, "big")
    tree.state.close()
    reopened = open_device(DEMO, path)
    assert reopened.memory.read(0x20000100, 4) == (1500).to_bytes(4, "big")
    reopened.state.close()


async def test_reads_of_an_instance_and_the_object_show_only_what_the_caller_may_read(
    tree: DeviceTree,
) -> None:
    whole = await call(tree, Operation.READ, VARIABLE, None, None, group=TECH)
    assert whole.status is Status.CONTENT and sorted(whole.value) == [10, 11, 12, 20, 21, 22]
    assert whole.value[10][VALUE] == struct.pack(">f", 21.5) and whole.value[10][UNIT] == "C"
    assert (await call(tree, Operation.READ, VARIABLE, 30, None, group=TECH)).status is Status.UNAUTHORIZED
    bundles = await call(tree, Operation.READ, BUNDLE, None, None, group=ANONYMOUS)
    assert sorted(bundles.value) == [1]


def test_the_data_section_is_checked(tmp_path: Path) -> None:
    base = (Path(__file__).resolve().parents[2] / "resources" / "profiles" / "demo.toml").read_text()
    cases = {
        'dataType = "FLOAT32"': ('dataType = "FLOAT64"', "dataType"),
        "address = 0x20000000": ("address = 0x30000000", "outside the target memory"),
        "[data.bundles.acls.anonymous]": ("[data.bundles.acls.nobody]", "no profile 'nobody'"),
        "value = 40": ("value = [1, 2]", "2 elements for a length of 1"),
        "id = 11": ("id = 10", "declared twice"),
    }
    for original, (replacement, message) in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(base.replace(original, replacement, 1))
        with pytest.raises(ConfigError, match=message):
            load_profile(str(path))


def test_encode_number_follows_the_types() -> None:
    assert encode_number(DATA_TYPES["INT16"], -2.5) == (-2).to_bytes(2, "big", signed=True)
    assert encode_number(DATA_TYPES["UINT32"], math.inf) == b"\xff\xff\xff\xff"
    assert encode_number(DATA_TYPES["FLOAT32"], 1e300) == struct.pack(">f", math.inf)


async def test_the_outbox_carries_only_public_group_values_and_no_key_material(tree: DeviceTree) -> None:
    """Variables and bundles are device data, not the management store's (emu:Sync none): their changes
    queue nothing, and the rows that are queued hold no credential byte."""
    await call(tree, Operation.EXECUTE, VARIABLE, 70, CREATE, b"")
    await call(tree, Operation.WRITE, VARIABLE, 70, META, b"secret-looking:x")
    await call(tree, Operation.WRITE, BUNDLE, 1, ACL, bytes([0x41, 9, 3]))
    await call(tree, Operation.WRITE, VARIABLE, 10, VALUE, bytes(4))

    def rows(conn: Any, key: str) -> list[tuple[int, str]]:
        return list(conn.execute("SELECT object_id, payload FROM outbox WHERE device = ?", (key,)))

    state: DeviceState = tree.state
    queued = state.call_sync(rows)
    assert queued and {obj for obj, _ in queued} == {tree.group_object.id}
    group = tree.group_object
    public = {form.alias for r in group.resources.values() if r.readable and not r.secret for form in r.forms}
    secrets = [
        part.hex()
        for gid in tree.instance_ids(group.id)
        if (account := tree.account(gid)) is not None and account.credential is not None
        for part in (account.credential.to_bytes(),)
    ]
    for _, text in queued:
        payload = json.loads(text)
        assert set(payload["values"]) <= public
        assert not any(secret in text or secret[:32] in text for secret in secrets)


async def test_a_bundle_too_large_for_one_tlv_node_is_a_clear_error(tree: DeviceTree) -> None:
    """Values past OMA-TLV's 24-bit length are refused with a diagnostic, not a traceback."""
    bundles = tree.handler_of(BundleHandler)
    big = [(vid, bytes(1020)) for vid in range(17000)]
    tree.variables.values_of_bundle = lambda bundle_id: big  # type: ignore[method-assign]
    tree.memory.write(0x20000000, b"\1")  # a new memory generation: the cached encoding is stale
    response = await call(tree, Operation.READ, BUNDLE, 1, VALUES)
    assert response.status is Status.INTERNAL_SERVER_ERROR and "24-bit" in response.diagnostic
    assert bundles.values_response(1).status is Status.INTERNAL_SERVER_ERROR


@pytest.mark.parametrize(
    ("group", "expected"),
    [(ANONYMOUS, [10, 11, 12]), (TECH, [10, 11, 12, 20, 21, 22]), (None, [10, 11, 12, 20, 21, 22, 30, 31])],
)
async def test_the_read_profile_lists_the_variables_the_caller_may_read(
    tree: DeviceTree, group: int | None, expected: list[int]
) -> None:
    response = await call(tree, Operation.READ, VARIABLE, None, VALUE, group=group)
    assert response.status is Status.CONTENT
    (node,) = tlv.decode(response.value)
    assert [c.id for c in node.value if isinstance(c, tlv.TlvNode)] == expected
    # Only the value is read on the object; every other resource still needs an instance.
    assert (await call(tree, Operation.READ, VARIABLE, None, ADDRESS)).status is Status.NOT_FOUND
    assert (await call(tree, Operation.WRITE, VARIABLE, None, VALUE, b"")).status is Status.NOT_FOUND
