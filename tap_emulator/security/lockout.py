"""Device-wide login lockout: after N failed logins in a row the Tap refuses logins for T seconds.

A real Tap "disconnects after 3 failed login tries, and refuses any further attempts for a minute"
(AN05). The count belongs to the device, not to a connection, so a client cannot reset it by
reconnecting: every Tap session of one device shares one `LoginLockout`. N and T come from the device
profile (``max_failed_logins``, ``lockout_seconds``).

Sans-IO: the caller passes the current time (monotonic seconds) to every call, so tests drive it with
a fake clock. Rules (the spec is silent on the details):

- a failure adds one to the count; the failure that reaches N starts the lockout (it is itself
  answered as a wrong password; the attempts after it are refused);
- while locked, attempts are refused without being counted, so hammering does not extend the lockout;
- when the lockout ends the count starts again from zero;
- a successful login resets the count;
- N = 0 disables the lockout.
"""

from __future__ import annotations

__all__ = ["LoginLockout"]


class LoginLockout:
    """Failed-login counter and lockout window shared by all sessions of one device."""

    __slots__ = ("_failures", "_locked_until", "lockout_seconds", "max_failures")

    def __init__(self, max_failures: int, lockout_seconds: float) -> None:
        if max_failures < 0:
            raise ValueError("max_failures must be >= 0")
        if lockout_seconds < 0:
            raise ValueError("lockout_seconds must be >= 0")
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self._failures = 0
        self._locked_until: float | None = None

    def __repr__(self) -> str:
        locked = self._locked_until is not None
        return f"LoginLockout(failures={self._failures}/{self.max_failures}, locked={locked})"

    @property
    def failures(self) -> int:
        """Failed logins counted since the last success or the end of the last lockout."""
        return self._failures

    def is_locked(self, now: float) -> bool:
        """True while logins must be refused (SERVICE_UNAVAILABLE); ends the lockout once it has run out."""
        until = self._locked_until
        if until is None:
            return False
        if now >= until:
            self._locked_until = None
            self._failures = 0
            return False
        return True

    def seconds_left(self, now: float) -> float:
        """How long the current lockout still lasts (0 when logins are allowed)."""
        return self._locked_until - now if self.is_locked(now) and self._locked_until is not None else 0.0

    def record_failure(self, now: float) -> bool:
        """Count a failed login; return True if this failure starts a lockout."""
        if self.max_failures == 0 or self.is_locked(now):
            return False
        self._failures += 1
        if self._failures >= self.max_failures:
            self._locked_until = now + self.lockout_seconds
            return True
        return False

    def record_success(self) -> None:
        """A login succeeded: failures so far no longer count."""
        self._failures = 0
