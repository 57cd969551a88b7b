"""The model loader: the shipped model loads as the issue describes it, and bad files fail clearly.

Each broken file is the shipped 1025 definition with one mutation, so the test proves that one check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator.model import (
    DEFAULT_OBJECTS_DIR,
    Behaviour,
    Encoding,
    ModelError,
    Operation,
    ValueError_,
    ValueType,
    default_model,
    load_model,
)

GROUP_XML = (DEFAULT_OBJECTS_DIR / "1025-group.xml").read_text(encoding="utf-8")


def test_the_shipped_model_loads_as_the_issue_describes() -> None:
    model = load_model()
    assert {0, 1, 3, 1024, 1025, 1028, 1029} <= set(model.objects)
    group = model.objects[1025]
    assert group.alias == "group" and group.multiple and group.instance_range == (0, 65535)
    expected = {
        0: ("name", ValueType.STRING, Encoding.ASCII, {Operation.READ, Operation.WRITE}),
        2: ("password", ValueType.STRING, Encoding.ASCII, {Operation.EXECUTE}),
        4: ("session-lifetime", ValueType.INTEGER, Encoding.UINT16, {Operation.READ, Operation.WRITE}),
        5: ("alias", ValueType.INTEGER, Encoding.UINT16, {Operation.READ, Operation.WRITE}),
        7: ("scram-user-iteration", ValueType.INTEGER, Encoding.UINT32, {Operation.READ, Operation.WRITE}),
        16: ("scram-user-salt", ValueType.INTEGER, Encoding.UINT32, {Operation.READ, Operation.WRITE}),
        65535: ("create", ValueType.NONE, Encoding.NONE, {Operation.EXECUTE}),
    }
    assert set(group.resources) == set(expected)
    for rid, (slug, value_type, encoding, operations) in expected.items():
        resource = group.resources[rid]
        assert (resource.form.alias, resource.form.value_type, resource.form.encoding) == (
            slug,
            value_type,
            encoding,
        )
        assert resource.operations == operations
    password = group.resources[2]
    assert password.secret and not password.readable
    key_form = password.forms[1]
    assert (key_form.alias, key_form.value_type, key_form.encoding) == (
        "password-key",
        ValueType.OPAQUE,
        Encoding.BYTES,
    )
    assert key_form.lengths == frozenset({16, 36, 40})
    assert group.resources[5].behaviour is Behaviour.REFERENCE
    assert group.resources[65535].behaviour is Behaviour.CREATE
    assert group.resources[7].form.int_range == (1, 2**32 - 1)
    assert group.resources[16].form.int_range == (0, 2**32 - 1)
    assert group.resources[4].form.int_range == (0, 65535)
    assert group.forms_by_alias["password-key"] == (password, key_form)
    assert default_model() is default_model()


@pytest.mark.parametrize(
    ("slug", "good", "bad"),
    [
        ("name", ["", "x" * 16, "admin 1 ~"], ["x" * 17, "tab\t", "caf\u00e9", 5, b"bytes"]),
        ("password", ["", "p" * 16], ["p" * 17, "\x00", 3]),
        ("password-key", [bytes(16), bytes(36), bytes(40)], [bytes(15), bytes(41), "text", b""]),
        ("session-lifetime", [0, 65535], [-1, 65536, True, "5"]),
        ("scram-user-iteration", [1, 2**32 - 1], [0, 2**32, None]),
        ("scram-user-salt", [0, 2**32 - 1], [-1, 2**32]),
        ("create", [None, b"", ""], [b"x", 0]),
    ],
)
def test_forms_validate_their_limits(slug: str, good: list[object], bad: list[object]) -> None:
    _, form = default_model().objects[1025].forms_by_alias[slug]
    for value in good:
        form.validate(value)
    for value in bad:
        with pytest.raises(ValueError_):
            form.validate(value)


def write_mutated(tmp_path: Path, old: str, new: str, *, count: int = 1) -> Path:
    assert GROUP_XML.count(old) >= count, old
    target = tmp_path / "1025-group.xml"
    target.write_text(GROUP_XML.replace(old, new, count), encoding="utf-8")
    return target


BROKEN = {
    "malformed xml": ("</Resources>", "</Resourcez>", "cannot read the model"),
    "unknown type": ("<Type>Integer</Type>", "<Type>Float</Type>", "Type 'Float' is not one of"),
    "unknown encoding": (
        "<emu:Encoding>uint16</emu:Encoding>",
        "<emu:Encoding>int24</emu:Encoding>",
        "int24",
    ),
    "encoding unfit for type": (
        "<emu:Encoding>ascii</emu:Encoding>",
        "<emu:Encoding>uint16</emu:Encoding>",
        "does not fit",
    ),
    "unknown behaviour": (
        "<emu:Behaviour>value</emu:Behaviour>",
        "<emu:Behaviour>magic</emu:Behaviour>",
        "magic",
    ),
    "empty range": (
        "<RangeEnumeration>0..65535</RangeEnumeration>",
        "<RangeEnumeration>9..1</RangeEnumeration>",
        "empty",
    ),
    "range not min..max": (
        "<RangeEnumeration>0..65535</RangeEnumeration>",
        "<RangeEnumeration>lots</RangeEnumeration>",
        "not of the form",
    ),
    "range beyond uint16": (
        "<RangeEnumeration>0..65535</RangeEnumeration>",
        "<RangeEnumeration>0..70000</RangeEnumeration>",
        "does not fit uint16",
    ),
    "bad lengths": ('range="16,36,40"', 'range="16,x"', "lengths"),
    "writable string without lengths": (
        "<RangeEnumeration>0..16</RangeEnumeration>",
        "<RangeEnumeration></RangeEnumeration>",
        "needs a length limit",
    ),
    "duplicate alias": (
        "<emu:Alias>alias</emu:Alias>",
        "<emu:Alias>name</emu:Alias>",
        "alias 'name' is used twice",
    ),
    "duplicate resource id": ('<Item ID="5">', '<Item ID="4">', "resource 4 is declared twice"),
    "bad alias slug": ("<emu:Alias>name</emu:Alias>", "<emu:Alias>Name Here</emu:Alias>", "lower-case slug"),
    "missing operations": ("<Operations>RW</Operations>", "", "<Operations> is missing"),
    "missing behaviour": ("<emu:Behaviour>create</emu:Behaviour>", "", "<emu:Behaviour> is missing"),
    "missing object id": ("<ObjectID>1025</ObjectID>", "", "<ObjectID> is missing"),
    "missing instance range": ("<emu:InstanceRange>0..65535</emu:InstanceRange>", "", "emu:InstanceRange"),
    "missing resources": ("<Resources>", "<Resourcez>", "cannot read the model"),
    "bad operations": ("<Operations>RW</Operations>", "<Operations>RWX</Operations>", "Operations 'RWX'"),
    "readable credential": (
        "<Operations>E</Operations>",
        "<Operations>RE</Operations>",
        "must not be readable",
    ),
    "non-integer id": ('<Item ID="16">', '<Item ID="sixteen">', "'sixteen' is not an integer"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_bad_model_file_fails_with_a_clear_message_naming_it(tmp_path: Path, case: str) -> None:
    old, new, expected = BROKEN[case]
    broken = write_mutated(tmp_path, old, new)
    with pytest.raises(ModelError) as excinfo:
        load_model([broken])
    message = str(excinfo.value)
    assert "1025-group.xml" in message
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_a_missing_resources_element_is_named(tmp_path: Path) -> None:
    start, end = GROUP_XML.index("<Resources>"), GROUP_XML.index("</Resources>") + len("</Resources>")
    target = tmp_path / "1025-group.xml"
    target.write_text(GROUP_XML[:start] + GROUP_XML[end:], encoding="utf-8")
    with pytest.raises(ModelError, match=r"1025-group\.xml.*<Resources> is missing"):
        load_model([target])


def test_a_directory_with_a_bad_file_fails(tmp_path: Path) -> None:
    for source in DEFAULT_OBJECTS_DIR.glob("*.xml"):
        (tmp_path / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    assert set(load_model(tmp_path).objects) == set(load_model().objects)
    (tmp_path / "9999-copy.xml").write_text(GROUP_XML, encoding="utf-8")
    with pytest.raises(ModelError, match=r"9999-copy\.xml.*object 1025 is declared twice"):
        load_model(tmp_path)


def test_an_empty_or_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no object definitions"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nowhere")
