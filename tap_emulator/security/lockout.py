"""Login limits of the Tap face: brute force is slowed down without letting anyone lock everyone out.

A real Tap "disconnects after 3 failed login tries, and refuses any further attempts for a minute"
(AN05). Counted device-wide, as the emulator first did, that rule lets one stranger keep every user
out with three garbage proofs a minute. `LoginLimiter` counts failures where they come from instead,
like the lockout policies people trust (OWASP, Microsoft's smart lockout):

- per (peer, account) and per peer: after ``max_failed_logins`` failures the next attempt waits
  ``lockout_seconds``; each further failure doubles the wait, up to ``lockout_max_seconds``. A
  success resets both. The pair scope is what stops a peer that knows one password from resetting
  its count against another account by logging in to its own.
- per account, across peers: a leaky bucket of ``account_max_failed_logins`` failures that forgets
  one failure every ``lockout_seconds``. One peer under back-off fails more slowly than that, so it
  can never fill the bucket; only several peers together can, and then they share one guess per
  ``lockout_seconds`` for that account.
- device-wide, the last resort: the same bucket with ``device_max_failed_logins``.

The account and device scopes never refuse a peer that has logged in to that account before (a
familiar pair, remembered until evicted): an attacker can fill them, but cannot keep a known client of
the account out. Unknown account names are counted exactly like known ones, so the limits are no
oracle. A peer is whatever key the transport gives (the client's address); see the README.

Atomic by design: `reserve` checks every scope and counts the failure in one synchronous call,
before the caller awaits any password work, and `succeeded` refunds it. A login that never reports
back (cancelled, crashed) stays counted. So however many attempts arrive at once, no more are
evaluated than the limits allow.

Bounded: each table keeps at most ``max_entries`` keys, oldest update evicted first. Entries are only
created by counted failures (or successes, for familiar pairs), and outside familiar pairs every
counted failure passes the device bucket, so flushing a victim's entry out of a table costs
``max_entries`` failures, which the device scope admits at one per ``lockout_seconds`` once full.

Sans-IO: every call takes the current time (monotonic seconds) from the caller.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["LockoutPolicy", "LoginLimiter", "Reservation", "peer_key"]

DEFAULT_MAX_ENTRIES = 4096
_MAX_DOUBLINGS = 40  # 2**40 times any base is past every cap; keeps the float finite


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """The numbers of the login limits; field names are the profile's keys (``[security]``).

    ``max_failed_logins`` = 0 turns every limit off; ``account_max_failed_logins`` or
    ``device_max_failed_logins`` = 0 turns that scope off. Raises ValueError naming the key.
    """

    max_failed_logins: int = 3
    lockout_seconds: float = 60.0
    lockout_max_seconds: float = 900.0
    account_max_failed_logins: int = 10
    device_max_failed_logins: int = 100

    def __post_init__(self) -> None:
        for key in ("max_failed_logins", "account_max_failed_logins", "device_max_failed_logins"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        if not math.isfinite(self.lockout_seconds) or self.lockout_seconds < 0:
            raise ValueError("lockout_seconds must be a number >= 0")
        if not math.isfinite(self.lockout_max_seconds) or self.lockout_max_seconds < self.lockout_seconds:
            raise ValueError("lockout_max_seconds must be a number >= lockout_seconds")
        per_peer, account, device = (
            self.max_failed_logins,
            self.account_max_failed_logins,
            self.device_max_failed_logins,
        )
        if per_peer and account and account <= per_peer:
            # Otherwise a single peer could lock an account for every other peer.
            raise ValueError("account_max_failed_logins must be greater than max_failed_logins (or 0)")
        lower = account or per_peer
        if per_peer and device and device <= lower:
            raise ValueError(
                "device_max_failed_logins must be greater than account_max_failed_logins"
                " and max_failed_logins (or 0)"
            )


def peer_key(host: str) -> str:
    """The limiter's key for a client address: the address itself, IPv4-mapped IPv6 as IPv4.

    Whole addresses, also for IPv6: on the LAN a Tap lives on, every client shares one /64, so
    grouping by prefix would let a neighbour lock everyone out.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host if "%" in host else str(address)


