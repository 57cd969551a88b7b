"""LwM2M notification attributes (TS 1.1 Core section 5.1.2): Write-Attributes and when Observe notifies.

An LwM2M server sets ``pmin``, ``pmax``, ``gt``, ``lt``, ``st``, ``epmin`` and ``epmax`` with a PUT of
Uri-Query options and no payload on an object, an instance or a resource; a resource's effective
attributes are its own over its instance's over its object's. ``NotifyGate`` decides, per observation
and from an injected clock, when a notification goes out: no sooner than ``pmin`` after the previous
one, at ``pmax`` after it at the latest (ignored when below ``pmin``), and for a numeric resource only
on changes that cross ``gt`` or ``lt`` or move ``st`` from the last notified value. Values are
evaluated no more often than ``epmin``. Sans-IO: no clock, no timers of its own.

``epmax`` is validated, stored and shown by Discover; since every change of a value reaches the face
as an event, a periodic evaluation would find nothing new, so it triggers none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

__all__ = ["AttributeError_", "AttributeStore", "Attributes", "NotifyGate", "Path", "parse_write_attributes"]

Path = tuple[int, int | None, int | None]  # (object, instance or None, resource or None)

_PERIODS = ("pmin", "pmax", "epmin", "epmax")
_THRESHOLDS = ("gt", "lt", "st")
# Most paths a device keeps attributes for (an attacker could otherwise grow the store per instance).
MAX_PATHS = 4096


class AttributeError_(ValueError):
    """A Write-Attributes request the specification refuses (a 4.00 with this diagnostic)."""


@dataclass(frozen=True, slots=True)
class Attributes:
    pmin: int | None = None
    pmax: int | None = None
    gt: float | None = None
    lt: float | None = None
    st: float | None = None
    epmin: int | None = None
    epmax: int | None = None

    def over(self, inherited: Attributes) -> Attributes:
        """These attributes, with the ones left unset taken from ``inherited``."""
        return Attributes(
            **{
                f.name: getattr(inherited, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
                for f in fields(self)
            }
        )

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def link_params(self) -> str:
        """``;pmin=2;pmax=5`` as a link-format target carries them (empty when none is set)."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out.append(f";{f.name}={_number(value)}")
        return "".join(out)

    def check(self) -> None:
        """The constraints between attributes (TS 1.1 Core section 5.1.2)."""
        if self.epmin is not None and self.epmax is not None and self.epmax <= self.epmin:
            raise AttributeError_("epmax must be greater than epmin")
        if self.gt is not None and self.lt is not None:
            if self.lt >= self.gt:
                raise AttributeError_("lt must be less than gt")
            if self.st is not None and self.lt + 2 * self.st >= self.gt:
                raise AttributeError_("lt + 2*st must be less than gt")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_write_attributes(
    queries: Iterable[str], *, resource_level: bool, numeric: bool
) -> dict[str, object]:
    """The changes a Write-Attributes query asks for: name -> value, or None to remove the attribute
    (a bare ``pmin``). ``gt``/``lt``/``st`` only on a numeric resource."""
    changes: dict[str, object] = {}
    for query in queries:
        name, has_value, text = query.partition("=")
        if name in changes:
            raise AttributeError_(f"attribute {name!r} is given twice")
        if name in _PERIODS:
            if not has_value:
                changes[name] = None
                continue
            if not text.isascii() or not text.isdigit() or len(text) > 10:
                raise AttributeError_(f"{name} must be a non-negative integer of seconds")
            changes[name] = int(text)
        elif name in _THRESHOLDS:
            if not resource_level or not numeric:
                raise AttributeError_(f"{name} applies to a numeric resource only")
            if not has_value:
                changes[name] = None
                continue
            try:
                number = float(text)
            except ValueError:
                raise AttributeError_(f"{name} must be a number") from None
            if not math.isfinite(number) or (name == "st" and number <= 0):
                raise AttributeError_(f"{name} must be a finite number{' above 0' if name == 'st' else ''}")
            changes[name] = number
        else:
            raise AttributeError_(f"{name!r} is not a notification attribute")
    if not changes:
        raise AttributeError_("no attribute given")
    return changes


