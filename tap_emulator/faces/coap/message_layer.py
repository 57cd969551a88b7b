"""Hooks on aiocoap's message layer, below requests: duplicate detection, the datagram screen, and RSTs
to NON notifications.

Each replaces one method of an aiocoap object on the instance (the message manager's deduplication,
first send and exchange removal; the UDP transport's receive method) with a bounded or stricter
version that keeps aiocoap's semantics; ``start_coap_server`` installs them before the first datagram.
Why each exists is in its docstring; the aiocoap behaviour each works around is an upstream issue.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import aiocoap
from aiocoap.message import Direction
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import Type

from tap_emulator.codec.coap import CoapMessage
from tap_emulator.codec.coap_screen import Action, screen
from tap_emulator.faces.coap.limits import BoundedExpiringMap, CoapLimits
from tap_emulator.logsafety import RateLimitedLog

__all__ = [
    "DEDUP_CAPACITY",
    "DEDUP_JITTER",
    "DEDUP_WINDOW",
    "DuplicateCache",
    "DuplicateDetector",
    "FastReceiver",
    "install_datagram_screens",
    "install_duplicate_cache",
    "install_notification_resets",
]


# Duplicate detection (RFC 7252 4.5). aiocoap remembers every (remote, message id) with its whole
# response Message and one timer for EXCHANGE_LIFETIME (247 s): ~2.3 KB per request, 76 MB to 631 MB in
# a minute of load (coap-notes.md). The window that matters to a server is the one in which a client
# retransmits a CON request: its last retransmission leaves at most MAX_TRANSMIT_SPAN (45 s with the
# default parameters) after the first; DEDUP_JITTER covers those copies arriving later than the first
# did. Within that window every duplicate is still recognised and answered with the same bytes.
DEDUP_WINDOW = TransportTuning().MAX_TRANSMIT_SPAN
DEDUP_JITTER = 15.0
# A hard bound on remembered messages (~130 bytes each, so ~65 MB): past it, at sustained rates above
# DEDUP_CAPACITY / (DEDUP_WINDOW + DEDUP_JITTER) requests per second, the oldest quarter goes early.
DEDUP_CAPACITY = 500_000

_ABSENT = object()


class _Generation:
    __slots__ = ("peers", "size", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.peers: dict[Hashable, dict[int, bytes | None]] = {}
        self.size = 0


class DuplicateCache:
    """Recently received (remote, message id) pairs and the encoded reply to each; sans-IO.

    Entries are grouped in generations a quarter of the window long and dropped a generation at a
    time, so there is no timer per message, and within a generation each remote is stored once with
    a dict from message id to the reply bytes (``None`` until the reply is known). An entry stays at
    least ``window`` seconds, unless the cache holds ``capacity`` entries, which it never exceeds.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = max(1, capacity)
        self._span = window / 4
        self._generations: deque[_Generation] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def lookup(self, remote: Hashable, mid: int, now: float) -> object:
        """The stored reply (bytes), ``None`` if the message was seen but not answered yet, or ``_ABSENT``."""
        self._expire(now)
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                return peer[mid]
        return _ABSENT

    def add(self, remote: Hashable, mid: int, now: float) -> None:
        """Remember a new message (the caller has checked it is absent)."""
        self._expire(now)
        self._insert(remote, mid, now)

    def seen(self, remote: Hashable, mid: int, now: float) -> object:
        """``lookup``, and ``add`` if absent (then ``_ABSENT`` is returned), with one expiry pass: what
        every received message asks."""
        self._expire(now)
        generations = self._generations
        for generation in reversed(generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                return peer[mid]
        self._insert(remote, mid, now)
        return _ABSENT

    def _insert(self, remote: Hashable, mid: int, now: float) -> None:
        """Put ``mid`` in the newest generation (a new one when it is old or the cache is full, dropping
        the oldest generations past the capacity), unless that generation holds it already."""
        generations = self._generations
        if not generations or now - generations[-1].started >= self._span or self._size >= self.capacity:
            generations.append(_Generation(now))
        while self._size >= self.capacity and len(generations) > 1:
            self._size -= generations.popleft().size
        current = generations[-1]
        peer = current.peers.get(remote)
        if peer is None:
            peer = current.peers[remote] = {}
        if mid not in peer:
            peer[mid] = None
            current.size += 1
            self._size += 1

    def reply_to_pending(self, remote: Hashable, mid: int, reply: bytes) -> None:
        """``set_reply`` if the message is remembered without a reply (``expects_reply``), in one pass."""
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                if peer[mid] is None:
                    peer[mid] = reply
                return

    def expects_reply(self, remote: Hashable, mid: int) -> bool:
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                return peer[mid] is None
        return False

    def set_reply(self, remote: Hashable, mid: int, reply: bytes) -> None:
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                peer[mid] = reply
                return

    def _expire(self, now: float) -> None:
        generations = self._generations
        # Every entry of a generation is at least `window` old once its last possible entry is.
        while generations and generations[0].started + self._span + self.window <= now:
            self._size -= generations.popleft().size


class DuplicateDetector:
    """Stands in for aiocoap's deduplication in one message manager, keeping its semantics:
    a duplicate CON is answered with the stored reply (or ignored until there is one), any other
    duplicate is ignored, and a duplicate is never rendered twice. The CoAP fast path asks the same
    detector (``duplicate`` and ``remember_reply`` on plain values), so both paths share one cache."""

    def __init__(self, manager: Any, cache: DuplicateCache) -> None:
        self.manager = manager
        self.cache = cache

    def duplicate(
        self, remote: Hashable, mid: int, confirmable: bool, resend: Callable[[bytes], None]
    ) -> bool:
        """True if (remote, mid) was seen (``resend`` then got the stored reply if it is a CON and one is
        known); otherwise the message is remembered and False returned."""
        stored = self.cache.seen(remote, mid, self.manager.loop.time())
        if stored is _ABSENT:
            return False
        if confirmable and isinstance(stored, bytes):
            resend(stored)
        return True

    def remember_reply(self, remote: Hashable, mid: int, reply: bytes) -> None:
        """Store the encoded reply to a remembered message (a piggybacked response or an empty ACK)."""
        self.cache.reply_to_pending(remote, mid, reply)

    def deduplicate(self, message: aiocoap.Message) -> bool:
        def resend(stored: bytes) -> None:
            reply = aiocoap.Message.decode(stored, message.remote.as_response_address())
            reply.direction = Direction.OUTGOING  # the stored reply goes out again, byte for byte
            self.manager._send_via_transport(reply)

        return self.duplicate(message.remote, message.mid, message.mtype is Type.CON, resend)

    def store_response(self, message: aiocoap.Message) -> None:
        if self.cache.expects_reply(message.remote, message.mid):  # encoded only if it is kept
            self.cache.set_reply(message.remote, message.mid, message.encode())


class _NotificationResets:
    """Ends an observation when its client rejects a NON notification with an RST (RFC 7641 section
    3.6). aiocoap matches an RST only against CON exchanges, so a client that forgot an observation went
    on receiving NON notifications until the next CON failed. The message manager's first send of each
    NON notification is remembered here with the callback that ends its stream; the same hook style as
    the duplicate cache, on the manager instance. Bounded by a ``BoundedExpiringMap``."""

    def __init__(self, manager: Any, limits: CoapLimits) -> None:
        self.manager = manager
        self.sent: BoundedExpiringMap[tuple[Hashable, int], Callable[[], None]] = BoundedExpiringMap(
            # An RST answers a notification within a round trip; MAX_TRANSMIT_WAIT is ample.
            TransportTuning().MAX_TRANSMIT_WAIT,
            limits.max_observers,
            manager.loop.time,
        )
        self._send_initially = manager._send_initially
        self._remove_exchange = manager._remove_exchange
        manager._send_initially = self.send_initially
        manager._remove_exchange = self.remove_exchange

    def send_initially(self, message: aiocoap.Message, messageerror_monitor: Any = None) -> None:
        self._send_initially(message, messageerror_monitor)
        if message.mtype is Type.NON and messageerror_monitor is not None and message.opt.observe is not None:
            self.sent[(message.remote, message.mid)] = messageerror_monitor

    def remove_exchange(self, message: aiocoap.Message) -> None:
        key = (message.remote, message.mid)
        if message.mtype is Type.RST and key not in self.manager._active_exchanges:
            try:
                end_observation = self.sent[key]
            except KeyError:
                pass
            else:
                end_observation()
                return
        self._remove_exchange(message)


def install_notification_resets(context: aiocoap.Context, limits: CoapLimits) -> None:
    for interface in context.request_interfaces:
        manager: Any = getattr(interface, "token_interface", None)
        if hasattr(manager, "_remove_exchange") and hasattr(manager, "_send_initially"):
            _NotificationResets(manager, limits)


def install_duplicate_cache(context: aiocoap.Context) -> list[DuplicateDetector]:
    """Give every message manager of the context a bounded DuplicateCache (before it receives)."""
    detectors = []
    for interface in context.request_interfaces:
        manager: Any = getattr(interface, "token_interface", None)
        if not hasattr(manager, "_deduplicate_message"):
            continue  # not a message-managed transport (TCP, WebSocket): no message ids
        detector = DuplicateDetector(manager, DuplicateCache(DEDUP_WINDOW + DEDUP_JITTER, DEDUP_CAPACITY))
        manager._deduplicate_message = detector.deduplicate
        manager._store_response_for_duplicates = detector.store_response
        detectors.append(detector)
    return detectors


class FastReceiver(Protocol):
    """What the screen hands a passed datagram to when a fast path serves the transport."""

    manager: Any

    def received(self, address: Any, datagram: bytes, message: CoapMessage) -> None: ...

    def received_known(self, address: Any, datagram: bytes) -> bool: ...


class _DatagramScreen:
    """Runs ``coap_screen.screen`` on each datagram of one UDP transport before aiocoap parses it.

    The hook is the transport's own receive method on the instance (as ``install_duplicate_cache``
    hooks the message manager): ``simplesocketserver`` calls ``_received_datagram(address, data)`` on
    its message interface, ``udp6`` calls ``datagram_msg_received(data, ancdata, flags, address)``.
    A reply built by the screen goes back from the address the datagram arrived at.
    """

    def __init__(self, limited_log: RateLimitedLog, fast_path: FastReceiver | None = None) -> None:
        self._limited_log = limited_log
        self._fast_path = fast_path
        self._mid = int.from_bytes(os.urandom(2), "big")

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def passed(self, data: bytes, peer: object, reply: Callable[[bytes], None]) -> CoapMessage | None:
        """The parsed datagram if it goes on (to the fast path or aiocoap); None if it was answered or
        dropped here."""
        verdict = screen(data, self._next_mid)
        if verdict.action is Action.PASS:
            return verdict.message
        self._limited_log.warning(verdict.reason, "coap: %s from %s", verdict.reason, peer)
        if verdict.action is Action.REPLY:
            reply(verdict.reply)
        return None

    def install(self, message_interface: Any) -> bool:
        received = getattr(message_interface, "_received_datagram", None)
        fast_path = self._fast_path
        if received is not None and fast_path is not None:  # simplesocketserver, with the fast path

            def received_datagram(address: Any, data: bytes) -> None:
                # A request whose bytes after the token the fast path served before passed this screen
                # then, and would again: the verdict depends on those bytes and the header alone.
                if fast_path.received_known(address, data):
                    return
                message = self.passed(data, address.address, address.send)
                if message is not None:
                    fast_path.received(address, data, message)

            message_interface._received_datagram = received_datagram
            return True
        if received is not None:  # simplesocketserver (GenericMessageInterface)

            def received_datagram(address: Any, data: bytes) -> None:
                if self.passed(data, address.address, address.send) is not None:
                    received(address, data)

            message_interface._received_datagram = received_datagram
            return True
        msg_received = getattr(message_interface, "datagram_msg_received", None)
        if msg_received is not None:  # udp6

            def datagram_msg_received(data: bytes, ancdata: Any, flags: int, address: Any) -> Any:
                pktinfo = [
                    (level, kind, value)
                    for level, kind, value in ancdata
                    if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
                ]

                def reply(payload: bytes) -> None:
                    message_interface.transport.sendmsg(payload, pktinfo, 0, address)

                if self.passed(data, address, reply) is not None:
                    return msg_received(data, ancdata, flags, address)
                return None

            message_interface.datagram_msg_received = datagram_msg_received
            return True
        return False


def install_datagram_screens(
    context: aiocoap.Context, limited_log: RateLimitedLog, fast_paths: Sequence[FastReceiver] = ()
) -> int:
    """Screen the datagrams of every UDP transport of the context; returns how many were hooked.

    The datagrams a transport's fast path (one whose ``manager`` is the transport's) may serve go to it,
    parsed, after the screen; it hands the rest to aiocoap."""
    hooked = 0
    for interface in context.request_interfaces:
        manager: Any = getattr(interface, "token_interface", None)
        message_interface = getattr(manager, "message_interface", None)
        fast_path = next((f for f in fast_paths if f.manager is manager), None)
        if message_interface is not None and _DatagramScreen(limited_log, fast_path).install(
            message_interface
        ):
            hooked += 1
    return hooked
