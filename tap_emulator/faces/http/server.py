"""The HTTP server: uvicorn serving one ASGI app as a task of the device's own event loop.

One server carries every HTTP face (native API, seed clouds, later the control API), so it is built
here once. uvicorn runs through ``uvicorn.Server.serve`` on a socket bound beforehand: a busy port is
an OSError naming the address before anything is announced, and port 0 reports the port it got. The
process's signals stay with the CLI (uvicorn would install its own), and uvicorn's access log is off:
it would print query strings, which are client input. Request bodies are bounded by ``BodyLimit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tap_emulator.faces.listening import bind_tcp

__all__ = [
    "BODY_TOO_LARGE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "BodyLimit",
    "BodyTooLarge",
    "HttpServer",
    "start_http_server",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024  # bytes; the largest seed request (a share batch) is far below this
BODY_TOO_LARGE = "tap_emulator.body_too_large"  # scope key set when a body went past the limit
DEFAULT_MAX_CONNECTIONS = 256  # connections plus in-flight requests; uvicorn answers 503 past it
_GRACEFUL_SHUTDOWN = 3.0  # seconds in-flight requests get once a stop is asked for
_KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection is kept
_MAX_HEADER_BYTES = 16 * 1024
_BACKLOG = 128


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body goes past the limit; the route turns it into a 4xx."""


class BodyLimit:
    """ASGI middleware: a request body may not exceed ``max_body`` bytes, declared or streamed.

    A declared ``Content-Length`` over the limit is flagged in the scope (``BODY_TOO_LARGE``) so the
    face's route answers in its own error vocabulary without reading a byte; a chunked body that grows
    past the limit makes ``receive`` raise ``BodyTooLarge`` and is flagged the same way.
    """

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            scope[BODY_TOO_LARGE] = True
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if scope.get(BODY_TOO_LARGE):
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    scope[BODY_TOO_LARGE] = True
                    raise BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: SIGINT and SIGTERM belong to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """A running HTTP endpoint: the address it is bound to, and ``close`` to stop it."""

    def __init__(self, server: _EmbeddedServer, task: asyncio.Task[None], address: tuple[str, int]) -> None:
        self._server = server
        self._task = task
        self.address = address

    def __repr__(self) -> str:
        return f"HttpServer({self.address[0]}:{self.address[1]})"

    async def close(self) -> None:
        """Stop accepting, give in-flight requests a short grace period, then return."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), _GRACEFUL_SHUTDOWN + 2.0)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def start_http_server(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> HttpServer:
    """Serve ``app`` on host:port in the running loop; raises OSError (EADDRINUSE ...) naming the address."""
    sockets = bind_tcp("HTTP", host, port, backlog=_BACKLOG)
    for sock in sockets:
        sock.setblocking(False)
    bound: tuple[Any, ...] = sockets[0].getsockname()
    config = uvicorn.Config(
        BodyLimit(app, max_body),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        limit_concurrency=max_connections,
        timeout_keep_alive=int(_KEEP_ALIVE),
        timeout_graceful_shutdown=int(_GRACEFUL_SHUTDOWN),
        h11_max_incomplete_event_size=_MAX_HEADER_BYTES,
        http="h11",
        ws="none",
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=sockets), name=f"http {host}:{bound[1]}")
    while not server.started:
        if task.done():
            for sock in sockets:
                sock.close()
            task.result()  # raises what stopped it
            raise OSError(f"cannot start HTTP on {host}:{port}")
        await asyncio.sleep(0.005)
    return HttpServer(server, task, (host, int(bound[1])))
