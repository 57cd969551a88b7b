"""``tap-emulator trace replay FILE --to HOST:PORT``: send a trace's CoAP requests again, in order.

A trace recorded on a bench becomes a regression script: each CoAP request of the file (the face's
``coap`` events) is sent to the device at ``--to`` with the method, path, body and content format the
trace recorded, and its answer is compared with the recorded status. Requests the trace has no body
for (writes of credentials, never recorded) are skipped and counted; datagrams a fault dropped are
skipped, since the client's retransmission is the next event. Exit 0 when every answer matched, 1 when
one differed or the device did not answer, 2 when the file is not a trace.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tap_emulator.app import Endpoint, format_address

__all__ = ["replay_trace"]

_METHODS = {"GET", "PUT", "POST", "DELETE"}
_TIMEOUT = 10.0
_MAX_LINE = 1 << 20


def _requests(path: str) -> tuple[list[dict[str, Any]], int]:
    """The replayable CoAP events of the file and how many were skipped; ValueError for a bad file."""
    replayable, skipped = [], 0
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if len(line) > _MAX_LINE:
                raise ValueError(f"{path}:{number}: line too long for a trace event")
            event = json.loads(line)
            if not isinstance(event, dict) or "face" not in event or "path" not in event:
                raise ValueError(f"{path}:{number}: not a trace event")
            if event["face"] != "coap" or event.get("method") not in _METHODS:
                continue
            fault = event.get("fault") or ""
            if "drop" in fault or "offline" in fault:
                continue
            if event["method"] in ("PUT", "POST") and event.get("request_bytes") and "body" not in event:
                skipped += 1  # a credential's body is never recorded
                continue
            replayable.append(event)
    return replayable, skipped


async def replay_trace(path: str, to: Endpoint) -> int:
    import aiocoap

    try:
        events, skipped = _requests(path)
    except OSError as exc:
        print(f"tap-emulator: {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"tap-emulator: {exc}", file=sys.stderr)
        return 2
    target = format_address((to.host, to.port))
    context = await aiocoap.Context.create_client_context()
    differed = 0
    try:
        for event in events:
            message = aiocoap.Message(
                code=getattr(aiocoap, event["method"]),
                uri=f"coap://{target}",
                payload=bytes.fromhex(event.get("body", "")),
            )
            message.opt.uri_path = tuple(event["path"][1:].split("/"))
            if event.get("content_format") is not None:
                message.opt.content_format = int(event["content_format"])
            try:
                response = await asyncio.wait_for(context.request(message).response, _TIMEOUT)
                status = f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}"
            except (TimeoutError, aiocoap.error.Error) as exc:
                status = f"no answer ({type(exc).__name__})"
            same = status == event.get("status")
            differed += not same
            mark = "" if same else f"  (trace: {event.get('status')})"
            print(f"{event['method']} {event['path']} -> {status}{mark}", flush=True)
    finally:
        await context.shutdown()
    print(f"{len(events)} request(s) replayed, {differed} answered differently, {skipped} skipped (no body)")
    return 1 if differed else 0
