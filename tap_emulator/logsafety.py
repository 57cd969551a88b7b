"""Log lines that input from the network cannot multiply: one place for rate limits on log output.

A malformed datagram, a refused frame or a failing disk can repeat thousands of times a second; each
must cost at most one short line, and a burst must collapse into a count. ``RateLimitedLog`` lets a
line through at most once per ``interval`` seconds per key, and reports how many it held back on the
next line it lets through. The clock is injected so tests drive it without sleeping. ``EpisodeLog`` is
for failures that last (a full disk, an unreachable store): one line when an episode starts, silence
while it lasts, one line with the count when it ends.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["EpisodeLog", "RateLimitedLog"]


class RateLimitedLog:
    """At most one record per key per ``interval`` seconds; the keys kept are bounded (oldest dropped)."""

    __slots__ = ("_clock", "_interval", "_last", "_logger", "_max_keys", "_suppressed")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval < 0 or max_keys < 1:
            raise ValueError("interval must be >= 0 and max_keys >= 1")
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self._suppressed: dict[Hashable, int] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` logged less than ``interval`` ago.

        Returns True when the line was written. Lines held back are counted and the count is appended
        to the next line written for the same key.
        """
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        held = self._suppressed.pop(key, 0)
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            dropped, _ = self._last.popitem(last=False)
            self._suppressed.pop(dropped, None)
        if held:
            self._logger.log(level, msg + " (%d similar lines suppressed)", *args, held)
        else:
            self._logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def debug(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.DEBUG, key, msg, *args)


class EpisodeLog:
    """One error line when a failure episode starts (or its cause changes), one line when it ends.

    ``failed(cause, ...)`` logs only if no episode is running or the running one had another cause;
    ``recovered(...)`` logs only if an episode was running, with the number of failures it saw.
    Not thread-safe: each owner calls it from one thread.
    """

    __slots__ = ("_cause", "_failures", "_logger")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._cause: Hashable | None = None
        self._failures = 0

    @property
    def failing(self) -> bool:
        return self._cause is not None

    def failed(self, cause: Hashable, msg: str, *args: object) -> bool:
        """Count a failure; True when this one was logged (a new episode or a new cause)."""
        self._failures += 1
        if self._cause == cause:
            return False
        self._cause = cause
        self._logger.error(msg, *args)
        return True

    def recovered(self, msg: str, *args: object) -> bool:
        """End the running episode, if any, with ``msg % args`` plus its failure count; True if logged."""
        if self._cause is None:
            return False
        failures, self._cause, self._failures = self._failures, None, 0
        self._logger.warning(msg + " (after %d failure(s))", *args, failures)
        return True