@dataclass(slots=True)
class _Backoff:
    """Failures of one peer (or peer and account) and the wait they have earned."""

    failures: int = 0
    locked_until: float = -math.inf
    quiet_from: float = -math.inf  # last failure or end of the wait, whichever is later

    def fail(self, now: float, policy: LockoutPolicy) -> None:
        self.failures += 1
        beyond = self.failures - policy.max_failed_logins
        if beyond >= 0:
            wait = min(
                policy.lockout_max_seconds, policy.lockout_seconds * 2.0 ** min(beyond, _MAX_DOUBLINGS)
            )
            self.locked_until = now + wait
        self.quiet_from = max(now, self.locked_until)

    def forgotten(self, now: float, policy: LockoutPolicy) -> bool:
        """A peer quiet for the longest wait after its last one starts afresh."""
        return now >= self.quiet_from + policy.lockout_max_seconds

    def wait(self, now: float) -> float:
        return max(0.0, self.locked_until - now)


@dataclass(slots=True)
class _Leaky:
    """A leaky bucket of failures: one leaks out every ``interval`` seconds."""

    level: float = 0.0
    at: float = 0.0

    def current(self, now: float, interval: float) -> float:
        if interval <= 0:
            return 0.0
        return max(0.0, self.level - max(0.0, now - self.at) / interval)

    def add(self, amount: float, now: float, interval: float, limit: int) -> float:
        """Change the level by ``amount``, kept within 0..limit; returns the change made."""
        before = self.current(now, interval)
        self.level = min(float(limit), max(0.0, before + amount))
        self.at = now
        return self.level - before

    def wait(self, now: float, interval: float, limit: int) -> float:
        """Seconds until one more failure fits under ``limit``."""
        excess = self.current(now, interval) - (limit - 1)
        return max(0.0, excess * interval)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One login attempt admitted by `LoginLimiter.reserve`, already counted as a failure."""

    peer: str
    account: str
    counted: bool
    # What the failure added to the account and device buckets: a refund gives back no more.
    account_added: float = 0.0
    device_added: float = 0.0


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LoginLimiter:
    """Failed-login limits shared by every Tap session of one device (see the module docstring)."""

    __slots__ = ("_accounts", "_device", "_familiar", "_max_entries", "_pairs", "_peers", "policy")

    def __init__(self, policy: LockoutPolicy, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.policy = policy
        self._max_entries = max_entries
        self._pairs: OrderedDict[tuple[str, str], _Backoff] = OrderedDict()
        self._peers: OrderedDict[str, _Backoff] = OrderedDict()
        self._accounts: OrderedDict[str, _Leaky] = OrderedDict()
        self._device = _Leaky()
        self._familiar: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={size}" for name, size in self.sizes().items())
        return f"LoginLimiter({sizes})"

    def sizes(self) -> dict[str, int]:
        """How many keys each table holds (each is at most ``max_entries``)."""
        return {
            "pairs": len(self._pairs),
            "peers": len(self._peers),
            "accounts": len(self._accounts),
            "familiar": len(self._familiar),
        }

    # ------------------------------------------------------------------ queries

    def wait(self, peer: str, account: str, now: float) -> float:
        """Seconds before ``peer`` may try ``account`` again; 0 when an attempt would be admitted."""
        policy = self.policy
        if policy.max_failed_logins == 0:
            return 0.0
        waits = [0.0]
        pair = self._live(self._pairs, (peer, account), now)
        if pair is not None:
            waits.append(pair.wait(now))
        peer_bucket = self._live(self._peers, peer, now)
        if peer_bucket is not None:
            waits.append(peer_bucket.wait(now))
        if (peer, account) not in self._familiar:
            interval = policy.lockout_seconds
            account_bucket = self._accounts.get(account)
            if policy.account_max_failed_logins and account_bucket is not None:
                waits.append(account_bucket.wait(now, interval, policy.account_max_failed_logins))
            if policy.device_max_failed_logins:
                waits.append(self._device.wait(now, interval, policy.device_max_failed_logins))
        return max(waits)

    def lockouts(self, now: float) -> list[dict[str, object]]:
        """The peers (and peer-account pairs) with failed logins now: failures and the wait earned."""
        out: list[dict[str, object]] = []
        for (peer, account), bucket in list(self._pairs.items()):
            if self._live(self._pairs, (peer, account), now) is not None:
                out.append(
                    {"peer": peer, "account": account, "failures": bucket.failures, "wait": bucket.wait(now)}
                )
        for peer, bucket in list(self._peers.items()):
            if self._live(self._peers, peer, now) is not None:
                out.append(
                    {"peer": peer, "account": None, "failures": bucket.failures, "wait": bucket.wait(now)}
                )
        return out

    def clear(self) -> int:
        """Forget every failed login (the control API's "clear lockouts"); returns the entries dropped."""
        dropped = len(self._pairs) + len(self._peers) + len(self._accounts)
        self._pairs.clear()
        self._peers.clear()
        self._accounts.clear()
        self._device = _Leaky()
        return dropped

    # ------------------------------------------------------------------ attempts

    def reserve(self, peer: str, account: str, now: float) -> Reservation | None:
        """Admit one attempt and count it as a failure at once; None when it must be refused.

        Call before any password work is awaited; call `succeeded` if the attempt turns out right.
        """
        policy = self.policy
        if policy.max_failed_logins == 0:
            return Reservation(peer, account, counted=False)
        if self.wait(peer, account, now) > 0:
            return None
        self._fail(self._pairs, (peer, account), now)
        self._fail(self._peers, peer, now)
        interval = policy.lockout_seconds
        account_added = device_added = 0.0
        if policy.account_max_failed_logins:
            account_bucket = self._accounts.get(account) or _Leaky()
            account_added = account_bucket.add(1, now, interval, policy.account_max_failed_logins)
            self._put(self._accounts, account, account_bucket)
        if policy.device_max_failed_logins:
            device_added = self._device.add(1, now, interval, policy.device_max_failed_logins)
        return Reservation(peer, account, True, account_added, device_added)

    def succeeded(self, reservation: Reservation, now: float) -> None:
        """The reserved attempt was right: refund it, reset the peer's back-off, remember the pair."""
        if not reservation.counted:
            return
        peer, account = reservation.peer, reservation.account
        self._pairs.pop((peer, account), None)
        self._peers.pop(peer, None)
        policy = self.policy
        account_bucket = self._accounts.get(account)
        if account_bucket is not None:
            interval, limit = policy.lockout_seconds, policy.account_max_failed_logins
            account_bucket.add(-reservation.account_added, now, interval, limit)
        if policy.device_max_failed_logins:
            interval, limit = policy.lockout_seconds, policy.device_max_failed_logins
            self._device.add(-reservation.device_added, now, interval, limit)
        self._put(self._familiar, (peer, account), None)

    # ------------------------------------------------------------------ tables

    def _live(self, table: OrderedDict[K, _Backoff], key: K, now: float) -> _Backoff | None:
        bucket = table.get(key)
        if bucket is not None and bucket.forgotten(now, self.policy):
            del table[key]
            return None
        return bucket

    def _fail(self, table: OrderedDict[K, _Backoff], key: K, now: float) -> None:
        bucket = self._live(table, key, now) or _Backoff()
        bucket.fail(now, self.policy)
        self._put(table, key, bucket)

    def _put(self, table: OrderedDict[K, V], key: K, value: V) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max_entries:
            table.popitem(last=False)