class AttributeStore:
    """Attributes set on each path, and the effective ones with inheritance."""

    def __init__(self) -> None:
        self._set: dict[Path, Attributes] = {}
        self.generation = 0  # grows with every change (Discover shows the attributes)

    def own(self, path: Path) -> Attributes:
        return self._set.get(path, Attributes())

    def effective(self, path: Path) -> Attributes:
        obj, instance, resource = path
        result = self.own(path)
        if resource is not None:
            result = result.over(self.own((obj, instance, None)))
        if instance is not None or resource is not None:
            result = result.over(self.own((obj, None, None)))
        return result

    def write(self, path: Path, changes: dict[str, object]) -> None:
        """Apply a Write-Attributes; AttributeError_ (nothing changed) if the result breaks a rule."""
        updated = replace(self.own(path), **changes)  # type: ignore[arg-type]
        updated.check()
        self.effective_with(path, updated).check()
        self.generation += 1
        if updated.empty:
            self._set.pop(path, None)
            return
        if path not in self._set and len(self._set) >= MAX_PATHS:
            raise AttributeError_(f"attributes are kept for at most {MAX_PATHS} paths")
        self._set[path] = updated

    def effective_with(self, path: Path, own: Attributes) -> Attributes:
        saved = self._set.get(path)
        self._set[path] = own
        try:
            return self.effective(path)
        finally:
            if saved is None:
                del self._set[path]
            else:
                self._set[path] = saved

    def forget_instance(self, object_id: int, instance_id: int) -> None:
        """An instance was deleted: its attributes go with it."""
        self.generation += 1
        for path in [p for p in self._set if p[0] == object_id and p[1] == instance_id]:
            del self._set[path]


class NotifyGate:
    """When one observation notifies, from its effective attributes (seconds on the caller's clock).

    The face calls ``evaluation_time`` on each change, ``evaluate`` at that time with the current value
    (a number, or None for a non-numeric target), ``sent`` once it notified, and ``deadline`` for the
    ``pmax`` notification.
    """

    def __init__(self, attributes: Attributes, now: float, value: float | None) -> None:
        self.attributes = attributes
        self.last_sent = now
        self.last_notified = value
        self.last_evaluated_at: float | None = None
        self.previous_value = value

    def evaluation_time(self, now: float) -> float:
        epmin = self.attributes.epmin
        if epmin and self.last_evaluated_at is not None:
            return max(now, self.last_evaluated_at + epmin)
        return now

    def evaluate(self, now: float, value: float | None) -> float | None:
        """When to notify of ``value`` (``now`` or later, for ``pmin``), or None if it does not qualify."""
        self.last_evaluated_at = now
        previous, self.previous_value = self.previous_value, value
        if not self._qualifies(previous, value):
            return None
        return max(now, self.last_sent + (self.attributes.pmin or 0))

    def _qualifies(self, previous: float | None, value: float | None) -> bool:
        a = self.attributes
        if value is None or (a.gt is None and a.lt is None and a.st is None):
            return True
        if previous is not None:
            for threshold in (a.gt, a.lt):
                if threshold is not None and (previous > threshold) != (value > threshold):
                    return True
        if a.st is not None:
            return self.last_notified is None or abs(value - self.last_notified) >= a.st
        return False

    def sent(self, now: float, value: float | None) -> None:
        self.last_sent = now
        self.last_notified = value

    def deadline(self) -> float | None:
        """When the ``pmax`` notification is due (None without pmax, or with pmax below pmin)."""
        pmax, pmin = self.attributes.pmax, self.attributes.pmin or 0
        if not pmax or pmax < pmin:
            return None
        return self.last_sent + pmax
