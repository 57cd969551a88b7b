"""The login limiter, driven by explicit times (no clock of its own): scopes, back-off, refunds, bounds.

Unit tests pin each rule; the Hypothesis tests check the promises over random attack sequences: a
peer gets at most ``max_failed_logins`` evaluations in any window shorter than ``lockout_seconds``,
an account and the device at most their bucket plus one per ``lockout_seconds``, a familiar pair is
never refused by what other peers did, and no table outgrows its cap.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator.security.lockout import LockoutPolicy, LoginLimiter, peer_key

POLICY = LockoutPolicy(
    max_failed_logins=3,
    lockout_seconds=60,
    lockout_max_seconds=900,
    account_max_failed_logins=10,
    device_max_failed_logins=100,
)


def fail(limiter: LoginLimiter, peer: str, account: str, now: float) -> bool:
    """One wrong attempt: True if it was admitted (and so evaluated)."""
    return limiter.reserve(peer, account, now) is not None


def succeed(limiter: LoginLimiter, peer: str, account: str, now: float) -> bool:
    reservation = limiter.reserve(peer, account, now)
    if reservation is None:
        return False
    limiter.succeeded(reservation, now)
    return True


def test_third_failure_starts_a_wait_that_doubles_up_to_the_cap() -> None:
    limiter = LoginLimiter(POLICY)
    assert [fail(limiter, "p", "admin", 0) for _ in range(3)] == [True, True, True]
    assert not fail(limiter, "p", "admin", 59.9)
    assert limiter.wait("p", "admin", 30) == pytest.approx(30)
    waits = []
    now = 60.0
    for _ in range(6):
        assert fail(limiter, "p", "admin", now)
        waits.append(limiter.wait("p", "admin", now))
        assert not fail(limiter, "p", "admin", now + waits[-1] - 0.1)  # refused, and not counted
        now += waits[-1]
    assert waits == [120, 240, 480, 900, 900, 900]


def test_refused_attempts_do_not_extend_the_wait() -> None:
    limiter = LoginLimiter(POLICY)
    for _ in range(3):
        fail(limiter, "p", "admin", 0)
    for t in range(1, 60):
        assert not fail(limiter, "p", "admin", t)
    assert limiter.wait("p", "admin", 60) == 0


def test_one_peer_failing_does_not_lock_out_another_peer() -> None:
    limiter = LoginLimiter(POLICY)
    for t in range(0, 3600, 20):  # three garbage proofs a minute for an hour
        fail(limiter, "attacker", "admin", t)
        assert succeed(limiter, "admin-desk", "admin", t)


def test_a_peer_is_limited_across_account_names() -> None:
    limiter = LoginLimiter(POLICY)
    assert [fail(limiter, "p", f"user{i}", 0) for i in range(4)] == [True, True, True, False]
    assert not fail(limiter, "p", "admin", 0)
    assert limiter.wait("p", "admin", 0) == 60


def test_success_resets_the_peer_and_refunds_the_attempt() -> None:
    limiter = LoginLimiter(POLICY)
    fail(limiter, "p", "admin", 0)
    fail(limiter, "p", "admin", 0)
    assert succeed(limiter, "p", "admin", 0)
    assert [fail(limiter, "p", "admin", 0) for _ in range(3)] == [True, True, True]
    assert not fail(limiter, "p", "admin", 0)


def test_logging_in_to_ones_own_account_does_not_reset_the_count_against_another() -> None:
    limiter = LoginLimiter(POLICY)
    admitted = 0
    for _ in range(10):
        admitted += fail(limiter, "p", "admin", 0)
        assert succeed(limiter, "p", "mallory", 0)
    assert admitted == 3


def test_several_peers_fill_the_account_bucket_but_a_familiar_peer_still_gets_in() -> None:
    limiter = LoginLimiter(POLICY)
    assert succeed(limiter, "admin-desk", "admin", 0)
    admitted = sum(fail(limiter, f"bot{i}", "admin", 1) for i in range(20) for _ in range(3))
    assert admitted == 10
    assert not fail(limiter, "new-laptop", "admin", 1)  # the account's bucket is full for strangers
    assert limiter.wait("new-laptop", "admin", 1) == pytest.approx(60)
    assert fail(limiter, "new-laptop", "other", 1)  # other accounts are not affected
    assert succeed(limiter, "admin-desk", "admin", 1)
    # One guess per lockout_seconds is shared by every stranger once the bucket is full.
    assert fail(limiter, "bot19", "admin", 61)
    assert not fail(limiter, "bot18", "admin", 61)


def test_one_peer_under_back_off_never_fills_the_account_bucket() -> None:
    limiter = LoginLimiter(POLICY)
    for t in range(0, 10 * 3600):  # one attempt a second for ten hours
        fail(limiter, "attacker", "admin", t)
        if t % 600 == 0:
            assert limiter.wait("stranger", "admin", t) == 0


def test_the_device_bucket_is_the_last_resort_and_spares_familiar_pairs() -> None:
    limiter = LoginLimiter(POLICY)
    assert succeed(limiter, "desk", "admin", 0)
    admitted = sum(fail(limiter, f"bot{i}", f"name{i}-{j}", 1) for i in range(50) for j in range(3))
    assert admitted == 100
    assert not fail(limiter, "stranger", "supervisor", 1)
    assert succeed(limiter, "desk", "admin", 1)


def test_unknown_and_known_account_names_are_limited_alike() -> None:
    limiter = LoginLimiter(POLICY)
    known = [fail(limiter, "p1", "admin", 0) for _ in range(5)]
    unknown = [fail(limiter, "p2", "nobody", 0) for _ in range(5)]
    assert known == unknown == [True, True, True, False, False]


def test_reservations_count_before_the_verdict() -> None:
    limiter = LoginLimiter(POLICY)
    in_flight = [limiter.reserve("p", "admin", 0) for _ in range(50)]
    assert sum(r is not None for r in in_flight) == 3
    first = in_flight[0]
    assert first is not None
    limiter.succeeded(first, 0)  # the right password, evaluated late: the peer starts afresh
    assert limiter.wait("p", "admin", 0) == 0


def test_a_quiet_peer_is_forgotten_after_the_longest_wait() -> None:
    limiter = LoginLimiter(POLICY)
    for _ in range(3):
        fail(limiter, "p", "admin", 0)
    assert fail(limiter, "p", "admin", 60)  # wait now 120 s, until t=180
    assert not fail(limiter, "p", "admin", 179)
    assert limiter.wait("p", "admin", 180) == 0
    # Quiet for lockout_max_seconds after its wait ended: back to three tries.
    assert [fail(limiter, "p", "admin", 1080) for _ in range(4)] == [True, True, True, False]


def test_zero_turns_limits_off() -> None:
    off = LoginLimiter(LockoutPolicy(max_failed_logins=0))
    assert all(fail(off, "p", "admin", 0) for _ in range(1000))
    no_shared = LoginLimiter(LockoutPolicy(account_max_failed_logins=0, device_max_failed_logins=0))
    assert sum(fail(no_shared, f"p{i}", "admin", 0) for i in range(100) for _ in range(3)) == 300


def test_tables_are_bounded() -> None:
    limiter = LoginLimiter(LockoutPolicy(device_max_failed_logins=0), max_entries=64)
    for i in range(5000):
        fail(limiter, f"peer{i}", f"name{i}", i * 0.001)
        succeed(limiter, f"peer{i}b", f"name{i}", i * 0.001)
    assert all(size <= 64 for size in limiter.sizes().values())


def test_flooding_the_tables_to_evict_a_locked_peer_is_stopped_by_the_device_bucket() -> None:
    limiter = LoginLimiter(POLICY, max_entries=200)
    for _ in range(3):
        fail(limiter, "victim-attacker", "admin", 0)
    assert limiter.wait("victim-attacker", "admin", 0) == 60
    created = sum(fail(limiter, f"peer{i}", f"name{i}", 0.5) for i in range(1000))
    assert created == 97  # the device bucket (100) took the three above and admits no more
    assert max(limiter.sizes().values()) <= 100
    # Its back-off is remembered: the next failure after the wait doubles it (a fresh entry would
    # have allowed three more tries).
    assert fail(limiter, "victim-attacker", "admin", 61)
    assert limiter.wait("victim-attacker", "admin", 61) == 120
    # Without the device scope, 1,000 peers can flush it (what the README says that setting gives up).
    open_device = LoginLimiter(LockoutPolicy(device_max_failed_logins=0), max_entries=200)
    for _ in range(3):
        fail(open_device, "victim-attacker", "admin", 0)
    assert sum(fail(open_device, f"peer{i}", f"name{i}", 0.5) for i in range(1000)) == 1000
    assert fail(open_device, "victim-attacker", "admin", 61)
    assert open_device.wait("victim-attacker", "admin", 61) == 0


def test_policy_errors_name_the_key() -> None:
    cases = [
        ({"max_failed_logins": -1}, "max_failed_logins"),
        ({"lockout_seconds": -1}, "lockout_seconds"),
        ({"lockout_seconds": float("nan")}, "lockout_seconds"),
        ({"lockout_max_seconds": 30}, "lockout_max_seconds"),
        ({"account_max_failed_logins": 3}, "account_max_failed_logins"),
        ({"device_max_failed_logins": 10}, "device_max_failed_logins"),
        ({"account_max_failed_logins": 0, "device_max_failed_logins": 2}, "device_max_failed_logins"),
    ]
    for fields, key in cases:
        with pytest.raises(ValueError, match=key):
            LockoutPolicy(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LoginLimiter(POLICY, max_entries=0)


def test_peer_key_is_the_address() -> None:
    assert peer_key("127.0.0.2") == "127.0.0.2"
    assert peer_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert peer_key("2001:DB8::1") == "2001:db8::1"
    assert peer_key("2001:db8::1") != peer_key("2001:db8::2")  # no /64 grouping
    assert peer_key("fe80::1%eth0") == "fe80::1%eth0"
    assert peer_key("not an address") == "not an address"


# ---------------------------------------------------------------------------------------------------
# Properties over random attack sequences

PEERS = [f"p{i}" for i in range(6)]
ACCOUNTS = ["admin", "supervisor", "nobody", "x"]
attempts = st.lists(
    st.tuples(
        st.sampled_from(PEERS),
        st.sampled_from(ACCOUNTS),
        st.booleans(),  # the password is right
        st.sampled_from([0.0, 0.0, 0.5, 5.0, 30.0, 59.0, 61.0, 200.0, 1000.0]),
    ),
    max_size=120,
)
small_policy = LockoutPolicy(
    max_failed_logins=2,
    lockout_seconds=60,
    lockout_max_seconds=600,
    account_max_failed_logins=5,
    device_max_failed_logins=8,
)


@settings(max_examples=300, deadline=None)
@given(attempts)
def test_admitted_failures_stay_within_every_limit(sequence: list[tuple[str, str, bool, float]]) -> None:
    policy = small_policy
    limiter = LoginLimiter(policy, max_entries=8)
    now = 0.0
    per_peer: dict[str, list[float]] = defaultdict(list)
    shared: dict[str, list[float]] = defaultdict(list)  # per account, failures from strangers
    device: list[float] = []
    familiar: set[tuple[str, str]] = set()
    for peer, account, right, gap in sequence:
        now += gap
        reservation = limiter.reserve(peer, account, now)
        if reservation is None:
            continue
        if right and account in ("admin", "supervisor"):
            limiter.succeeded(reservation, now)
            per_peer[peer].clear()  # a success resets the peer
            familiar.add((peer, account))
            continue
        per_peer[peer].append(now)
        if (peer, account) not in familiar:
            shared[account].append(now)
            device.append(now)
        recent = [t for t in per_peer[peer] if now - t < policy.lockout_seconds]
        assert len(recent) <= policy.max_failed_logins
        assert all(size <= 8 for size in limiter.sizes().values())
    for times, limit in [*((t, policy.account_max_failed_logins) for t in shared.values()), (device, 8)]:
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                # Counted from strangers in [start, end]: at most the bucket plus one per interval;
                # familiar pairs' failures only add to the bucket, so this holds with them left out.
                assert j - i + 1 <= limit + (times[j] - start) / policy.lockout_seconds + 1e-9


@settings(max_examples=200, deadline=None)
@given(attempts, st.sampled_from(["admin", "supervisor"]))
def test_a_familiar_pair_is_never_refused_for_what_other_peers_did(
    sequence: list[tuple[str, str, bool, float]], account: str
) -> None:
    limiter = LoginLimiter(small_policy)
    assert succeed(limiter, "desk", account, 0.0)
    now = 0.0
    for peer, name, right, gap in sequence:
        now += gap
        reservation = limiter.reserve(peer, name, now)
        if reservation is not None and right and name in ("admin", "supervisor"):
            limiter.succeeded(reservation, now)
        assert limiter.wait("desk", account, now) == 0
