"""Seeded fault injection: which request of which face is dropped, delayed, duplicated, corrupted, closed
or answered with a forced status. Sans-IO; each face applies the decisions it gets.

Test rigs need a device that misbehaves the same way every run: the ``n``-th request a face sees draws
its faults from a generator seeded with ``(seed, face, n)`` alone, so the same seed and the same traffic
give the same faults, whatever else ran in between. A plan comes from ``--faults PATH.toml`` or the
control API (the same shape, as JSON)::

    seed = 42
    offline = {after = 0.0, seconds = 5.0}   # nothing answers for 5 s, starting when the plan is set
    [[rules]]
    face = "coap"            # coap | tcp | ws | tap (tcp and ws) | * (every face, the default)
    path = "/1025/*"         # optional: shell-style pattern on the request path (/1025/0/0, /1024//7)
    drop = 0.1               # probabilities in 0..1: the request is lost before it is served
    delay_ms = 50            # answered this much later, plus up to jitter_ms more
    jitter_ms = 20
    duplicate = 0.05         # the answer is sent twice
    corrupt = 0.05           # one byte of the answer is flipped
    close_after = 10         # Tap faces: the connection closes after its 10th answer
    status = "5.03"          # answered with this status, unserved (over Tap the same byte, 0xA3)

The first rule whose face and path match a request decides for it. No fault loses an acknowledged
write: a dropped or status-forced request is never served, and a corrupted, duplicated or delayed
answer is the answer of a write already durable.
"""

from __future__ import annotations

import fnmatch
import random
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tap_emulator.config import ConfigError

__all__ = [
    "FACES",
    "FaultDecision",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "load_fault_plan",
    "parse_fault_plan",
    "parse_status",
]

FACES = ("coap", "tcp", "ws")
_FACE_SELECTORS = {"coap": ("coap",), "tcp": ("tcp",), "ws": ("ws",), "tap": ("tcp", "ws"), "*": FACES}
_PROBABILITIES = ("drop", "duplicate", "corrupt")
_MAX_DELAY_MS = 60_000.0
_MAX_OFFLINE_SECONDS = 86_400.0
_MAX_RULES = 64
_MAX_PATTERN = 128


def parse_status(text: str) -> int:
    """``"5.03"`` (CoAP class.detail) or ``"0xA3"`` as the status byte both faces share; ValueError."""
    text = text.strip()
    if "." in text:
        cls, _, detail = text.partition(".")
        if not (cls.isdigit() and detail.isdigit() and 2 <= int(cls) <= 5 and int(detail) <= 31):
            raise ValueError(f"{text!r} is not a CoAP status such as 5.03")
        return int(cls) << 5 | int(detail)
    value = int(text, 0)
    if not 0x40 <= value <= 0xBF:
        raise ValueError(f"{text!r} is not a response status byte (0x40..0xBF)")
    return value


def _status_text(code: int) -> str:
    return f"{code >> 5}.{code & 0x1F:02d}"


@dataclass(frozen=True, slots=True)
class FaultRule:
    face: str = "*"
    path: str | None = None
    drop: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    close_after: int | None = None
    status: int | None = None  # the status byte (CoAP code), e.g. 0xA3 for 5.03

    def matches(self, face: str, path: str) -> bool:
        return face in _FACE_SELECTORS[self.face] and (
            self.path is None or fnmatch.fnmatchcase(path, self.path)
        )

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = None if self.status is None else _status_text(self.status)
        return out


