"""Transports of the Tap face: TCP (Lc-framed APDUs, as a Wi-Fi Tap on port 2000) and WebSocket.

Thin on purpose: each connection gets a `TapSession` and this module only moves bytes. TCP splits the
stream with `ApduStreamDecoder` and writes each response with one write call (TCP_NODELAY, so it
leaves in one segment: the SDK has no delimiter and reads one answer per segment). A stream whose
framing is lost is closed. WebSocket (the ``websockets`` library's connection, over our own accept
loop) carries one binary message per frame; a text message closes the connection (1003), as the Tap
face only speaks binary frames.

Both accept through `connections.Listener` and obey `ConnectionLimits`: caps per face and per peer,
a deadline to complete each frame (slowloris), an idle timeout, TCP keep-alive (WebSocket adds its
pings). The websockets library logs every frame's bytes at DEBUG, passwords included, so its logger
is held at WARNING whatever the verbosity.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import cast

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.server import ServerProtocol

from tap_emulator.codec.apdu import ApduStreamDecoder, FrameError
from tap_emulator.faces.listening import bind_tcp
from tap_emulator.faces.tap.connections import (
    ConnectionGate,
    ConnectionLimits,
    Listener,
    Tracked,
    fit_to_file_limit,
    set_keepalive,
)
from tap_emulator.faces.tap.session import TapFace
from tap_emulator.logsafety import RateLimitedLog

__all__ = ["WEBSOCKET_LOGGER", "TapServer", "start_tcp_server", "start_ws_server"]

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)
WEBSOCKET_LOGGER = "tap_emulator.faces.tap.websocket"
_ws_log = logging.getLogger(WEBSOCKET_LOGGER)
# Its DEBUG records are frame dumps (a login's password in hex) and its INFO one line per connection.
_ws_log.setLevel(logging.WARNING)

_CLOSE_TIMEOUT = 5.0
_WS_CLOSE_TIMEOUT = 3.0
# websockets' defaults, stated: a ping every 20 s, a peer silent for 20 s more is dropped.
_WS_PING_INTERVAL = 20.0
_WS_PING_TIMEOUT = 20.0
_WS_MAX_QUEUE = 4  # messages read ahead of the one being served; the SDK waits for each answer
_READ_SIZE = 4096
_TIMER_SLACK = 0.001  # asyncio may run a timer up to its clock resolution early
# A burst (a flood, a fleet reconnecting) waits in the kernel, costing no descriptor, instead of having
# its SYNs dropped, which would cost a real client a 1 s retransmission.
_BACKLOG = socket.SOMAXCONN
# The longest frame is 5 + 255 bytes; a WebSocket message much larger than that is not a Tap frame.
_WS_MAX_MESSAGE = 1024
_WS_UNSUPPORTED_DATA = 1003
_WS_POLICY_VIOLATION = 1008
_WS_SERVICE_RESTART = 1012


class TapServer:
    """A running Tap endpoint: the address it is bound to and how to stop it (connections included)."""

    def __init__(self, kind: str, address: tuple[str, int], closer: Callable[[], Awaitable[None]]) -> None:
        self.kind = kind
        self.address = address
        self._closer = closer

    def __repr__(self) -> str:
        return f"TapServer({self.kind} {self.address[0]}:{self.address[1]})"

    async def close(self) -> None:
        await self._closer()


def _peer_name(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _resolve(limits: ConnectionLimits) -> ConnectionLimits:
    return fit_to_file_limit(limits, 1)[0] if limits.max_connections is None else limits


def _tune(sock: socket.socket, limits: ConnectionLimits) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    set_keepalive(sock, limits.keepalive)


async def start_tcp_server(
    face: TapFace, host: str, port: int, limits: ConnectionLimits | None = None
) -> TapServer:
    """Listen for Tap frames over TCP; raises OSError (EADDRINUSE ...) naming the address."""
    limits = _resolve(limits or ConnectionLimits())
    loop = asyncio.get_running_loop()
    gate = ConnectionGate("tcp", limits)
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[None]] = set()

    async def connection(conn: socket.socket, tracked: Tracked) -> None:
        try:
            _tune(conn, limits)
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            return  # reset by the peer
        writers.add(writer)
        try:
            await _serve_tcp(face, gate, tracked, limits, reader, writer)
        finally:
            writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def done(conn: socket.socket, tracked: Tracked, task: asyncio.Task[None]) -> None:
        """The one place a TCP connection gives back its socket and its slot."""
        handlers.discard(task)
        conn.close()  # idempotent; needed when the handler was displaced before it ever ran
        gate.release(tracked)

    def serve(conn: socket.socket, tracked: Tracked) -> None:
        tracked.task = loop.create_task(connection(conn, tracked))
        handlers.add(tracked.task)
        tracked.task.add_done_callback(functools.partial(done, conn, tracked))

    listener = Listener("tcp", bind_tcp("Tap TCP", host, port, backlog=_BACKLOG), gate, serve)
    bound = listener.sockets[0].getsockname()
    await listener.start_serving()

    async def close() -> None:
        listener.close()
        for writer in list(writers):
            writer.close()
        # Let each connection handler see its end of stream and finish: a handler still pending when the
        # loop shuts down would be cancelled, which asyncio 3.11 reports as an error with a traceback.
        if handlers:
            _, pending = await asyncio.wait(list(handlers), timeout=_CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
        await listener.wait_closed()

    return TapServer("tcp", (host, int(bound[1])), close)


async def _serve_tcp(
    face: TapFace,
    gate: ConnectionGate,
    tracked: Tracked,
    limits: ConnectionLimits,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Read, split and answer frames until the peer closes, the framing is lost or a deadline passes.

    Deadlines: the first frame ``frame_timeout`` after the connection opened, a frame whose first bytes
    arrived ``frame_timeout`` after them, the next frame ``idle_timeout`` after the last one.
    """
    loop = asyncio.get_running_loop()
    # The limiter's peer is the admitted address, as for the connection caps (never the port).
    session = face.open_session(
        f"tcp {_peer_name(writer.get_extra_info('peername'))}", tracked.peer, disconnect=writer.close
    )
    decoder = ApduStreamDecoder()
    frame_started = last_frame = loop.time()

    def deadline() -> tuple[float | None, str]:
        if not tracked.framed or decoder.pending:
            return frame_started + limits.frame_timeout, "no complete frame"
        return (last_frame + limits.idle_timeout if limits.idle_timeout else None), "idle"

    watchdog = _Watchdog(loop, writer.transport, deadline)
    try:
        while data := await reader.read(_READ_SIZE):
            had_pending = decoder.pending
            try:
                frames = decoder.feed(data)
            except FrameError as exc:
                _limited.debug(("framing lost", "tcp"), "%s: closing, framing lost: %s", session.peer, exc)
                return
            now = loop.time()
            if frames:
                gate.framed(tracked)
                last_frame = now
                if decoder.pending:
                    frame_started = now
            elif tracked.framed and not had_pending:
                frame_started = now
            watchdog.arm()
            for frame in frames:
                answer = await session.answer(frame)
                for response in answer.frames:
                    writer.write(response)
                    await writer.drain()
                if answer.close:
                    return
    except OSError:
        pass  # reset by the peer
    except Exception:
        log.exception("%s: connection failed", session.peer)
    finally:
        watchdog.cancel()
        if watchdog.expired:
            reason = watchdog.expired
            _limited.debug(("timeout", "tcp", reason), "%s: closing, %s in time", session.peer, reason)
        session.close()


