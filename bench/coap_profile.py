"""``python -m bench.coap_profile [PATH] [--requests N] [--fast-path off] [--profile]``: the CoAP face's
own cost per request, sockets aside.

The ratio benchmarks (``bench.coap_bench``) measure a server through the loopback and its generators,
whose cost and scheduling move every figure on a shared machine. This harness starts an emulator's
CoAP face in-process and feeds it GET datagrams straight into its transport's protocol
(``datagram_received``, as the socket reader does), with the transport's ``sendto`` replaced by one
that only counts, so what it times is the Python work per request: the screen, the fast path or
aiocoap's pipeline, the rendering or a kept reply, the duplicate cache. A pass ends when every request
has its reply (aiocoap renders in tasks: they run within the pass). It prints the best of five passes
in microseconds per request (each pass from new source ports, so nothing is a duplicate), the last
reply in hex, and with ``--profile`` the functions that took the most time in the last pass.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.coap_wire import GET, RequestTemplate
from tap_emulator.app import Emulator, Endpoint, ServeOptions

PASSES = 5
PORTS_PER_PASS = 4  # source ports per pass, so message ids never repeat from one (address, port)


class _CountingTransport:
    """Stands in for the asyncio transport while timing: replies are counted, not sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.last = b""

    def sendto(self, data: bytes, address: Any = None) -> None:
        self.sent += 1
        self.last = data

    def is_closing(self) -> bool:
        return False


async def measure(path: str, requests: int, fast_path: bool, profile: bool) -> tuple[float, bytes]:
    """Best microseconds per request over ``PASSES`` passes, and the last reply."""
    options = ServeOptions(
        state=":memory:",
        coap=Endpoint("127.0.0.1", 0),
        tcp=None,
        ws=None,
        http=None,
        store="off",
        coap_fast_path=fast_path,
    )
    emulator = Emulator(options, announce=lambda _line: None)
    await emulator.start()
    try:
        assert emulator.coap is not None
        interface: Any = emulator.coap.context.request_interfaces[0]
        pool = interface.token_interface.message_interface._pool  # simplesocketserver's protocol
        real, counting = pool._transport, _CountingTransport()
        template = RequestTemplate(GET, path)
        datagrams = [template.build(i, i.to_bytes(8, "big")) for i in range(requests)]
        per_port = -(-requests // PORTS_PER_PASS)
        best = float("inf")
        pool._transport = counting
        try:
            for number in range(PASSES):
                base = 20000 + number * PORTS_PER_PASS
                profiler = cProfile.Profile() if profile and number == PASSES - 1 else None
                started = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                for index, datagram in enumerate(datagrams):
                    pool.datagram_received(datagram, ("127.0.0.1", base + index // per_port))
                async with asyncio.timeout(60):
                    while counting.sent < (number + 1) * requests:
                        await asyncio.sleep(0)  # the renderings aiocoap runs in tasks
                if profiler is not None:
                    profiler.disable()
                best = min(best, (time.perf_counter() - started) / requests * 1e6)
                if profiler is not None:
                    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
        finally:
            pool._transport = real
        return best, counting.last
    finally:
        await emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coap_profile", description=__doc__)
    parser.add_argument("path", nargs="?", default="/1025/0/0", help="the GET's path (default /1025/0/0)")
    parser.add_argument("--requests", type=int, default=20000, help="requests per pass (default 20000)")
    parser.add_argument("--fast-path", choices=["on", "off"], default="on")
    parser.add_argument("--profile", action="store_true", help="cProfile the last pass")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    best, last = asyncio.run(measure(args.path, args.requests, args.fast_path == "on", args.profile))
    print(f"GET {args.path}, fast path {args.fast_path}: {best:.2f} us per request (best of {PASSES})")
    print(f"last reply: {last.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
