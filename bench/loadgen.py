"""Closed-loop UDP load generator for CoAP: N requests outstanding, token matching, own CPU share.

Runs in the benchmark process on a plain non-blocking socket (no asyncio, no aiocoap) so that it is
cheap next to the server it drives. Rules it follows because aiocoap would otherwise distort the
figures (coap-notes.md, "Traps"):

- every request has a distinct message id and token, and replies are matched by token, so a cached
  reply to an older request (deduplication) is counted as stale, never as a success;
- the source port changes every ``PORT_ROTATION`` requests, so no (source, message id) pair repeats
  within a server's deduplication window (65,536 ids per port);
- a request unanswered after ``timeout`` seconds is counted lost and replaced, so one lost datagram
  does not shrink the window for the rest of the run.

An optional side load keeps a batch of other requests (password changes, say) in flight throughout
the run; its replies are counted apart and never mixed into the main latencies.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.coap_wire import parse_response, token_of

PORT_ROTATION = 60_000

Build = Callable[[int, bytes], bytes]  # (message id, token) -> datagram


@dataclass(slots=True)
class SideLoad:
    """Keep ``batch`` requests from ``build`` in flight: a new batch goes out when the last one is in."""

    build: Build
    batch: int
    timeout: float = 30.0
    completed: int = 0
    errors: int = 0
    lost: int = 0
    batches: int = 0


@dataclass(slots=True)
class LoadResult:
    completed: int
    errors: int  # replies with a code outside 2.xx
    lost: int
    stale: int  # replies whose token matched no pending request
    seconds: float
    cpu_seconds: float
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time of the generator over wall time (1.0 = one core saturated)."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        return percentile(self.latencies, fraction)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _is_success(code: int) -> bool:
    return code >> 5 == 2


def coap_load(
    address: tuple[str, int],
    build: Build,
    *,
    seconds: float,
    outstanding: int = 16,
    rate: float | None = None,
    warmup: float = 0.2,
    timeout: float = 2.0,
    side: SideLoad | None = None,
) -> LoadResult:
    """Drive ``address`` for ``warmup + seconds``; only the last ``seconds`` count."""
    selector = selectors.DefaultSelector()
    sockets: list[socket.socket] = []

    def new_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.connect(address)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
        if len(sockets) > 2:  # two rotations ago: every reply it could get is long due
            old = sockets.pop(0)
            selector.unregister(old)
            old.close()
        return sock

    sock = new_socket()
    seq = 0
    sent_on_socket = 0
    pending: dict[bytes, float] = {}  # main requests: token -> send time
    side_pending: dict[bytes, float] = {}
    latencies: list[float] = []
    completed = errors = lost = stale = 0
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    end = measure_from + seconds
    cpu_start = time.process_time()
    cpu_at_measure: float | None = None
    next_expiry_check = start + timeout / 4
    sent_main = 0

    def send(builder: Build) -> bytes:
        nonlocal seq, sent_on_socket, sock
        if sent_on_socket >= PORT_ROTATION:
            sock = new_socket()
            sent_on_socket = 0
        seq += 1
        sent_on_socket += 1
        token = token_of(seq)
        # A full send buffer (or an ICMP error reported on this send) drops the request: it is counted
        # lost after the timeout, like a datagram lost on the wire.
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            sock.send(builder(seq, token))
        return token

    try:
        while True:
            now = clock()
            if cpu_at_measure is None and now >= measure_from:
                cpu_at_measure = time.process_time()
                completed = errors = lost = stale = 0
                latencies.clear()
            if now >= end:
                break
            if side is not None and not side_pending:
                side.batches += 1
                for _ in range(side.batch):
                    side_pending[send(side.build)] = now
            while len(pending) < outstanding:
                if rate is not None and sent_main >= (now - start) * rate:
                    break
                pending[send(build)] = now
                sent_main += 1
            wait = end - now
            if rate is not None and len(pending) < outstanding:
                wait = min(wait, max(0.0, start + (sent_main + 1) / rate - now))
            for key, _ in selector.select(min(wait, timeout / 4)):
                receiver = key.fileobj
                assert isinstance(receiver, socket.socket)
                while True:
                    try:
                        datagram = receiver.recv(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    arrived = clock()
                    parsed = parse_response(datagram)
                    if parsed is None:
                        stale += 1
                        continue
                    _mtype, code, token = parsed
                    sent_at = pending.pop(token, None)
                    if sent_at is not None:
                        if arrived >= measure_from:
                            latencies.append(arrived - sent_at)
                            completed += 1
                            if not _is_success(code):
                                errors += 1
                        continue
                    if side is not None and side_pending.pop(token, None) is not None:
                        side.completed += 1
                        if not _is_success(code):
                            side.errors += 1
                        continue
                    stale += 1
            if now >= next_expiry_check:
                next_expiry_check = now + timeout / 4
                for token in [t for t, sent_at in pending.items() if now - sent_at > timeout]:
                    del pending[token]
                    lost += 1
                if side is not None:
                    for token in [t for t, sent_at in side_pending.items() if now - sent_at > side.timeout]:
                        del side_pending[token]
                        side.lost += 1
        measured = clock() - measure_from
        cpu = time.process_time() - (cpu_at_measure if cpu_at_measure is not None else cpu_start)
        # Let the replies still in flight arrive (uncounted) before closing: a closed port would make
        # the server see ICMP errors and cancel work, which would bleed into the next run.
        drain_until = clock() + min(timeout, 1.0)
        while (pending or side_pending) and clock() < drain_until:
            for key, _ in selector.select(0.05):
                receiver = key.fileobj
                assert isinstance(receiver, socket.socket)
                while True:
                    try:
                        datagram = receiver.recv(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    parsed = parse_response(datagram)
                    if parsed is not None:
                        pending.pop(parsed[2], None)
                        side_pending.pop(parsed[2], None)
    finally:
        for s in sockets:
            selector.unregister(s)
            s.close()
        selector.close()
    return LoadResult(completed, errors, lost, stale, measured, cpu, latencies)


def _load_in_child(connection: Any, address: tuple[str, int], build: Build, kwargs: dict[str, Any]) -> None:
    try:
        connection.send(coap_load(address, build, **kwargs))
    finally:
        connection.close()


def coap_load_parallel(
    address: tuple[str, int],
    build: Build,
    *,
    processes: int,
    seconds: float,
    outstanding: int = 16,
    warmup: float = 0.2,
    timeout: float = 2.0,
) -> LoadResult:
    """``coap_load`` from ``processes`` forked generators at once (``outstanding`` split between them),
    for servers one Python generator cannot saturate; the figures are summed (CPU share: of all of
    them together, so 2.0 is two cores), latencies pooled. Each child has its own source ports, so
    message ids never collide at the server."""
    if processes <= 1:
        return coap_load(
            address, build, seconds=seconds, outstanding=outstanding, warmup=warmup, timeout=timeout
        )
    context = multiprocessing.get_context("fork")
    share = [outstanding // processes + (1 if i < outstanding % processes else 0) for i in range(processes)]
    children = []
    for part in share:
        receiver, sender = context.Pipe(duplex=False)
        kwargs = {"seconds": seconds, "outstanding": max(1, part), "warmup": warmup, "timeout": timeout}
        child = context.Process(target=_load_in_child, args=(sender, address, build, kwargs), daemon=True)
        child.start()
        sender.close()
        children.append((child, receiver))
    results: list[LoadResult] = []
    for child, receiver in children:
        if receiver.poll(warmup + seconds + timeout + 30):
            results.append(receiver.recv())
        receiver.close()
        child.join(5)
        if child.is_alive():
            child.kill()
    if len(results) != len(children):
        raise RuntimeError("a load generator process did not report")
    wall = max(r.seconds for r in results)
    return LoadResult(
        completed=sum(r.completed for r in results),
        errors=sum(r.errors for r in results),
        lost=sum(r.lost for r in results),
        stale=sum(r.stale for r in results),
        seconds=wall,
        cpu_seconds=sum(r.cpu_seconds for r in results),
        latencies=[latency for r in results for latency in r.latencies],
    )