class _Watchdog:
    """Closes a transport once its deadline passes, with one lazy timer per connection.

    A timeout around each read would schedule and cancel a timer per frame (half the TCP face's
    throughput); here a read only moves the deadline, and the timer, when it fires early, re-arms itself
    for the deadline in force.
    """

    __slots__ = ("_deadline", "_loop", "_timer", "_transport", "expired")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.BaseTransport,
        deadline: Callable[[], tuple[float | None, str]],
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self.expired = ""  # the reason, once it fired
        self.arm()

    def arm(self) -> None:
        """After a read: start the timer if none runs (a running one re-reads the deadline when due)."""
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        when, _ = self._deadline()
        self._timer = None if when is None else self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        when, reason = self._deadline()
        if when is not None and self._loop.time() + _TIMER_SLACK >= when:
            self._timer = None
            self.expired = reason
            self._transport.close()  # the pending read sees the end of the stream
        else:
            self._schedule()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _TapWsConnection(ServerConnection):
    """A websockets server connection that knows its slot in the face's `ConnectionGate`."""

    def __init__(self, protocol: ServerProtocol, server: Server, tracked: Tracked) -> None:
        super().__init__(
            protocol,
            server,
            ping_interval=_WS_PING_INTERVAL,
            ping_timeout=_WS_PING_TIMEOUT,
            close_timeout=_WS_CLOSE_TIMEOUT,
            max_queue=_WS_MAX_QUEUE,
        )
        self.tracked = tracked


