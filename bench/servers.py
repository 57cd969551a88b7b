"""Baseline servers, each run as ``python -m bench.servers KIND``, announcing like ``tap-emulator serve``.

- ``aiocoap``: a bare aiocoap server, one resource at ``/1025/0/0`` in a ``Site``, on aiocoap's default
  UDP transport (``udp6``), the way an aiocoap user would write it, answering the emulator's 9 bytes;
- ``echo``: a plain asyncio TCP server that answers every Lc-framed Tap request with one fixed Tap
  response, i.e. the same bytes the emulator would send, with no work in between;
- ``fastapi``: a bare FastAPI app on uvicorn (h11, no access log, like the emulator's HTTP face) with
  one GET route per ``--route PATH=FILE`` answering that file's JSON bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

# The same guard as the emulator: with SO_REUSEPORT two port-0 servers can share a port (coap-notes.md).
os.environ["AIOCOAP_REUSE_PORT"] = "0"

# The emulator's answer to GET /1025/0/0 is this name: the peers serve a payload of the same size.
BARE_PAYLOAD = b"anonymous"
# getName answered CONTENT (0x45) with a 9-byte name, then 90 00: what the emulator sends.
ECHO_RESPONSE = b"\x45" + b"anonymous" + b"\x90\x00"


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_bare_aiocoap() -> None:
    import aiocoap
    import aiocoap.resource

    class One(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=BARE_PAYLOAD)

    site = aiocoap.resource.Site()
    site.add_resource(("1025", "0", "0"), One())
    context = await aiocoap.Context.create_server_context(
        site, bind=("::ffff:127.0.0.1", 0), transports=["udp6"]
    )
    port = _udp_port(context)
    print(f"listening coap udp 127.0.0.1:{port}", flush=True)
    try:
        await _wait_for_signal()
    finally:
        await context.shutdown()


def _udp_port(context: object) -> int:
    for interface in context.request_interfaces:  # type: ignore[attr-defined]
        message_interface = interface.token_interface.message_interface
        transport = getattr(message_interface, "transport", None) or message_interface._transport
        return int(transport.get_extra_info("socket").getsockname()[1])
    raise RuntimeError("no UDP transport")


def frame_length(buffer: bytes | bytearray, start: int) -> int | None:
    """Length of the Tap request starting at ``start`` (5-byte header + Lc), None if incomplete."""
    if len(buffer) - start < 5:
        return None
    return 5 + buffer[start + 4]


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        start = 0
        answers = 0
        while (length := frame_length(self.buffer, start)) is not None and start + length <= len(self.buffer):
            start += length
            answers += 1
        del self.buffer[:start]
        if answers and self.transport is not None:
            self.transport.write(ECHO_RESPONSE * answers)


async def serve_echo() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening tcp 127.0.0.1:{port}", flush=True)
    try:
        await _wait_for_signal()
    finally:
        server.close()
        await server.wait_closed()


async def serve_bare_fastapi(routes: dict[str, bytes]) -> None:
    import socket

    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()
    for path, body in routes.items():

        async def answer(body: bytes = body) -> Response:
            return Response(content=body, media_type="application/json")

        app.add_api_route(path, answer, methods=["GET"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http="h11", ws="none")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    print(f"listening http 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await serving  # uvicorn handles SIGINT and SIGTERM itself here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["aiocoap", "echo", "fastapi"])
    parser.add_argument("--route", action="append", default=[], metavar="PATH=FILE", help="fastapi only")
    args = parser.parse_args(argv)
    if args.kind == "fastapi":
        routes = {}
        for route in args.route:
            path, _, file = route.partition("=")
            with open(file, "rb") as body:
                routes[path] = body.read()
        asyncio.run(serve_bare_fastapi(routes))
        return 0
    runner = serve_bare_aiocoap if args.kind == "aiocoap" else serve_echo
    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    sys.exit(main())
