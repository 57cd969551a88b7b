"""Bounds on the Tap face's connections, shared by its TCP and WebSocket transports.

Why it exists: an idle connection costs a file descriptor, and 1,100 of them under a 1,024 file limit
made every face time out. Here live the caps (per face and per peer address), the deadlines a
connection must meet, TCP keep-alive, the fit of the caps to the process's file limit, and the accept
loop itself.

Why our own accept loop instead of ``loop.create_server``: on EMFILE, asyncio 3.11's accept handler logs
the error with a traceback and schedules a retry, then goes on calling ``accept()`` for the rest of its
backlog (CPython gh-151615), so every retry schedules up to 100 more: the log grew by 100 MB in 50 s
and the loop did little else. A logging filter would hide the lines and keep the retry storm. `Listener`
instead backs off (10 ms doubling to 1 s), writes one rate-limited warning per episode, closes the
oldest connection that never completed a frame to free a descriptor, and when there is none, sheds the
waiting connection through a reserve descriptor, so clients get a prompt close instead of a hang.

Eviction is also the answer at the per-face cap: a new connection displaces the oldest one that has not
yet completed a frame (the slowloris kind), and is refused only when every slot holds a connection that
has. A flood of idle connections therefore cannot keep a real client (which sends its first frame at
once) out, and the per-peer cap keeps one address from taking every slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from tap_emulator.logsafety import RateLimitedLog

__all__ = [
    "ConnectionGate",
    "ConnectionLimits",
    "Listener",
    "Tracked",
    "fit_to_file_limit",
    "set_keepalive",
]

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

DEFAULT_MAX_CONNECTIONS = 256
# Descriptors kept for everything else the process opens: state and store files (with their WAL and
# shared-memory files), the derivation worker's pipes, CoAP sockets, the event loop, stdio.
RESERVED_DESCRIPTORS = 64
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors accept(2) reports for the one connection it took (Linux passes pending network errors on):
# retried at once, as for EAGAIN.
_THAT_CONNECTION_ONLY = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
    }
)
_BACKOFF_START = 0.01
_BACKOFF_MAX = 1.0
_EVICT_WHEN_OUT = 16  # connections without a frame closed at once when accept() runs out of descriptors
_KEEPALIVE_PROBES = 3
_KEEPALIVE_INTERVAL_MAX = 10


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one Tap face (TCP or WebSocket) allows its connections; times in seconds, 0 = no limit."""

    # Open connections per face; None: DEFAULT_MAX_CONNECTIONS, lowered to fit the file limit.
    max_connections: int | None = None
    max_per_peer: int = 32  # open connections per face from one peer address
    # A connection must complete its first frame (WebSocket: its handshake, then its first message)
    # this long after it opens, and any later frame this long after its first byte arrived.
    frame_timeout: float = 10.0
    idle_timeout: float = 600.0  # no frame for this long closes a connection
    keepalive: float = 60.0  # TCP keep-alive: idle time before the first probe (dead peer gone in ~90 s)

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max connections must be at least 1")
        if self.max_per_peer < 1:
            raise ValueError("max connections per peer must be at least 1")
        if self.frame_timeout <= 0:
            raise ValueError("frame timeout must be positive")
        if self.idle_timeout < 0 or self.keepalive < 0:
            raise ValueError("idle timeout and keep-alive must be 0 (off) or positive")


def fit_to_file_limit(
    limits: ConnectionLimits, faces: int, file_limit: int | None = None
) -> tuple[ConnectionLimits, str | None]:
    """Resolve ``max_connections`` for ``faces`` faces sharing the soft RLIMIT_NOFILE.

    The default cap is lowered so the faces together leave RESERVED_DESCRIPTORS free; a cap the user
    chose is kept, with a warning when it cannot be met (the accept loop then backs off and sheds).
    Returns the limits to use and that warning, if any.
    """
    if file_limit is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        file_limit = None if soft == resource.RLIM_INFINITY else soft
    budget = None if file_limit is None else max(1, (file_limit - RESERVED_DESCRIPTORS) // max(faces, 1))
    if limits.max_connections is not None:
        if budget is not None and limits.max_connections > budget:
            return limits, (
                f"--max-connections {limits.max_connections} per face exceeds what the file limit "
                f"({file_limit}) leaves for {faces} face(s), about {budget}; past it, new connections "
                "displace idle ones or are shed"
            )
        return limits, None
    cap = DEFAULT_MAX_CONNECTIONS if budget is None else min(DEFAULT_MAX_CONNECTIONS, budget)
    return replace(limits, max_connections=cap), None


def set_keepalive(sock: socket.socket, idle: float) -> None:
    """TCP keep-alive on an accepted socket: first probe after ``idle`` s, then 3 probes (0: off)."""
    with contextlib.suppress(OSError):
        if idle <= 0:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        seconds = max(1, int(idle))
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS has TCP_KEEPALIVE instead
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
        if hasattr(socket, "TCP_KEEPINTVL"):
            interval = min(_KEEPALIVE_INTERVAL_MAX, seconds)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_PROBES)


class Tracked:
    """One admitted connection: its peer address, whether it completed a frame, its handler task.

    The transport sets ``task`` once the connection has one; until then it cannot be displaced.
    """

    __slots__ = ("framed", "peer", "task")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.framed = False
        self.task: asyncio.Task[None] | None = None


