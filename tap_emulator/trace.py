"""The trace: one JSON object per request and response of every face, for people and rigs to read.

A bench needs to see what crossed the wire (which face, peer, session, path, method, status, sizes,
latency, which fault was applied) without a packet capture, and a CoAP trace can be replayed
(``tap-emulator trace replay``). One ``Trace`` per device, shared by the faces: ``record`` writes the
line to the ``--trace`` file (or the log when no file is named), keeps the last ``keep`` events for the
control API and the live page, and hands each to the subscribers (the page's event stream).

Never a payload of a login, a password, a key or a proof: the Tap faces record sizes only, and CoAP
records the body of a write only when its target is not a secret (``body``, hex, so a replay can send
it again). Bounded: the file rotates once it passes ``max_bytes`` (one previous file, ``PATH.1``), the
recent events are a fixed-size ring, and each subscriber's queue has a cap past which it misses events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["DEFAULT_MAX_BYTES", "TRACE_LOGGER", "Trace", "status_text"]

TRACE_LOGGER: Final = "tap_emulator.trace"
trace_log = logging.getLogger(TRACE_LOGGER)
log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 200
SUBSCRIBER_QUEUE = 256
MAX_SUBSCRIBERS = 32


def status_text(code: int | None) -> str | None:
    """A response code as CoAP writes it (``2.05``); Tap status bytes are the same codes."""
    if code is None:
        return None
    return f"{code >> 5}.{code & 0x1F:02d}"


class Trace:
    """The device's trace. ``active`` is what faces test before building an event (it costs nothing
    otherwise): a file or the log is written, a subscriber listens, or ``enable`` was called."""

    def __init__(
        self,
        path: str | None = None,
        *,
        to_log: bool = False,
        keep: int = DEFAULT_KEEP,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.to_log = to_log
        self.max_bytes = max_bytes
        self.clock = clock
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._file: IO[str] | None = None
        self._written = 0
        self._enabled = False
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        if path is not None:
            self._open()
        self._update()

    @property
    def active(self) -> bool:
        return self._active

    def enable(self, on: bool = True) -> None:
        """Record even with no file and no subscriber (the control API's ``trace`` switch)."""
        self._enabled = on
        self._update()

    def _update(self) -> None:
        self._active = self._file is not None or self.to_log or self._enabled or bool(self._subscribers)

    def _open(self) -> None:
        assert self.path is not None
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = target.open("a", encoding="utf-8")
        self._written = target.stat().st_size

    def record(
        self,
        face: str,
        peer: str,
        path: str,
        method: str,
        status: int | None,
        *,
        session: int | None = None,
        request_bytes: int = 0,
        response_bytes: int = 0,
        latency_ms: float = 0.0,
        fault: str | None = None,
        **extra: Any,
    ) -> None:
        event: dict[str, Any] = {
            "time": round(self.clock(), 6),
            "face": face,
            "peer": peer,
            "session": session,
            "path": path,
            "method": method,
            "status": status_text(status),
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "latency_ms": round(latency_ms, 3),
            "fault": fault,
        }
        event.update(extra)
        self.recent.append(event)
        if self._file is not None or self.to_log:
            line = json.dumps(event, separators=(",", ":"))
            if self._file is not None:
                self._write(line)
            if self.to_log:
                trace_log.info("%s", line)
        for queue in self._subscribers:
            if queue.qsize() < SUBSCRIBER_QUEUE:
                queue.put_nowait(event)

    def _write(self, line: str) -> None:
        assert self._file is not None
        try:
            if self._written + len(line) + 1 > self.max_bytes:
                self._rotate()
            self._file.write(line + "\n")
            self._file.flush()
            self._written += len(line) + 1
        except OSError as exc:
            log.error("trace: cannot write %s (%s); the trace file is off", self.path, exc.strerror)
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self._update()

    def _rotate(self) -> None:
        assert self._file is not None and self.path is not None
        self._file.close()
        os.replace(self.path, f"{self.path}.1")
        self._open()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any]] | None]:
        """A queue of the events recorded while the block runs (None once ``MAX_SUBSCRIBERS`` listen)."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            yield None
            return
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(queue)
        self._update()
        try:
            yield queue
        finally:
            self._subscribers.remove(queue)
            self._update()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._update()
