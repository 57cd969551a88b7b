"""`DeviceTree.factory_state`: the one rule of what a factory-fresh device holds, which `seed` writes and a
fleet writes for many devices at once; and `SharedSeedCredentials`, one derivation per password for every
device seeded from one profile."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tap_emulator.config import ConfigError, Profile, load_profile
from tap_emulator.model import Operation, default_model
from tap_emulator.security import SharedSeedCredentials, derive_scram_keys, hash_login_password
from tap_emulator.state import MEMORY, DeviceState, InstanceWrite
from tap_emulator.tree import MAINTENANCE, DeviceTree, Request

GROUP, ADMIN, SUPERVISOR = 1025, 0xFFFF, 0xFFFE
PASSWORD = 2  # object 1025's password resource (resources/objects/1025-group.xml)


def make_tree(profile: Profile, credentials: SharedSeedCredentials | None = None) -> DeviceTree:
    return DeviceTree(
        default_model(),
        DeviceState(MEMORY, clock=time.time),
        access=profile.access,
        random_bytes=os.urandom,
        clock_ms=lambda: 1_700_000_000_000,
        memory=profile.memory,
        seed_credentials=credentials,
    )


@pytest.fixture
def trees() -> Iterator[list[DeviceTree]]:
    made: list[DeviceTree] = []
    yield made
    for tree in made:
        tree.state.close()


def test_seed_writes_what_factory_state_computes(trees: list[DeviceTree]) -> None:
    profile = load_profile()
    credentials = SharedSeedCredentials(os.urandom)
    template = make_tree(profile, credentials)
    seeded = make_tree(profile, credentials)
    trees += [template, seeded]
    factory = template.factory_state(profile)
    assert factory.meta == {"profile": "default", "serial_number": "EMU0000000001"}
    assert template.is_fresh  # computing wrote nothing
    seeded.seed(profile)
    snapshot = seeded.state.load()
    written = {
        (w.row.object_id, w.row.instance_id): w.row for w in factory.changes if isinstance(w, InstanceWrite)
    }
    assert {key: (row.values, row.credential) for key, row in snapshot.instances.items()} == {
        key: (dict(row.values), row.credential) for key, row in written.items()
    }
    assert snapshot.meta["serial_number"] == "EMU0000000001"


def test_a_fleets_devices_share_the_factory_credentials_and_a_changed_password_gets_its_own(
    trees: list[DeviceTree],
) -> None:
    profile = load_profile()
    credentials = SharedSeedCredentials(os.urandom)
    first = make_tree(profile.with_serial_number("EMUA"), credentials)
    second = make_tree(profile.with_serial_number("EMUB"), credentials)
    alone = make_tree(profile.with_serial_number("EMUC"))
    trees += [first, second, alone]
    for tree, serial in ((first, "EMUA"), (second, "EMUB"), (alone, "EMUC")):
        tree.seed(profile.with_serial_number(serial))
    assert len(credentials) == 3  # the three groups' passwords ("" too), derived once for both devices
    assert first.serial_number == "EMUA" and second.serial_number == "EMUB"
    admin_a, admin_b, admin_c = (t.account(ADMIN) for t in (first, second, alone))
    assert admin_a is not None and admin_b is not None and admin_c is not None
    assert admin_a.credential == admin_b.credential
    assert admin_a.credential is not None and admin_a.credential.scram is not None
    salt = admin_a.credential.scram.salt
    expected = derive_scram_keys(hash_login_password("admin"), salt, 5000)
    assert admin_a.credential.scram == expected  # the shared credential is the password's real keys
    assert admin_c.credential != admin_a.credential  # a device seeded alone drew its own salt


async def test_a_password_changed_on_one_device_derives_its_own_salt(trees: list[DeviceTree]) -> None:
    profile = load_profile()
    credentials = SharedSeedCredentials(os.urandom)
    first = make_tree(profile.with_serial_number("EMUA"), credentials)
    second = make_tree(profile.with_serial_number("EMUB"), credentials)
    trees += [first, second]
    first.seed(profile.with_serial_number("EMUA"))
    second.seed(profile.with_serial_number("EMUB"))
    response = await first.handle(
        Request(Operation.EXECUTE, GROUP, SUPERVISOR, PASSWORD, "supervisor", caller=MAINTENANCE)
    )
    assert response.status.is_success
    changed, untouched = first.account(SUPERVISOR), second.account(SUPERVISOR)
    assert changed is not None and untouched is not None and changed.credential != untouched.credential
    assert len(credentials) == 3  # the change did not go through the fleet's shared credentials


def test_a_serial_number_a_device_cannot_hold_is_refused() -> None:
    for bad in ("", "A/B", "tab\there"):
        with pytest.raises(ConfigError, match="serial number"):
            load_profile().with_serial_number(bad)
