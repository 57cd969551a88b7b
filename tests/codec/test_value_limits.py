"""Body caps come from the model: ``max_body_size`` bounds every accepted representation of the largest
valid value of each writable form, and is tight (no magic headroom); ``entity_tag`` names a value."""

from __future__ import annotations

import pytest

from tap_emulator.codec.values import (
    CBOR,
    OCTET_STREAM,
    TEXT,
    TEXT_WHITESPACE_ALLOWANCE,
    decode_representation,
    encode_representation,
    entity_tag,
    max_body_size,
)
from tap_emulator.model import Form, Operation, ResourceDef, ValueType, default_model


def writable_forms() -> list[tuple[ResourceDef, Form]]:
    found = []
    for obj in default_model().objects.values():
        for res in obj.resources.values():
            if res.operations & {Operation.WRITE, Operation.EXECUTE}:
                found += [(res, form) for form in res.forms]
    return found


def largest_value(form: Form) -> object:
    if form.value_type is ValueType.INTEGER:
        assert form.int_range is not None
        return form.int_range[1]
    if form.value_type is ValueType.NONE:
        return None
    assert form.lengths is not None
    size = max(form.lengths) if isinstance(form.lengths, frozenset) else form.lengths[1]
    return "~" * size if form.value_type is ValueType.STRING else b"\xff" * size


@pytest.mark.parametrize(("resource", "form"), writable_forms(), ids=lambda x: getattr(x, "alias", ""))
def test_the_body_cap_holds_the_largest_value_in_every_format(resource: ResourceDef, form: Form) -> None:
    value = largest_value(form)
    cap = max_body_size(form)
    if value is None:
        assert cap == 0
        return
    bodies = [encode_representation(form, value, fmt) for fmt in (TEXT, OCTET_STREAM, CBOR)]
    for fmt, body in zip((TEXT, OCTET_STREAM, CBOR), bodies, strict=True):
        assert len(body) <= cap, (fmt, len(body), cap)
        assert decode_representation(resource, body, fmt, form)[1] == value
    padded = b" " * TEXT_WHITESPACE_ALLOWANCE + bodies[0] if form.value_type is not ValueType.STRING else b""
    assert len(padded) <= cap
    assert cap - max(len(b) for b in bodies) <= TEXT_WHITESPACE_ALLOWANCE + 8  # tight: no magic headroom


def test_a_name_of_16_characters_caps_its_body_at_25_bytes() -> None:
    name = default_model().objects[1025].forms_by_alias["name"][1]
    assert max_body_size(name) == 16 + 9


def test_an_entity_tag_names_the_value_not_its_representation() -> None:
    assert entity_tag("admin") == entity_tag("admin") and len(entity_tag("admin")) == 8
    assert len({entity_tag(v) for v in ("admin", "admin2", 5, b"admin", None)}) == 5
