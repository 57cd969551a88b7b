"""Sync lag: how long a group change takes to reach its row in the SQLite management store.

The sync task has no poll interval: it wakes on the tree's change events. Its own wake-up interval
(baseline) is therefore measured as the p99 lag of isolated changes, 10 per second, each reaching an
idle task; the subject is the p99 lag at 100 changes per second, interleaved with the baseline runs.
A change is a CoAP PUT of a new name; its lag runs from the PUT's acknowledgement (the change is then
durable) to the moment the store's row shows that name or a later one (the task coalesces, so a newer
version carries every older one). The store is read from this process every millisecond, read-only.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bench.coap_wire import PUT, RequestTemplate, parse_response, token_of
from bench.loadgen import LoadResult
from bench.procs import Server, emulator_server, start_server
from bench.results import MetricResult, Target
from bench.runner import Run, Settings, interleave, measured, median, summary

GROUP = 65534
LOAD_RATE = 100.0
IDLE_RATE = 10.0
POLL_INTERVAL = 0.001
SETTLE_TIMEOUT = 10.0


class _StoreReader:
    def __init__(self, path: Path, serial: str) -> None:
        self.path = path
        self.serial = serial
        self._conn: sqlite3.Connection | None = None

    def name(self) -> str | None:
        if self._conn is None:
            if not self.path.exists():
                return None
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = self._conn.execute(
                "SELECT name FROM access_groups WHERE device_serial = ? AND group_id = ?",
                (self.serial, GROUP),
            ).fetchone()
        except sqlite3.OperationalError:  # tables not created yet, or a writer holds a lock
            return None
        return None if row is None else str(row[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _changes(server: Server, store: _StoreReader, *, rate: float, seconds: float, run_id: str) -> LoadResult:
    """PUT a new name ``rate`` times a second for ``seconds``; lag of each change to its store row."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(server.endpoints["coap"])
    sock.setblocking(False)
    clock = time.perf_counter
    acked: dict[int, float] = {}
    seen_until = -1  # every change up to this index is in the store
    lags: list[float] = []
    cpu_start, start = time.process_time(), clock()
    sent = errors = 0
    names = {f"{run_id}{k}": k for k in range(int(rate * seconds) + 1)}
    try:
        while True:
            now = clock()
            if now - start < seconds and sent < (now - start) * rate:
                name = f"{run_id}{sent}"
                template = RequestTemplate(PUT, f"/1025/{GROUP}/0", name.encode(), content_format=0)
                sock.send(template.build(sent, token_of(sent)))
                sent += 1
            while True:
                try:
                    datagram = sock.recv(2048)
                except BlockingIOError:
                    break
                parsed = parse_response(datagram)
                if parsed is None:
                    continue
                index = int.from_bytes(parsed[2], "big")
                if parsed[1] >> 5 != 2:
                    errors += 1
                acked.setdefault(index, clock())
            current = store.name()
            if current in names and names[current] > seen_until:
                seen = clock()
                for index in range(seen_until + 1, names[current] + 1):
                    if index in acked:
                        lags.append(max(0.0, seen - acked[index]))
                seen_until = names[current]
            if sent and seen_until >= sent - 1 and now - start >= seconds:
                break
            if now - start > seconds + SETTLE_TIMEOUT:
                break
            time.sleep(POLL_INTERVAL)
    finally:
        sock.close()
    elapsed = clock() - start
    lost = sent - 1 - seen_until
    return LoadResult(len(lags), errors, lost, 0, elapsed, time.process_time() - cpu_start, lags)


def sync_lag(settings: Settings) -> MetricResult:
    metric = MetricResult(
        "sync_lag_ratio",
        f"p99 delay from an acknowledged change to its row in the SQLite store at {LOAD_RATE:g} changes/s, "
        f"vs the sync task's own wake-up delay (p99 at {IDLE_RATE:g} isolated changes/s)",
        "ms",
        Target("<=", 2.0),
    )
    work = settings.work / "sync"
    store_path = work / "store.sqlite3"
    server = start_server(
        "emulator-sync",
        emulator_server("--state", str(work / "device.sqlite3"), "--store", f"sqlite:///{store_path}"),
        expect={"coap"},
        cwd=settings.work,
    )
    store = _StoreReader(store_path, "EMU0000000001")
    counter = iter(range(1_000_000))

    def driver(rate: float) -> Callable[[], Run]:
        def drive() -> Run:
            run_id = f"r{next(counter)}-"
            return measured(
                server, lambda: _changes(server, store, rate=rate, seconds=settings.seconds, run_id=run_id)
            )

        return drive

    try:
        runs = interleave(settings.rounds, {"idle": driver(IDLE_RATE), "loaded": driver(LOAD_RATE)})
    finally:
        store.close()
        server.stop()
    metric.settle(
        median([r.result.percentile(0.99) * 1000 for r in runs["loaded"]]),
        median([r.result.percentile(0.99) * 1000 for r in runs["idle"]]),
    )
    metric.details = {"loaded": summary(runs["loaded"]), "baseline": summary(runs["idle"])}
    return metric
