"""The fault plan (tap_emulator.faults), sans-IO: parsing, seeded decisions, the offline window."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator.config import ConfigError
from tap_emulator.faults import FaultInjector, FaultPlan, load_fault_plan, parse_fault_plan, parse_status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


PLAN = {
    "seed": 7,
    "rules": [
        {"face": "coap", "path": "/1025/*/0", "status": "5.03"},
        {"face": "*", "drop": 0.3, "delay_ms": 10, "jitter_ms": 5, "duplicate": 0.2, "corrupt": 0.2},
    ],
}


def labels(plan: FaultPlan, requests: list[tuple[str, str]]) -> list[str | None]:
    injector = FaultInjector(Clock())
    injector.set_plan(plan)
    return [injector.decide(face, path).label for face, path in requests]


TRAFFIC = [("tcp", "/1025/0/0"), ("coap", "/1025/0/0"), ("coap", "/3//0"), ("ws", "/1024//7")] * 25


def test_the_same_seed_and_traffic_give_the_same_faults_and_another_seed_others() -> None:
    plan = parse_fault_plan(PLAN)
    first, second = labels(plan, TRAFFIC), labels(plan, TRAFFIC)
    assert first == second
    assert labels(parse_fault_plan({**PLAN, "seed": 8}), TRAFFIC) != first
    # The path rule comes first for CoAP on /1025/*/0; everything else draws from the general rule.
    assert all(
        label == "status 5.03"
        for (face, path), label in zip(TRAFFIC, first, strict=False)
        if face == "coap" and path == "/1025/0/0"
    )
    assert any(label == "drop" for label in first)
    assert any(label is not None and "duplicate" in label for label in first)
    assert any(label is not None and "corrupt" in label for label in first)
    # A face's n-th request draws the same whatever the other faces did in between.
    only_tcp = [r for r in TRAFFIC if r[0] == "tcp"]
    assert labels(plan, only_tcp) == [
        label for r, label in zip(TRAFFIC, first, strict=False) if r[0] == "tcp"
    ]


def test_delay_is_fixed_plus_jitter_and_a_drop_carries_nothing_else() -> None:
    injector = FaultInjector(Clock())
    injector.set_plan(parse_fault_plan({"seed": 1, "rules": [{"delay_ms": 10, "jitter_ms": 5, "drop": 0.5}]}))
    decisions = [injector.decide("tcp", "/x") for _ in range(50)]
    delays = [d.delay for d in decisions if not d.drop]
    assert delays and all(0.010 <= d <= 0.015 for d in delays) and len(set(delays)) > 1
    assert all(d.delay == 0 and d.status is None for d in decisions if d.drop)


def test_close_after_n_frames_of_a_connection() -> None:
    injector = FaultInjector(Clock())
    injector.set_plan(parse_fault_plan({"rules": [{"face": "tap", "close_after": 3}]}))
    assert [injector.decide("tcp", "/x", n).close for n in range(4)] == [False, False, True, True]
    assert injector.decide("coap", "/x").label is None


def test_offline_window_drops_everything_for_its_seconds() -> None:
    clock = Clock()
    injector = FaultInjector(clock)
    injector.set_plan(parse_fault_plan({"offline": {"after": 1.0, "seconds": 5.0}}))
    assert injector.decide("coap", "/x").label is None
    clock.now += 1.0
    assert injector.decide("coap", "/x").label == "offline" and injector.decide("ws", "/y").drop
    clock.now += 5.0
    assert injector.decide("coap", "/x").label is None
    injector.go_offline(2.0)
    assert injector.decide("tcp", "/x").drop and injector.offline_remaining() == 2.0


def test_corrupted_flips_one_byte() -> None:
    injector = FaultInjector(Clock())
    injector.set_plan(parse_fault_plan({"rules": [{"corrupt": 1.0}]}))
    decision = injector.decide("tcp", "/x")
    data = bytes(range(20))
    bad = decision.corrupted(data)
    assert len(bad) == len(data) and sum(a != b for a, b in zip(bad, data, strict=False)) == 1
    assert decision.corrupted(b"") == b""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"rules": [{"drop": 1.5}]}, "'drop'"),
        ({"rules": [{"face": "bluetooth"}]}, "'face'"),
        ({"rules": [{"path": "1025"}]}, "'path'"),
        ({"rules": [{"status": "7.00"}]}, "'status'"),
        ({"rules": [{"face": "coap", "close_after": 2}]}, "close_after"),
        ({"rules": [{"dorp": 0.1}]}, "unknown key"),
        ({"offline": {"for": 3}}, "offline"),
        ({"surprise": 1}, "unknown key"),
    ],
)
def test_a_bad_plan_is_a_config_error_naming_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fault_plan(raw)


def test_status_forms_and_the_toml_file(tmp_path: Path) -> None:
    assert parse_status("5.03") == 0xA3 == parse_status("0xA3")
    path = tmp_path / "faults.toml"
    path.write_text('seed = 3\n[[rules]]\nface = "tap"\npath = "/1025/*"\ndrop = 0.25\n', encoding="utf-8")
    plan = load_fault_plan(path)
    assert plan.seed == 3 and plan.rules[0].drop == 0.25
    assert parse_fault_plan(plan.public()) == plan
    with pytest.raises(ConfigError, match="not found"):
        load_fault_plan(tmp_path / "missing.toml")
