"""Bounds on everything a CoAP peer can make the server hold: block-wise state, observers, their retries.

aiocoap keeps block1 reassemblies and block2 responses in dicts that expire entries after a timeout but
never bound their number or size, so distinct tokens, paths or queries grow them without limit (issue 9,
defect 6). The face swaps in the bounded stores below; what each may hold is one ``CoapLimits``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiocoap import Message
from aiocoap.blockwise import Block1Spool, Block2Cache, IncompleteException
from aiocoap.numbers.constants import TransportTuning

__all__ = ["NOTIFICATION_TUNING", "BoundedExpiringMap", "CoapLimits", "bounded_block_stores"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CoapLimits:
    """What the CoAP face holds at most; every default is a memory bound, not a tuning knob.

    A peer is one CoAP endpoint (address and port). Past an observer cap a GET is answered normally,
    without registering (RFC 7641 section 4.1). Block-wise state lives at most ``block_lifetime``
    seconds (aiocoap's MAX_TRANSMIT_WAIT); the block2 store also keeps at most ``block2_bytes`` of
    response payloads, so the largest response (every group, SenML) still fits a few times over. The
    fast path keeps at most ``kept_replies`` GET shapes with their replies (one datagram each: 2 MB
    at most with the default).
    """

    max_observers: int = 8192
    max_observers_per_peer: int = 64
    block1_assemblies: int = 1 << 10
    block2_responses: int = 256
    block2_bytes: int = 32 << 20  # 32 MiB
    block_lifetime: float = TransportTuning().MAX_TRANSMIT_WAIT
    kept_replies: int = 2048


class _NotificationTuning(TransportTuning):  # type: ignore[misc]
    """A CON notification is retried once: an observer that does not acknowledge within
    ACK_TIMEOUT x (1 + 2) x ACK_RANDOM_FACTOR (6 to 9 s) is dropped, instead of after the 45 to 93 s of
    a request's full retransmission (RFC 7641 section 4.5 lets the server give up on it)."""

    MAX_RETRANSMIT = 1


NOTIFICATION_TUNING = _NotificationTuning()


class BoundedExpiringMap(Generic[K, V]):
    """A dict whose entries expire ``lifetime`` seconds after their last write or read, holding at most
    ``capacity`` entries and ``max_bytes`` of ``size(value)``; the least recently used go first. Sans-IO
    (the clock is passed in); expiry is checked on access, so no timers are kept."""

    def __init__(
        self,
        lifetime: float,
        capacity: int,
        clock: Callable[[], float],
        *,
        max_bytes: int | None = None,
        size: Callable[[V], int] = lambda _value: 0,
    ) -> None:
        self.lifetime = lifetime
        self.capacity = max(1, capacity)
        self.max_bytes = max_bytes
        self._clock = clock
        self._size = size
        self._items: OrderedDict[K, tuple[float, int, V]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, key: K) -> V:
        now = self._clock()
        self._expire(now)
        _, size, value = self._items[key]
        self._items[key] = (now, size, value)
        self._items.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        now = self._clock()
        self._expire(now)
        self._drop(key)
        size = self._size(value)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole store: not kept (a later block is then 4.08)
        self._items[key] = (now, size, value)
        self.bytes += size
        while len(self._items) > self.capacity or (
            self.max_bytes is not None and self.bytes > self.max_bytes
        ):
            self._drop(next(iter(self._items)))

    def pop(self, key: K) -> V | None:
        """Remove and return the value of ``key`` (None if absent or expired)."""
        self._expire(self._clock())
        entry = self._items.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry[1]
        return entry[2]

    def _drop(self, key: K) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]

    def _expire(self, now: float) -> None:
        items = self._items
        while items:
            key, (touched, _, _) = next(iter(items.items()))
            if touched + self.lifetime > now:
                return
            self._drop(key)


class SequencedBlock1Spool(Block1Spool):  # type: ignore[misc]  # aiocoap ships no types
    """aiocoap's spool, answering a block that leaves a gap or overlaps (not the next in sequence)
    with 4.08 Request Entity Incomplete, as RFC 7959 section 2.3 asks; aiocoap 0.4.17 lets that case
    escape as a bare ``ValueError`` (a traceback in the log and a 5.00)."""

    def feed_and_take(self, req: Message) -> Message:
        try:
            return super().feed_and_take(req)
        except ValueError as exc:
            if type(exc) is not ValueError:  # a message-format error of aiocoap's own
                raise
            raise IncompleteException from None


def bounded_block_stores(limits: CoapLimits, clock: Callable[[], float]) -> tuple[Block1Spool, Block2Cache]:
    """aiocoap's block1 spool and block2 cache with their TimeoutDicts replaced by bounded maps.

    Both classes only get and set items of ``_assemblies`` / ``_completes``, which the map provides.
    A block1 assembly is itself bounded by the face's body cap, checked before each block is fed.
    """
    spool = SequencedBlock1Spool()
    assemblies: BoundedExpiringMap[Any, Any] = BoundedExpiringMap(
        limits.block_lifetime, limits.block1_assemblies, clock
    )
    spool._assemblies = assemblies
    cache = Block2Cache()
    completes: BoundedExpiringMap[Any, Any] = BoundedExpiringMap(
        limits.block_lifetime,
        limits.block2_responses,
        clock,
        max_bytes=limits.block2_bytes,
        size=lambda message: len(message.payload),
    )
    cache._completes = completes
    return spool, cache
