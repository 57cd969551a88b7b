"""The sync task's decisions as plain functions: full-jitter backoff, coalescing, records, reconcile plans."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.state import OutboxRow
from tap_emulator.sync import (
    UnsafePayload,
    backoff_delay,
    coalesce,
    group_record,
    next_heartbeat,
    plan_reconcile,
    reconciled_versions,
    tombstone_payload,
)

pytestmark = pytest.mark.timeout(30)


def payload(group_id: int = 7, version: int = 3, **values: Any) -> dict[str, Any]:
    base = {
        "name": "erin",
        "session-lifetime": 120,
        "alias": 65534,
        "scram-user-iteration": 5000,
        "scram-user-salt": 0x01020304,
    }
    base.update(values)
    return {
        "object_id": 1025,
        "instance_id": group_id,
        "version": version,
        "deleted": False,
        "password_set": True,
        "values": base,
    }


def row(row_id: int, group_id: int, version: int) -> OutboxRow:
    return OutboxRow(
        row_id, 1025, group_id, version, payload(group_id, version), 1000.0 + row_id, "pending", 0, 0.0, None
    )


# --- backoff ---------------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_then_stops_at_the_cap() -> None:
    ceilings = [backoff_delay(n, base=0.5, cap=30.0, draw=lambda: 0.999999) for n in range(10)]
    assert ceilings[:6] == pytest.approx([0.5, 1, 2, 4, 8, 16], rel=1e-5)
    assert ceilings[6:] == pytest.approx([30.0] * 4, rel=1e-5)


def test_backoff_is_full_jitter_over_the_whole_range() -> None:
    assert backoff_delay(3, base=0.5, cap=30.0, draw=lambda: 0.0) == 0.0
    assert backoff_delay(3, base=0.5, cap=30.0, draw=lambda: 0.25) == pytest.approx(1.0)


@given(st.integers(0, 10_000), st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_never_exceeds_the_cap_even_after_many_failures(failures: int, draw: float) -> None:
    delay = backoff_delay(failures, base=0.5, cap=30.0, draw=lambda: draw)
    assert 0.0 <= delay <= min(30.0, 0.5 * 2.0 ** min(failures, 62))


# --- coalescing ------------------------------------------------------------------------------------


def test_coalesce_keeps_only_the_newest_version_per_group_in_fifo_order() -> None:
    rows = [row(1, 9, 10), row(2, 4, 11), row(3, 9, 12), row(4, 9, 13), row(5, 4, 14), row(6, 1, 15)]
    groups = coalesce(rows)
    assert [(g.instance_id, g.version) for g in groups] == [(9, 13), (4, 14), (1, 15)]
    assert groups[0].row_ids == (1, 3, 4)
    assert groups[0].changed_at == 1004.0
    assert groups[0].payload["version"] == 13


def test_coalesce_of_a_hundred_writes_to_five_groups_gives_five_pushes() -> None:
    rows = [row(i, i % 5, 100 + i) for i in range(1, 101)]
    groups = coalesce(rows)
    assert len(groups) == 5
    assert sorted(g.version for g in groups) == [196, 197, 198, 199, 200]


# --- records ---------------------------------------------------------------------------------------


def test_group_record_maps_public_values() -> None:
    record = group_record("EMU1", payload(), 1_700_000_000.5)
    assert (record.device_serial, record.group_id, record.version) == ("EMU1", 7, 3)
    assert (record.name, record.alias, record.session_lifetime) == ("erin", 65534, 120)
    assert not record.is_profile and record.password_set and not record.deleted
    assert (record.scram_salt, record.scram_iteration) == (0x01020304, 5000)
    assert record.updated_at == datetime.fromtimestamp(1_700_000_000.5, UTC)


def test_group_record_of_a_profile_and_of_a_tombstone() -> None:
    assert group_record("EMU1", payload(7, alias=7), 0.0).is_profile
    tomb = group_record("EMU1", tombstone_payload(1025, 12, 99), 0.0)
    assert tomb.deleted and tomb.version == 99 and tomb.group_id == 12
    assert not tomb.password_set and tomb.scram_salt is None


@pytest.mark.parametrize(
    "change",
    [
        {"credential": "00ff"},
        {"password_hash": "x"},
    ],
)
def test_group_record_refuses_a_payload_with_extra_fields(change: dict[str, Any]) -> None:
    with pytest.raises(UnsafePayload):
        group_record("EMU1", {**payload(), **change}, 0.0)


@pytest.mark.parametrize(
    "values",
    [{"password": "secret"}, {"password-key": "00" * 40}, {"name": b"bytes"}, {"alias": "7"}],
)
def test_group_record_refuses_secret_or_malformed_values(values: dict[str, Any]) -> None:
    with pytest.raises(UnsafePayload):
        group_record("EMU1", payload(**values), 0.0)


# --- reconcile -------------------------------------------------------------------------------------


def test_reconcile_tombstones_groups_only_the_store_knows() -> None:
    plan = plan_reconcile(local={0: 50}, stored={0: 50, 9: 70}, pending={}, now_ms=60)
    assert plan.tombstones == {9: 71}
    assert not plan.bumps and not plan.repush


def test_reconcile_bumps_past_a_store_version_from_before_the_clock_went_back() -> None:
    plan = plan_reconcile(local={3: 100}, stored={3: 5000}, pending={3: 100}, now_ms=120)
    assert plan.bumps == {3: (100, 5001)}
    plan = plan_reconcile(local={3: 100}, stored={3: 5000}, pending={}, now_ms=9000)
    assert plan.bumps == {3: (100, 9000)}


def test_reconcile_requeues_newer_local_groups_without_a_pending_row() -> None:
    plan = plan_reconcile(local={1: 10, 2: 20, 3: 30}, stored={1: 10, 2: 5}, pending={3: 30}, now_ms=0)
    assert plan.repush == frozenset({2})
    assert not plan.bumps and not plan.tombstones


def test_reconcile_of_a_device_in_step_with_the_store_is_empty() -> None:
    assert not plan_reconcile(local={1: 10, 2: 20}, stored={1: 10, 2: 20}, pending={}, now_ms=99)


def test_reconciled_versions_count_a_tombstone_only_where_the_store_holds_the_group() -> None:
    instances = {1: (5, False), 2: (7, True), 3: (9, True)}
    assert reconciled_versions(instances, {2: 6}) == {1: 5, 2: 7}
    assert reconciled_versions(instances, {}) == {1: 5}


def test_next_heartbeat_keeps_the_devices_phase() -> None:
    assert next_heartbeat(100.0, 100.0, 60.0) == 160.0  # sent on time: one period on
    assert next_heartbeat(100.0, 97.0, 60.0) == 160.0  # sent a little early: the same next slot
    assert next_heartbeat(100.0, 130.0, 60.0) == 160.0  # sent late: the phase is kept
    assert next_heartbeat(100.0, 1000.0, 60.0) == 1060.0  # after an outage: the next slot on the phase
    with pytest.raises(ValueError):
        next_heartbeat(100.0, 100.0, 0.0)


@given(
    due=st.floats(0, 1e9, allow_nan=False),
    late=st.floats(-1e3, 1e7, allow_nan=False),
    period=st.floats(0.01, 1e5, allow_nan=False),
)
def test_next_heartbeat_is_a_later_slot_on_the_same_phase(due: float, late: float, period: float) -> None:
    now = due + late
    following = next_heartbeat(due, now, period)
    assert following > now and following > due
    slots = (following - due) / period
    assert abs(slots - round(slots)) < 1e-6 * max(1.0, slots) and round(slots) >= 1
    assert following - period <= max(now, due) + 1e-6 * max(1.0, abs(now))  # the first such slot
