"""One device's side of the MQTT relay: relay messages in, relay messages out, through Tap sessions.

Why it exists apart from the broker connection (`client.py`): this part holds no socket and no task, so
a fleet pays for a device only when a message reaches it, and tests drive it without a broker.

The relay has no connections, so a "client" is what a message names: its sender id (the SDK sends 1;
two apps on one device with the same sender id share one session, as they share the ANSWER topic). Each
sender gets its own `TapSession` of the device's `TapFace` (the one TCP and WebSocket use), so login,
SCRAM, the encrypted channel, rights and login limits are the same on every face. Bounds, as for TCP
connections: at most ``max_sessions`` senders per device (a new sender displaces the least recently
used one), and a sender silent for ``idle_seconds`` loses its session. Frames of one sender are served
one at a time, in arrival order; the answer echoes the request's sender and reference ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tap_emulator.codec.mqtt_relay import RelayError, RelayMessage, decode, encode
from tap_emulator.faces.tap.session import TapFace, TapSession
from tap_emulator.logsafety import RateLimitedLog

__all__ = ["DEFAULT_IDLE_SECONDS", "DEFAULT_MAX_SESSIONS", "RelayEndpoint"]

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

DEFAULT_MAX_SESSIONS: Final = 32  # as TCP's connections per peer: the broker is the only peer
DEFAULT_IDLE_SECONDS: Final = 600.0  # as TCP's idle timeout


@dataclass(slots=True)
class _Sender:
    session: TapSession
    lock: asyncio.Lock
    last_seen: float
    busy: int = 0  # frames being served or waiting: such a sender is not displaced


class RelayEndpoint:
    """The sessions of one device's relay senders; `handle` turns a published payload into an answer."""

    def __init__(
        self,
        face: TapFace,
        name: str,
        *,
        clock: Callable[[], float],
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        if max_sessions < 1 or idle_seconds <= 0:
            raise ValueError("max sessions must be at least 1 and the idle time positive")
        self.face = face
        self.name = name
        self.clock = clock
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._senders: OrderedDict[int, _Sender] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._senders)

    async def handle(self, payload: bytes) -> bytes | None:
        """The answer to publish for ``payload``, or None for a payload that is not a relay message
        (which has no ids to answer to: dropped with a rate-limited debug line)."""
        try:
            message = decode(payload)
        except RelayError as exc:
            _limited.debug(("relay refused", self.name), "%s: relay message refused: %s", self.name, exc)
            return None
        sender = self._sender(message.sender_id)
        sender.busy += 1
        try:
            async with sender.lock:
                answer = await sender.session.handle_frame(message.frame)
                sender.last_seen = self.clock()
        finally:
            sender.busy -= 1
        return encode(RelayMessage(message.sender_id, message.reference_id, answer))

    def close(self) -> None:
        """Every session ends (the face stops, or the device reboots)."""
        for sender in self._senders.values():
            sender.session.close()
        self._senders.clear()

    def _sender(self, sender_id: int) -> _Sender:
        now = self.clock()
        self._expire(now)
        sender = self._senders.get(sender_id)
        if sender is not None:
            self._senders.move_to_end(sender_id)
            sender.last_seen = now
            return sender
        if len(self._senders) >= self.max_sessions:
            self._displace()
        session = self.face.open_session(
            f"mqtt {self.name} sender {sender_id}",
            f"mqtt:{sender_id}",
            disconnect=lambda: self._forget(sender_id, session),
        )
        sender = _Sender(session, asyncio.Lock(), now)
        self._senders[sender_id] = sender
        return sender

    def _forget(self, sender_id: int, session: TapSession) -> None:
        """The face ended ``session`` (a reboot, a factory reset): the sender's next frame opens a new one."""
        sender = self._senders.get(sender_id)
        if sender is not None and sender.session is session:
            del self._senders[sender_id]

    def _expire(self, now: float) -> None:
        stale = [
            sid for sid, s in self._senders.items() if not s.busy and now - s.last_seen > self.idle_seconds
        ]
        for sender_id in stale:
            self._senders.pop(sender_id).session.close()

    def _displace(self) -> None:
        for sender_id, sender in self._senders.items():
            if not sender.busy:
                del self._senders[sender_id]
                sender.session.close()
                _limited.debug(
                    ("relay displaced", self.name),
                    "%s: %d relay senders: the least recently used one loses its session",
                    self.name,
                    self.max_sessions,
                )
                return
        # Every sender has a frame in flight: the newcomer is admitted over the cap until they finish.
