"""Listening TCP sockets for the stream faces (Tap TCP, Tap WebSocket, HTTP), bound one way.

Each face binds its own sockets (rather than letting asyncio or uvicorn do it) so that a busy port is
an OSError naming the face and the address, port 0 reports the port it got, and every address a host
name resolves to listens on the same port.
"""

from __future__ import annotations

import os
import socket

__all__ = ["bind_tcp"]


def _listen_error(label: str, host: str, port: int, exc: OSError) -> OSError:
    if isinstance(exc, socket.gaierror):
        reason = exc.strerror or str(exc)
    else:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OSError(exc.errno, f"cannot listen for {label} on {host}:{port}: {reason}")


def bind_tcp(label: str, host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (port 0: one free port for all).

    The sockets are made with the resolver's protocol (TCP), which asyncio needs to set TCP_NODELAY on
    the connections it accepts. Raises OSError "cannot listen for {label} on {host}:{port}: ...".
    """
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, type_, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _listen_error(label, host, port, exc) from None
    return sockets
