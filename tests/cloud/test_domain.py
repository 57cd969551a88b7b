"""The per-seed field rules of the cloud core, pure functions without a store."""

from __future__ import annotations

import math

import pytest

from tap_emulator.cloud import (
    APP_SERVICE,
    IOTIZE,
    NATIVE,
    OCEANCONNECT,
    ROMA,
    GroupChanges,
    GroupDraft,
    InvalidInput,
    SeedProfile,
    check_changes,
    check_draft,
    parse_int,
    parse_parent_id,
)


def refused(profile: SeedProfile, field: str, **draft: object) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_draft(profile, GroupDraft(**{"name": "ok12", **draft}))  # type: ignore[arg-type]
    assert caught.value.field == field
    return caught.value


@pytest.mark.parametrize("name", ["a", "Group01", "Z" * 50])
def test_oceanconnect_takes_1_to_50_letters_and_digits(name: str) -> None:
    check_draft(OCEANCONNECT, GroupDraft(name))


@pytest.mark.parametrize("name", ["", "Z" * 51, "with space", "dash-ed", "under_score", "é"])
def test_oceanconnect_refuses_other_names(name: str) -> None:
    refused(OCEANCONNECT, "name", name=name)


def test_oceanconnect_description_up_to_1024() -> None:
    check_draft(OCEANCONNECT, GroupDraft("g", description="d" * 1024))
    refused(OCEANCONNECT, "description", description="d" * 1025)


@pytest.mark.parametrize("char", list("^@,&=*'\""))
def test_app_service_refuses_each_forbidden_character(char: str) -> None:
    error = refused(APP_SERVICE, "name", name=f"baby{char}group")
    assert char in error.reason


def test_app_service_takes_other_punctuation_and_spaces() -> None:
    check_draft(APP_SERVICE, GroupDraft("baby-group (2) #1 !", status=0, sequence=-3))


@pytest.mark.parametrize("status", [2, -1, True])
def test_app_service_status_is_0_or_1(status: object) -> None:
    refused(APP_SERVICE, "status", status=status)


@pytest.mark.parametrize("sequence", ["1", 1.5, None, False])
def test_sequence_must_be_an_integer(sequence: object) -> None:
    refused(APP_SERVICE, "sequence", sequence=sequence)


@pytest.mark.parametrize("name", ["ab", "a-b_c", "X" * 64, "0_9"])
def test_roma_takes_2_to_64_of_its_characters(name: str) -> None:
    check_draft(ROMA, GroupDraft(name))


@pytest.mark.parametrize("name", ["a", "X" * 65, "a.b", "a b", "中文"])
def test_roma_refuses_other_names(name: str) -> None:
    refused(ROMA, "name", name=name)


def test_roma_description_up_to_200() -> None:
    check_draft(ROMA, GroupDraft("ab", description="d" * 200))
    refused(ROMA, "description", description="d" * 201)


def test_iotize_has_no_name_rule_but_a_bound() -> None:
    for name in ("", "any thing: @ , & = * ' \" ^ é 中文", "n" * 256):
        check_draft(IOTIZE, GroupDraft(name))
    refused(IOTIZE, "name", name="n" * 257)


@pytest.mark.parametrize("profile", [NATIVE, IOTIZE, APP_SERVICE, OCEANCONNECT, ROMA])
def test_no_profile_stores_nul_control_characters_or_lone_surrogates(profile: SeedProfile) -> None:
    for bad in ("ab\x00cd", "ab\ncd", "ab\ud800cd"):
        refused(profile, "name", name=bad)
    refused(profile, "description", description="line\x00")
    check_draft(profile, GroupDraft("ab12", description="two\nlines\tand a tab"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, None), (0.7, None), (3, "3"), (3.99, "3"), (99_999_999_999_999_999, "99999999999999999")],
)
def test_roma_parent_is_rounded_down_and_0_is_the_root(raw: float, expected: str | None) -> None:
    assert parse_parent_id(ROMA, raw) == expected


@pytest.mark.parametrize("raw", [None, -1, -0.5, "3", True, math.nan, math.inf, 10**17])
def test_roma_parent_must_be_a_number_in_range(raw: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_parent_id(ROMA, raw)
    assert caught.value.field == "parent_id"


def test_string_parents_and_parentless_profiles() -> None:
    assert parse_parent_id(IOTIZE, "") is None
    assert parse_parent_id(IOTIZE, None) is None
    assert parse_parent_id(IOTIZE, "g-1") == "g-1"
    assert parse_parent_id(OCEANCONNECT, None) is None
    for profile, raw in ((IOTIZE, 5), (IOTIZE, "x" * 65), (OCEANCONNECT, "g-1"), (APP_SERVICE, "g-1")):
        with pytest.raises(InvalidInput):
            parse_parent_id(profile, raw)
    refused(OCEANCONNECT, "parent_id", parent_id="g-1")


def test_max_devices_is_a_non_negative_bounded_integer() -> None:
    check_draft(OCEANCONNECT, GroupDraft("g", max_devices=0))
    refused(OCEANCONNECT, "max_devices", max_devices=-1)
    refused(OCEANCONNECT, "max_devices", max_devices=10**12)


def test_parse_int_accepts_a_numeric_string_only_where_asked() -> None:
    assert parse_int("maxDevNum", "12", numeric_string=True) == 12
    assert parse_int("maxDevNum", 12.0) == 12
    for raw, kwargs in (
        ("12", {}),
        ("1.5", {"numeric_string": True}),
        (True, {}),
        ("", {"numeric_string": True}),
    ):
        with pytest.raises(InvalidInput) as caught:
            parse_int("maxDevNum", raw, **kwargs)
        assert caught.value.field == "maxDevNum"
    with pytest.raises(InvalidInput, match="at least 0"):
        parse_int("maxDevNum", "-3", numeric_string=True, minimum=0)
    with pytest.raises(InvalidInput, match="range"):
        parse_int("sequence", 2**64)


def test_tags_are_bounded() -> None:
    check_draft(IOTIZE, GroupDraft("g", tags=("a",) * 50))
    refused(IOTIZE, "tags", tags=("a",) * 51)
    refused(IOTIZE, "tags", tags=("t" * 129,))


def test_changes_check_only_the_fields_they_set() -> None:
    check_changes(OCEANCONNECT, GroupChanges(max_devices=3))
    with pytest.raises(InvalidInput) as caught:
        check_changes(OCEANCONNECT, GroupChanges(name="bad name"))
    assert caught.value.field == "name"
    with pytest.raises(InvalidInput):
        check_changes(IOTIZE, GroupChanges(owner_id=""))
