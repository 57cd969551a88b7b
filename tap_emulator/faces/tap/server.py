"""Transports of the Tap face: TCP (Lc-framed APDUs, as a Wi-Fi Tap on port 2000) and WebSocket.

Thin on purpose: each connection gets a `TapSession` and this module only moves bytes. TCP splits the
stream with `ApduStreamDecoder` and writes each response with one write call (TCP_NODELAY, so it
leaves in one segment: the SDK has no delimiter and reads one answer per segment). A stream whose
framing is lost is closed. WebSocket (the ``websockets`` library) carries one binary message per frame;
a text message closes the connection (1003), as the Tap face only speaks binary frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tap_emulator.codec.apdu import ApduStreamDecoder, FrameError
from tap_emulator.faces.tap.session import TapFace

__all__ = ["TapServer", "start_tcp_server", "start_ws_server"]

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0
_WS_HANDSHAKE_TIMEOUT = 3.0
_READ_SIZE = 4096
# The longest frame is 5 + 255 bytes; a WebSocket message much larger than that is not a Tap frame.
_WS_MAX_MESSAGE = 1024
_WS_UNSUPPORTED_DATA = 1003


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


def _listen_error(kind: str, host: str, port: int, exc: OSError) -> OSError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OSError(exc.errno, f"cannot listen for Tap {kind} on {host}:{port}: {reason}")


async def start_tcp_server(face: TapFace, host: str, port: int) -> TapServer:
    """Listen for Tap frames over TCP; raises OSError (EADDRINUSE ...) naming the address."""
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[None]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
            task.add_done_callback(handlers.discard)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = face.open_session(f"tcp {_peer_name(writer.get_extra_info('peername'))}")
        decoder = ApduStreamDecoder()
        try:
            while data := await reader.read(_READ_SIZE):
                try:
                    frames = decoder.feed(data)
                except FrameError as exc:
                    log.debug("%s: closing, framing lost: %s", session.peer, exc)
                    break
                for frame in frames:
                    writer.write(await session.handle_frame(frame))
                    await writer.drain()
        except OSError:
            pass  # reset by the peer
        except Exception:
            log.exception("%s: connection failed", session.peer)
        finally:
            session.close()
            writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(connection, host, port)
    except OSError as exc:
        raise _listen_error("TCP", host, port, exc) from None
    bound = server.sockets[0].getsockname()

    async def close() -> None:
        server.close()
        for writer in list(writers):
            writer.close()
        # Let each connection handler see its end of stream and finish: a handler still pending when the
        # loop shuts down would be cancelled, which asyncio 3.11 reports as an error with a traceback.
        if handlers:
            await asyncio.wait(list(handlers), timeout=_CLOSE_TIMEOUT)
        await server.wait_closed()

    return TapServer("tcp", (host, int(bound[1])), close)


async def start_ws_server(face: TapFace, host: str, port: int) -> TapServer:
    """Listen for Tap frames over WebSocket (any path); raises OSError naming the address."""

    async def connection(conn: ServerConnection) -> None:
        session = face.open_session(f"ws {_peer_name(conn.remote_address)}")
        try:
            async for message in conn:
                if isinstance(message, str):
                    await conn.close(_WS_UNSUPPORTED_DATA, "Tap frames are binary messages")
                    break
                await conn.send(await session.handle_frame(bytes(message)))
        except ConnectionClosed:
            pass
        finally:
            session.close()

    try:
        server: Server = await serve(
            connection,
            host,
            port,
            max_size=_WS_MAX_MESSAGE,
            compression=None,
            logger=log,
            # A client on a Tap link opens and closes at once; a stalled peer must not hold a shutdown.
            open_timeout=_WS_HANDSHAKE_TIMEOUT,
            close_timeout=_WS_HANDSHAKE_TIMEOUT,
        )
    except OSError as exc:
        raise _listen_error("WebSocket", host, port, exc) from None
    bound = next(iter(server.sockets)).getsockname()

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return TapServer("ws", (host, int(bound[1])), close)