async def start_ws_server(
    face: TapFace, host: str, port: int, limits: ConnectionLimits | None = None
) -> TapServer:
    """Listen for Tap frames over WebSocket (any path); raises OSError naming the address.

    The websockets `Server` runs over our `Listener` in place of an `asyncio.Server`; this handler
    plays the part of the one ``serve()`` would install (handshake within ``frame_timeout``, pings,
    close), with our deadlines for each message.
    """
    limits = _resolve(limits or ConnectionLimits())
    loop = asyncio.get_running_loop()
    gate = ConnectionGate("ws", limits)
    handshaking: set[asyncio.Task[None]] = set()
    attaching: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak ones)

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, _TapWsConnection)
        task = asyncio.current_task()
        assert task is not None
        connection.tracked.task = task
        try:
            handshaking.add(task)
            try:
                async with asyncio.timeout(limits.frame_timeout):
                    await connection.handshake()
            finally:
                handshaking.discard(task)
            if connection.protocol.state is not State.OPEN:
                return
            server.all_connections.add(connection)
            connection.start_keepalive()
            try:
                await _serve_ws(face, gate, connection, limits)
                await connection.close()
            finally:  # cancelled (displaced, shutdown): the transport is aborted below, no close handshake
                server.all_connections.discard(connection)
        except Exception:
            pass  # the handshake timed out or failed; the transport is dropped below
        finally:
            if not connection.transport.is_closing():
                connection.transport.abort()
            server.handler_tasks.discard(task)
            gate.release(connection.tracked)

    async def attach(conn: socket.socket, tracked: Tracked) -> None:
        def connection() -> _TapWsConnection:
            return _TapWsConnection(ServerProtocol(max_size=_WS_MAX_MESSAGE, logger=_ws_log), server, tracked)

        try:
            _tune(conn, limits)
            await loop.connect_accepted_socket(connection, conn)
        except BaseException as exc:
            conn.close()
            gate.release(tracked)
            if not isinstance(exc, OSError):
                raise

    def serve(conn: socket.socket, tracked: Tracked) -> None:
        # Not displaceable yet: the handler the connection starts sets tracked.task.
        attaching.add(task := loop.create_task(attach(conn, tracked)))
        task.add_done_callback(attaching.discard)

    listener = Listener("ws", bind_tcp("Tap WebSocket", host, port, backlog=_BACKLOG), gate, serve)

    async def use_listener() -> asyncio.Server:
        return cast(asyncio.Server, listener)

    server = Server(use_listener, handler, _ws_log)
    await server
    bound = listener.sockets[0].getsockname()
    await listener.start_serving()

    async def close() -> None:
        server.close()  # stops the listener, closes open connections with 1001
        for task in list(handshaking):
            task.cancel()  # a handshake in progress would hold the shutdown for frame_timeout
        await server.wait_closed()

    return TapServer("ws", (host, int(bound[1])), close)


async def _serve_ws(
    face: TapFace, gate: ConnectionGate, connection: _TapWsConnection, limits: ConnectionLimits
) -> None:
    """Answer each binary message; the first within ``frame_timeout``, later ones within ``idle_timeout``."""
    tracked = connection.tracked
    # Keyed by address, not connection: reconnecting must not reset a peer's failed logins.
    closing: set[asyncio.Task[None]] = set()

    def disconnect() -> None:
        """The device drops the connection (a reboot): close code 1012, service restart."""
        task = asyncio.get_running_loop().create_task(connection.close(_WS_SERVICE_RESTART, "rebooting"))
        closing.add(task)
        task.add_done_callback(closing.discard)

    session = face.open_session(
        f"ws {_peer_name(connection.remote_address)}", tracked.peer, disconnect=disconnect
    )
    try:
        while True:
            timeout = limits.frame_timeout if not tracked.framed else (limits.idle_timeout or None)
            try:
                async with asyncio.timeout(timeout):
                    message = await connection.recv()
            except TimeoutError:
                reason = "idle" if tracked.framed else "no message"
                _limited.debug(("timeout", "ws", reason), "%s: closing, %s in time", session.peer, reason)
                await connection.close(_WS_POLICY_VIOLATION, f"{reason} in time")
                return
            if isinstance(message, str):
                await connection.close(_WS_UNSUPPORTED_DATA, "Tap frames are binary messages")
                return
            gate.framed(tracked)
            answer = await session.answer(bytes(message))
            for response in answer.frames:
                await connection.send(response)
            if answer.close:
                await connection.close()
                return
    except ConnectionClosed:
        pass
    except Exception:
        log.exception("%s: connection failed", session.peer)
    finally:
        session.close()