@dataclass(frozen=True, slots=True)
class FaultPlan:
    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    offline_after: float = 0.0
    offline_seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        """The plan in the shape ``parse_fault_plan`` reads (the control API returns this)."""
        out: dict[str, Any] = {"seed": self.seed, "rules": [rule.public() for rule in self.rules]}
        if self.offline_seconds:
            out["offline"] = {"after": self.offline_after, "seconds": self.offline_seconds}
        return out


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What happens to one request; ``labels`` name it in the trace (``drop``, ``delay 62ms`` ...)."""

    drop: bool = False
    delay: float = 0.0  # seconds
    duplicate: bool = False
    corrupt: bool = False
    close: bool = False
    status: int | None = None
    labels: tuple[str, ...] = field(default=())
    corrupt_at: float = 0.0  # where in the answer the flipped byte is, as a fraction of its length

    @property
    def label(self) -> str | None:
        return " ".join(self.labels) or None

    def corrupted(self, data: bytes) -> bytes:
        """``data`` with one byte flipped at ``corrupt_at`` (an empty message stays empty)."""
        if not data:
            return data
        position = min(len(data) - 1, int(self.corrupt_at * len(data)))
        return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


_NONE = FaultDecision()
_RULE_KEYS = frozenset(FaultRule.__dataclass_fields__)


def _number(raw: Mapping[str, Any], key: str, where: str, low: float, high: float) -> float:
    value = raw.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{where}: '{key}' must be a number in {low:g}..{high:g}")
    return float(value)


def _rule(raw: Any, where: str) -> FaultRule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a rule must be a table")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    face = raw.get("face", "*")
    if face not in _FACE_SELECTORS:
        raise ConfigError(f"{where}: 'face' must be one of {', '.join(_FACE_SELECTORS)}")
    path = raw.get("path")
    if path is not None and (
        not isinstance(path, str) or not path.startswith("/") or len(path) > _MAX_PATTERN
    ):
        raise ConfigError(
            f"{where}: 'path' must be a pattern starting with / (at most {_MAX_PATTERN} characters)"
        )
    close_after = raw.get("close_after")
    if close_after is not None and (type(close_after) is not int or not 1 <= close_after <= 1_000_000):
        raise ConfigError(f"{where}: 'close_after' must be an integer in 1..1000000")
    if close_after is not None and face == "coap":
        raise ConfigError(
            f"{where}: 'close_after' applies to the Tap faces (tcp, ws), CoAP has no connection"
        )
    status: int | None = None
    if raw.get("status") is not None:
        try:
            status = parse_status(str(raw["status"]))
        except ValueError as exc:
            raise ConfigError(f"{where}: 'status': {exc}") from None
    probabilities = {key: _number(raw, key, where, 0.0, 1.0) for key in _PROBABILITIES}
    return FaultRule(
        face=face,
        path=path,
        delay_ms=_number(raw, "delay_ms", where, 0.0, _MAX_DELAY_MS),
        jitter_ms=_number(raw, "jitter_ms", where, 0.0, _MAX_DELAY_MS),
        close_after=close_after,
        status=status,
        **probabilities,
    )


def parse_fault_plan(raw: Mapping[str, Any], where: str = "faults") -> FaultPlan:
    """A plan from its TOML or JSON form; ConfigError naming ``where`` and the key on any bad value."""
    unknown = set(raw) - {"seed", "rules", "offline"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    seed = raw.get("seed", 0)
    if type(seed) is not int or not 0 <= seed < 2**63:
        raise ConfigError(f"{where}: 'seed' must be a non-negative integer")
    rules = raw.get("rules", [])
    if not isinstance(rules, list) or len(rules) > _MAX_RULES:
        raise ConfigError(f"{where}: 'rules' must be a list of at most {_MAX_RULES} tables")
    offline = raw.get("offline", {})
    if not isinstance(offline, Mapping) or set(offline) - {"after", "seconds"}:
        raise ConfigError(f"{where}: 'offline' must be a table of 'after' and 'seconds'")
    return FaultPlan(
        seed=seed,
        rules=tuple(_rule(rule, f"{where} rule #{i}") for i, rule in enumerate(rules, 1)),
        offline_after=_number(offline, "after", f"{where} offline", 0.0, _MAX_OFFLINE_SECONDS),
        offline_seconds=_number(offline, "seconds", f"{where} offline", 0.0, _MAX_OFFLINE_SECONDS),
    )


def load_fault_plan(path: str | Path) -> FaultPlan:
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"fault plan {str(source)!r} not found") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return parse_fault_plan(raw, source.name)


class FaultInjector:
    """The device's one fault plan, shared by its faces; ``active`` is False until a plan has a rule
    or an offline window (the faces skip every other step then). ``clock`` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.plan = FaultPlan()
        self.active = False
        self._offline_from = 0.0
        self._offline_until = 0.0
        self._counters = dict.fromkeys(FACES, 0)
        self.applied = dict.fromkeys(FACES, 0)  # requests a fault was applied to, per face

    def set_plan(self, plan: FaultPlan) -> None:
        """Replace the plan; the request counters restart, so a plan set twice replays the same faults."""
        now = self.clock()
        self.plan = plan
        self._offline_from = now + plan.offline_after
        self._offline_until = self._offline_from + plan.offline_seconds if plan.offline_seconds else 0.0
        self._counters = dict.fromkeys(FACES, 0)
        self.applied = dict.fromkeys(FACES, 0)
        self.active = bool(plan.rules) or self._offline_until > now

    def clear(self) -> None:
        self.set_plan(FaultPlan())

    def go_offline(self, seconds: float) -> None:
        """Nothing answers for ``seconds`` from now (on top of the plan's rules)."""
        now = self.clock()
        self._offline_from, self._offline_until = now, now + seconds
        self.active = True

    def offline_remaining(self) -> float:
        now = self.clock()
        return max(0.0, self._offline_until - now) if self._offline_from <= now else 0.0

    def status(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "plan": self.plan.public(),
            "offline_remaining": round(self.offline_remaining(), 3),
            "requests": dict(self._counters),
            "applied": dict(self.applied),
        }

    def decide(self, face: str, path: str, frames_on_connection: int = 0) -> FaultDecision:
        """The faults of the next request of ``face`` to ``path``; ``frames_on_connection`` counts the
        answers its connection already got (Tap faces), for ``close_after``."""
        if not self.active:
            return _NONE
        index = self._counters[face]
        self._counters[face] = index + 1
        now = self.clock()
        if self._offline_from <= now < self._offline_until:
            self.applied[face] += 1
            return FaultDecision(drop=True, labels=("offline",))
        rule = next((r for r in self.plan.rules if r.matches(face, path)), None)
        if rule is None:
            return _NONE
        draw = random.Random(f"{self.plan.seed}:{face}:{index}").random
        # Every draw is made whatever the earlier ones gave, so one rule's outcome never shifts another's.
        dropped, duplicated, corrupted, jitter, corrupt_at = (
            draw() < rule.drop,
            draw(),
            draw(),
            draw(),
            draw(),
        )
        labels: list[str] = []
        if dropped:
            labels.append("drop")
        if rule.status is not None and not dropped:
            labels.append(f"status {_status_text(rule.status)}")
        delay = 0.0
        if (rule.delay_ms or rule.jitter_ms) and not dropped:
            delay = (rule.delay_ms + jitter * rule.jitter_ms) / 1000.0
            labels.append(f"delay {delay * 1000:.0f}ms")
        duplicate = duplicated < rule.duplicate and not dropped
        corrupt = corrupted < rule.corrupt and not dropped
        if duplicate:
            labels.append("duplicate")
        if corrupt:
            labels.append("corrupt")
        close = rule.close_after is not None and frames_on_connection + 1 >= rule.close_after
        if close:
            labels.append(f"close after {rule.close_after}")
        if not labels:
            return _NONE
        self.applied[face] += 1
        return FaultDecision(
            drop=dropped,
            delay=delay,
            duplicate=duplicate,
            corrupt=corrupt,
            close=close,
            status=None if dropped else rule.status,
            labels=tuple(labels),
            corrupt_at=corrupt_at,
        )
