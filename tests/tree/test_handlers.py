"""The tree's structure (issue 11 step 1): one dispatcher, one handler per object, found by the model.

Shown here: each handler module registers one handler for an object of the model and names only that
object's resources; an object the model gains without a handler file is served by the generic handler
from its XML alone (defaults, limits, create, factory reset); the password-form rule the Tap face asks
for lives beside the credential table.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

from tap_emulator.app import open_device
from tap_emulator.config import load_profile
from tap_emulator.model import DEFAULT_OBJECTS_DIR, Operation, default_model, load_model
from tap_emulator.security import is_password_key
from tap_emulator.tree import MAINTENANCE, Caller, DeviceTree, Request, Status
from tap_emulator.tree.handlers import ObjectHandler, handler_class

HANDLERS = Path(__file__).resolve().parents[2] / "tap_emulator" / "tree" / "handlers"
ADMIN = 65535


def _registrations(tree: ast.Module) -> list[str]:
    """Aliases passed to ``@handles(...)`` in a module."""
    aliases = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "handles":
                    aliases += [str(arg.value) for arg in decorator.args if isinstance(arg, ast.Constant)]
    return aliases


def _resource_slugs(tree: ast.Module) -> set[str]:
    """Slugs a module asks its object for: ``self.resource("slug")``."""
    slugs = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "resource"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            slugs.add(str(node.args[0].value))
    return slugs


@pytest.mark.parametrize(
    "module", sorted(p.name for p in HANDLERS.glob("*.py") if p.name not in ("__init__.py", "base.py"))
)
def test_each_handler_file_is_one_object_and_names_only_its_resources(module: str) -> None:
    source = ast.parse((HANDLERS / module).read_text(encoding="utf-8"))
    aliases = _registrations(source)
    assert len(aliases) == 1, f"{module} registers {aliases}"
    obj = default_model().object_by_alias(aliases[0])
    assert obj is not None, f"{module} serves {aliases[0]!r}, which the model does not hold"
    foreign = _resource_slugs(source) - set(obj.forms_by_alias)
    assert not foreign, f"{module} names resources of other objects: {sorted(foreign)}"
    assert handler_class(aliases[0]) is not ObjectHandler


def test_the_scans_above_see_registrations_and_slugs() -> None:
    sample = ast.parse('@handles("group")\nclass G(ObjectHandler):\n    x = self.resource("name")\n')
    assert _registrations(sample) == ["group"] and _resource_slugs(sample) == {"name"}


WIDGET = """<?xml version="1.0" encoding="utf-8"?>
<LWM2M xmlns:emu="urn:tap-emulator:model:1">
  <Object ObjectType="MODefinition">
    <Name>Widget</Name>
    <ObjectID>4300</ObjectID>
    <MultipleInstances>Multiple</MultipleInstances>
    <emu:Alias>widget</emu:Alias>
    <emu:InstanceRange>0..99</emu:InstanceRange>
    <Resources>
      <Item ID="0">
        <Name>Level</Name>
        <Operations>RW</Operations>
        <Type>Integer</Type>
        <RangeEnumeration>0..10</RangeEnumeration>
        <emu:Alias>level</emu:Alias>
        <emu:Encoding>uint16</emu:Encoding>
        <emu:Behaviour>value</emu:Behaviour>
        <emu:Default>3</emu:Default>
      </Item>
      <Item ID="1">
        <Name>Create</Name>
        <Operations>E</Operations>
        <Type></Type>
        <emu:Alias>create</emu:Alias>
        <emu:Encoding>none</emu:Encoding>
        <emu:Behaviour>create</emu:Behaviour>
      </Item>
    </Resources>
  </Object>
</LWM2M>
"""


@pytest.fixture
def widget_tree(tmp_path: Path) -> DeviceTree:
    objects = tmp_path / "objects"
    shutil.copytree(DEFAULT_OBJECTS_DIR, objects)
    (objects / "4300-widget.xml").write_text(WIDGET, encoding="utf-8")
    return open_device(
        load_profile(),
        str(tmp_path / "state.sqlite3"),
        model=load_model(objects),
        random_bytes=os.urandom,
        clock_ms=lambda: 1_700_000_000_000,
    )


async def test_an_object_without_a_handler_file_is_served_from_its_model(widget_tree: DeviceTree) -> None:
    tree = widget_tree
    try:
        assert handler_class("widget") is ObjectHandler
        create = Request(Operation.EXECUTE, 4300, 7, 1, caller=MAINTENANCE)
        assert (await tree.handle(create)).status is Status.CREATED
        assert (await tree.handle(create)).status is Status.BAD_REQUEST
        level = Request(Operation.READ, 4300, 7, 0, caller=MAINTENANCE)
        assert (await tree.handle(level)).value == 3, "the model's default"
        write = Request(Operation.WRITE, 4300, 7, 0, 11, caller=MAINTENANCE)
        assert (await tree.handle(write)).status is Status.BAD_REQUEST, "the model's limit"
        write = Request(Operation.WRITE, 4300, 7, 0, 9, caller=MAINTENANCE)
        assert (await tree.handle(write)).status is Status.CHANGED
        assert (await tree.handle(Request(Operation.READ, 4300, None, caller=MAINTENANCE))).value == {
            7: {0: 9}
        }
        # Rights are the dispatcher's: anonymous may not write, admin may.
        anonymous = Request(Operation.WRITE, 4300, 7, 0, 1, caller=Caller(0))
        assert (await tree.handle(anonymous)).status is Status.UNAUTHORIZED
        admin = Request(Operation.WRITE, 4300, 7, 0, 1, caller=Caller(ADMIN))
        assert (await tree.handle(admin)).status is Status.CHANGED
        # A factory reset knows the object too: the profile seeds no widget, so widget 7 is a tombstone.
        tree.seed(load_profile(), reset=True)
        assert tree.instance_ids(4300) == []
        assert tree.state.load().instances[(4300, 7)].deleted
    finally:
        tree.state.close()


def test_a_profile_group_without_a_lifetime_gets_the_models_default(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(
        '[device]\nmodel = "x"\nserial_number = "S1"\nfirmware_version = "1"\n'
        '[[groups]]\nid = 1\nname = "u"\n',
        encoding="utf-8",
    )
    group = default_model().object_by_alias("group")
    assert group is not None
    default = group.forms_by_alias["session-lifetime"][0].default_value(1)
    tree = open_device(load_profile(str(profile)), ":memory:", random_bytes=os.urandom)
    try:
        account = tree.account(1)
        assert account is not None and account.session_lifetime == default
    finally:
        tree.state.close()


@pytest.mark.parametrize(
    ("body", "plain_mode", "key"),
    [
        (b"secret", False, False),
        (b"x" * 16, True, False),  # 16 printable bytes in no-security mode: a password
        (b"x" * 16, False, True),  # the same bytes otherwise: a 1-hash
        (bytes(range(16)), True, True),
        (b"\x00\x01", False, True),  # short and not printable: a key (refused for its length)
        (bytes(36), False, True),
        (b"y" * 40, True, True),
    ],
)
def test_the_password_form_rule(body: bytes, plain_mode: bool, key: bool) -> None:
    assert is_password_key(body, longest_password=16, plain_mode=plain_mode) is key