class ConnectionGate:
    """Admits connections of one face under its caps; evicts the oldest connection still without a frame."""

    def __init__(self, kind: str, limits: ConnectionLimits) -> None:
        assert limits.max_connections is not None, "resolve the cap with fit_to_file_limit first"
        self.kind = kind
        self.max_connections = limits.max_connections
        self.max_per_peer = limits.max_per_peer
        self._open: dict[Tracked, None] = {}  # in admission order
        self._unframed: dict[Tracked, None] = {}  # in admission order: the first is the oldest
        self._per_peer: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, peer: str) -> Tracked | None:
        """A slot for a new connection from ``peer``, or None (refused, one rate-limited line)."""
        if self._per_peer[peer] >= self.max_per_peer:
            _limited.warning(
                ("peer cap", self.kind),
                "%s: refusing connections from %s: %d open from that address (max per peer)",
                self.kind,
                peer,
                self.max_per_peer,
            )
            return None
        if len(self._open) >= self.max_connections and not self.evict_oldest_unframed():
            _limited.warning(
                ("face cap", self.kind),
                "%s: refusing a connection from %s: %d open, each has completed a frame (max connections)",
                self.kind,
                peer,
                self.max_connections,
            )
            return None
        tracked = Tracked(peer)
        self._open[tracked] = None
        self._unframed[tracked] = None
        self._per_peer[peer] += 1
        return tracked

    def framed(self, tracked: Tracked) -> None:
        """``tracked`` completed a frame: it is no longer displaced by newcomers."""
        if not tracked.framed:
            tracked.framed = True
            self._unframed.pop(tracked, None)

    def release(self, tracked: Tracked) -> None:
        """The connection is gone (idempotent)."""
        if tracked in self._open:
            del self._open[tracked]
            self._unframed.pop(tracked, None)
            self._per_peer[tracked.peer] -= 1
            if self._per_peer[tracked.peer] <= 0:
                del self._per_peer[tracked.peer]

    def evict_oldest_unframed(self) -> bool:
        """Close the oldest connection that never completed a frame; False if there is none."""
        for tracked in self._unframed:
            if tracked.task is not None:
                tracked.task.cancel()  # its handler closes the socket on its way out
                self.release(tracked)
                return True
        return False


class Listener:
    """Accepts on bound listening sockets for one face and hands each admitted socket to ``serve``
    (which starts its handler and sets ``Tracked.task``).

    It has the small surface of `asyncio.Server` the websockets server relies on (``close``,
    ``wait_closed``, ``is_serving``, ``get_loop``, ``start_serving``, ``sockets``).
    """

    def __init__(
        self,
        kind: str,
        sockets: list[socket.socket],
        gate: ConnectionGate,
        serve: Callable[[socket.socket, Tracked], None],
    ) -> None:
        self.kind = kind
        self._sockets = sockets
        self._gate = gate
        self._serve = serve
        self._loop = asyncio.get_running_loop()
        self._tasks: list[asyncio.Task[None]] = []
        self._serving = False
        self._reserve: int | None = None
        self._shed = 0
        self._starved = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving:
            return
        self._serving = True
        self._reserve = _open_reserve()
        for sock in self._sockets:
            sock.setblocking(False)
            self._tasks.append(self._loop.create_task(self._accept(sock), name=f"tap {self.kind} accept"))

    def close(self) -> None:
        """Stop accepting and close the listening sockets (open connections are their handlers' job)."""
        self._serving = False
        for task in self._tasks:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _accept(self, listening: socket.socket) -> None:
        backoff = _BACKOFF_START
        while self._serving:
            try:
                conn, address = await self._loop.sock_accept(listening)
            except OSError as exc:
                if not self.is_serving():  # closed under us
                    return
                if exc.errno in _THAT_CONNECTION_ONLY:
                    continue  # the waiting connection failed (reset before accept ...): take the next
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    _limited.warning(("accept", self.kind), "%s: accept failed: %s", self.kind, exc.strerror)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                elif self._out_of_descriptors(exc, listening):
                    await asyncio.sleep(_BACKOFF_START)  # the evicted connection's close runs meanwhile
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_START
            if self._starved:
                self._starved = False
                if _limited.info(
                    ("accepting again", self.kind),
                    "%s: accepting again (%d waiting connections shed meanwhile)",
                    self.kind,
                    self._shed,
                ):
                    self._shed = 0
            peer = address[0] if isinstance(address, tuple) else str(address)
            tracked = self._gate.admit(peer)
            if tracked is None:
                conn.close()
                continue
            self._serve(conn, tracked)
            # accept() on a full queue completes without yielding: let the new handlers (and the rest
            # of the device) run between two accepts, so a burst cannot starve them.
            await asyncio.sleep(0)

    def _out_of_descriptors(self, exc: OSError, listening: socket.socket) -> bool:
        """One warning per episode; True if an eviction freed a descriptor, else shed the waiting one."""
        if not self._starved:
            self._starved = True
            _limited.warning(
                ("out of descriptors", self.kind),
                "%s: out of file descriptors (%s): closing idle connections, backing off",
                self.kind,
                exc.strerror,
            )
        # A batch, so a burst of newcomers finds room without an EMFILE round each.
        evicted = sum(self._gate.evict_oldest_unframed() for _ in range(_EVICT_WHEN_OUT))
        if evicted:
            return True
        if self._reserve is None:
            self._reserve = _open_reserve()
            return False
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _ = listening.accept()
        except OSError:
            pass
        else:
            conn.close()
            self._shed += 1
        self._reserve = _open_reserve()
        return False


def _open_reserve() -> int | None:
    """A spare descriptor, closed when the process runs out so one waiting connection can be shed."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
