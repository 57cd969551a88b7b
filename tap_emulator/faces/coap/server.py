"""aiocoap adapter of the tree (see the package docstring for the paths it serves).

One root resource parses every path itself (a resource mounted in an aiocoap ``Site`` at ("1025",)
would answer 4.04 for ``/1025``), maps methods and representations, and forwards to the tree.
Observations are keyed by the tree path they watch; a change event re-renders them. Notifications go
out NON, with every ``con_every``-th one CON so that a vanished observer is eventually dropped
(RFC 7641 section 4.5).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

# aiocoap sets SO_REUSEPORT by default, which lets two servers share a port silently; a busy port must
# be an error instead (coap-notes.md, "Traps"). Read by aiocoap when a transport binds.
os.environ["AIOCOAP_REUSE_PORT"] = "0"

import aiocoap
import aiocoap.error
import aiocoap.interfaces
import aiocoap.resource
from aiocoap.message import Direction
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import Type
from aiocoap.pipe import error_to_message, run_driving_pipe

from tap_emulator.codec.values import (
    CONTAINER_FORMATS,
    LINK_FORMAT,
    SENML_JSON,
    TEXT,
    VALUE_FORMATS,
    RepresentationError,
    UnsupportedFormat,
    decode_representation,
    encode_representation,
    encode_senml,
)
from tap_emulator.model import Behaviour, Form, ObjectDef, Operation, ResourceDef
from tap_emulator.tree import MAINTENANCE, ChangeEvent, DeviceTree, Request, Response, Status

__all__ = ["CoapFace", "start_coap_server"]

log = logging.getLogger(__name__)

_OPERATIONS = {
    Code.GET: Operation.READ,
    Code.PUT: Operation.WRITE,
    Code.POST: Operation.EXECUTE,
    Code.DELETE: Operation.DELETE,
}

_INTERFACE = {Operation.READ: "core.rp", Operation.WRITE: "core.p", Operation.EXECUTE: "core.a"}


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed request path: what the tree sees, plus the alias form if one was named."""

    obj: ObjectDef
    instance_id: int | None
    resource: ResourceDef | None
    form: Form | None
    base: str  # path prefix used as SenML base name


class _PathError(Exception):
    def __init__(self, status: Status, diagnostic: str) -> None:
        super().__init__(diagnostic)
        self.status = status
        self.diagnostic = diagnostic


def _parse_uint(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5:
        raise _PathError(Status.NOT_FOUND, f"{what} {text!r} is not a number")
    return int(text)


def _message(status: Status, payload: bytes = b"", content_format: int | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=Code(int(status)), payload=payload)
    if content_format is not None:
        msg.opt.content_format = content_format
    return msg


def _error(status: Status, diagnostic: str) -> aiocoap.Message:
    # RFC 7252 5.5.2: a diagnostic payload, UTF-8 text, no content format.
    return _message(status, diagnostic.encode("utf-8"))


class CoapFace(aiocoap.resource.Resource, aiocoap.interfaces.ObservableResource):  # type: ignore[misc]
    """The root resource: parses paths from the model and forwards to the tree."""

    def __init__(self, tree: DeviceTree, *, con_every: int = 10) -> None:
        super().__init__()
        self.tree = tree
        self.model = tree.model
        self.con_every = max(1, con_every)
        self._observations: dict[tuple[int, int | None, int | None], set[_Observation]] = defaultdict(set)
        self._unsubscribe = tree.subscribe(self._on_change)
        self._link_format = self._build_link_format()
        self._tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self._unsubscribe()
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------------ paths

    def _parse(self, segments: tuple[str, ...]) -> _Target:
        if not segments:
            raise _PathError(Status.NOT_FOUND, "no object given")
        head, rest = segments[0], segments[1:]
        by_alias = self.model.object_by_alias(head)
        if by_alias is not None:
            obj, alias_form = by_alias, True
        else:
            oid = _parse_uint(head, "object")
            found = self.model.objects.get(oid)
            if found is None:
                raise _PathError(Status.NOT_FOUND, f"no object {oid}")
            obj, alias_form = found, False
        if len(rest) > 2:
            raise _PathError(Status.NOT_FOUND, "path too long")
        instance_id: int | None = None
        if obj.multiple:
            if rest:
                instance_id = _parse_uint(rest[0], "instance")
                if not obj.valid_instance(instance_id):
                    raise _PathError(Status.NOT_FOUND, f"instance {instance_id} is out of range")
        elif rest and rest[0] not in ("", "0"):
            raise _PathError(Status.NOT_FOUND, f"object {obj.id} has a single instance (0)")
        if len(rest) < 2:
            base = "/" + "/".join(segments) + "/" if rest else f"/{head}/"
            return _Target(obj, instance_id, None, None, base)
        token = rest[1]
        if alias_form:
            entry = obj.forms_by_alias.get(token)
            if entry is None:
                raise _PathError(Status.NOT_FOUND, f"{obj.alias} has no resource {token!r}")
            resource, form = entry
            return _Target(obj, instance_id, resource, form, "")
        resource_or_none = obj.resources.get(_parse_uint(token, "resource"))
        if resource_or_none is None:
            raise _PathError(Status.NOT_FOUND, f"object {obj.id} has no resource {token}")
        return _Target(obj, instance_id, resource_or_none, None, "")

    # ------------------------------------------------------------------ rendering

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = tuple(request.opt.uri_path)
        if path == (".well-known", "core"):
            return self._render_link_format(request)
        try:
            target = self._parse(path)
        except _PathError as exc:
            return _error(exc.status, exc.diagnostic)
        operation = _OPERATIONS.get(request.code)
        if operation is None:
            return _error(Status.METHOD_NOT_ALLOWED, f"{request.code} is not supported")
        if target.resource is None:
            return await self._render_container(request, target, operation)
        return await self._render_resource(request, target, operation)

    async def _render_container(
        self, request: aiocoap.Message, target: _Target, operation: Operation
    ) -> aiocoap.Message:
        if operation is not Operation.READ:
            return _error(Status.METHOD_NOT_ALLOWED, "only GET is allowed on an instance or object")
        accept = request.opt.accept if request.opt.accept is not None else SENML_JSON
        if int(accept) not in CONTAINER_FORMATS:
            return _error(
                Status.NOT_ACCEPTABLE, "instances and objects are offered as SenML JSON (110) or CBOR (112)"
            )
        response = await self.tree.handle(
            Request(Operation.READ, target.obj.id, target.instance_id, caller=MAINTENANCE)
        )
        if not response.status.is_success:
            return _error(response.status, response.diagnostic)
        assert isinstance(response.value, dict)
        entries: list[tuple[str, Any]] = []
        if target.obj.multiple and target.instance_id is None:
            for iid, values in response.value.items():
                entries += [(f"{iid}/{rid}", v) for rid, v in values.items() if v is not None]
        else:
            entries = [(str(rid), v) for rid, v in response.value.items() if v is not None]
        return _message(Status.CONTENT, encode_senml(target.base, entries, int(accept)), int(accept))

    async def _render_resource(
        self, request: aiocoap.Message, target: _Target, operation: Operation
    ) -> aiocoap.Message:
        resource = target.resource
        assert resource is not None
        value: object = None
        form = target.form
        accept = request.opt.accept
        if operation is Operation.READ:
            if accept is not None and int(accept) not in VALUE_FORMATS:
                return _error(Status.NOT_ACCEPTABLE, "offered: text/plain (0), octet-stream (42), cbor (60)")
        elif operation in (Operation.WRITE, Operation.EXECUTE) and operation in resource.operations:
            try:
                cf = request.opt.content_format
                form, value = decode_representation(
                    resource, request.payload, None if cf is None else int(cf), target.form
                )
            except UnsupportedFormat as exc:
                return _error(Status.UNSUPPORTED_CONTENT_FORMAT, str(exc))
            except RepresentationError as exc:
                return _error(Status.BAD_REQUEST, f"{resource.name}: {exc}")
        response: Response = await self.tree.handle(
            Request(
                operation,
                target.obj.id,
                target.instance_id,
                resource.id,
                value,
                caller=MAINTENANCE,
                form=form,
            )
        )
        if not response.status.is_success:
            return _error(response.status, response.diagnostic)
        if operation is not Operation.READ:
            return _message(response.status)
        content_format = TEXT if accept is None else int(accept)
        payload = encode_representation(form or resource.form, response.value, content_format)
        return _message(response.status, payload, content_format)

    # ------------------------------------------------------------------ discovery

    def _build_link_format(self) -> bytes:
        links: list[str] = []
        for obj in sorted(self.model.objects.values(), key=lambda o: o.id):
            instance = "{g}" if obj.multiple else "0"
            for res in sorted(obj.resources.values(), key=lambda r: r.id):
                if res.behaviour is Behaviour.SESSION:
                    continue
                interfaces = " ".join(_INTERFACE[op] for op in sorted(res.operations, key=lambda o: o.value))
                obs = ";obs" if res.readable else ""
                ct = '"0 42 60"' if res.form.value_type.value else '"0"'
                rt = f'"tap.{obj.alias or obj.id}.{res.form.alias}"'
                links.append(f'</{obj.id}/{instance}/{res.id}>;rt={rt};if="{interfaces}";ct={ct}{obs}')
                if obj.alias:
                    for form in res.forms:
                        rt = f'"tap.{obj.alias}.{form.alias}"'
                        links.append(
                            f"</{obj.alias}/{instance if obj.multiple else '0'}/{form.alias}>;"
                            f'rt={rt};if="{interfaces}";ct={ct}{obs}'
                        )
            if obj.multiple:
                links.append(f'</{obj.id}>;rt="tap.{obj.alias}";if="core.b";ct="110 112";obs')
                links.append(f'</{obj.id}/{{g}}>;rt="tap.{obj.alias}.instance";if="core.b";ct="110 112";obs')
        # Concrete instances are discoverable too, so a client can find the existing groups.
        return ",".join(links).encode("utf-8")

    def _render_link_format(self, request: aiocoap.Message) -> aiocoap.Message:
        if request.code != Code.GET:
            return _error(Status.METHOD_NOT_ALLOWED, "only GET is allowed on /.well-known/core")
        if request.opt.accept is not None and int(request.opt.accept) != LINK_FORMAT:
            return _error(Status.NOT_ACCEPTABLE, "offered: application/link-format (40)")
        instances = []
        for obj in self.model.objects.values():
            if obj.multiple:
                instances += [
                    f'</{obj.id}/{i}>;rt="tap.{obj.alias}.instance";ct="110 112";obs'
                    for i in self.tree.instance_ids(obj.id)
                ]
        payload = self._link_format + ("," + ",".join(instances) if instances else "").encode("utf-8")
        return _message(Status.CONTENT, payload, LINK_FORMAT)

    # ------------------------------------------------------------------ observe

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        if request.code != Code.GET:
            return
        try:
            target = self._parse(tuple(request.opt.uri_path))
        except _PathError:
            return
        if target.resource is not None and not target.resource.readable:
            return
        key = (target.obj.id, target.instance_id, None if target.resource is None else target.resource.id)
        observation = _Observation(self, request, serverobservation)
        self._observations[key].add(observation)

        def cancel() -> None:
            watchers = self._observations.get(key)
            if watchers is not None:
                watchers.discard(observation)
                if not watchers:
                    del self._observations[key]

        serverobservation.accept(cancel)

    def _on_change(self, event: ChangeEvent) -> None:
        keys: list[tuple[int, int | None, int | None]] = [
            (event.object_id, event.instance_id, rid) for rid in event.resource_ids
        ]
        keys.append((event.object_id, event.instance_id, None))
        if event.instance_id is not None:
            keys.append((event.object_id, None, None))
        for key in keys:
            for observation in list(self._observations.get(key, ())):
                task = asyncio.get_running_loop().create_task(observation.notify())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @property
    def observation_count(self) -> int:
        return sum(len(v) for v in self._observations.values())


class _Observation:
    """One accepted observation: re-renders its request and chooses NON or the periodic CON."""

    def __init__(self, face: CoapFace, request: aiocoap.Message, serverobservation: Any) -> None:
        self.face = face
        self.request = request
        self.serverobservation = serverobservation
        self.sent = 0

    async def notify(self) -> None:
        response = await self.face.render(self.request)
        self.sent += 1
        response.mtype = Type.CON if self.sent % self.face.con_every == 0 else Type.NON
        self.serverobservation.trigger(response)


class CoapServer:
    """A running CoAP endpoint: the aiocoap context and the address it is bound to."""

    def __init__(self, context: aiocoap.Context, face: CoapFace, address: tuple[str, int]) -> None:
        self.context = context
        self.face = face
        self.address = address
        self.duplicate_caches: list[DuplicateCache] = []

    async def close(self) -> None:
        self.face.close()
        await self.context.shutdown()


RENDER_TASK_NAME = "tap-emulator CoAP request"


class _EmulatorContext(aiocoap.Context):  # type: ignore[misc]
    """aiocoap's context without a per-request cost that buys nothing here.

    aiocoap names every rendering task ``"Rendering for %r" % request``, which formats the whole
    message and its remote address on each request (about 13% of a request's CPU in the profile of
    coap-notes.md, "Throughput"). The name only shows in debug listings of tasks, so a fixed one is
    used; everything else (error mapping, cancellation when the client loses interest) is aiocoap's.
    """

    def render_to_pipe(self, pipe: Any) -> None:
        run_driving_pipe(error_to_message(pipe, self.log), self._render_to_pipe(pipe), name=RENDER_TASK_NAME)


# Duplicate detection (RFC 7252 4.5). aiocoap remembers every (remote, message id) with its whole
# response Message and one timer for EXCHANGE_LIFETIME (247 s): ~2.3 KB per request, 76 MB to 631 MB in
# a minute of load (coap-notes.md). The window that matters to a server is the one in which a client
# retransmits a CON request: its last retransmission leaves at most MAX_TRANSMIT_SPAN (45 s with the
# default parameters) after the first; DEDUP_JITTER covers those copies arriving later than the first
# did. Within that window every duplicate is still recognised and answered with the same bytes.
DEDUP_WINDOW = TransportTuning().MAX_TRANSMIT_SPAN
DEDUP_JITTER = 15.0
# A hard bound on remembered messages (~130 bytes each, so ~65 MB): past it, at sustained rates above
# DEDUP_CAPACITY / (DEDUP_WINDOW + DEDUP_JITTER) requests per second, the oldest quarter goes early.
DEDUP_CAPACITY = 500_000

_ABSENT = object()


class _Generation:
    __slots__ = ("peers", "size", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.peers: dict[Hashable, dict[int, bytes | None]] = {}
        self.size = 0


class DuplicateCache:
    """Recently received (remote, message id) pairs and the encoded reply to each; sans-IO.

    Entries are grouped in generations a quarter of the window long and dropped a generation at a
    time, so there is no timer per message, and within a generation each remote is stored once with
    a dict from message id to the reply bytes (``None`` until the reply is known). An entry stays at
    least ``window`` seconds, unless the cache holds ``capacity`` entries, which it never exceeds.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = max(1, capacity)
        self._span = window / 4
        self._generations: deque[_Generation] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def lookup(self, remote: Hashable, mid: int, now: float) -> object:
        """The stored reply (bytes), ``None`` if the message was seen but not answered yet, or ``_ABSENT``."""
        self._expire(now)
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                return peer[mid]
        return _ABSENT

    def add(self, remote: Hashable, mid: int, now: float) -> None:
        """Remember a new message (the caller has checked it is absent)."""
        self._expire(now)
        generations = self._generations
        if not generations or now - generations[-1].started >= self._span or self._size >= self.capacity:
            generations.append(_Generation(now))
        while self._size >= self.capacity and len(generations) > 1:
            self._size -= generations.popleft().size
        current = generations[-1]
        peer = current.peers.get(remote)
        if peer is None:
            peer = current.peers[remote] = {}
        if mid not in peer:
            peer[mid] = None
            current.size += 1
            self._size += 1

    def expects_reply(self, remote: Hashable, mid: int) -> bool:
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                return peer[mid] is None
        return False

    def set_reply(self, remote: Hashable, mid: int, reply: bytes) -> None:
        for generation in reversed(self._generations):
            peer = generation.peers.get(remote)
            if peer is not None and mid in peer:
                peer[mid] = reply
                return

    def _expire(self, now: float) -> None:
        generations = self._generations
        # Every entry of a generation is at least `window` old once its last possible entry is.
        while generations and generations[0].started + self._span + self.window <= now:
            self._size -= generations.popleft().size


class _DuplicateDetector:
    """Stands in for aiocoap's deduplication in one message manager, keeping its semantics:
    a duplicate CON is answered with the stored reply (or ignored until there is one), any other
    duplicate is ignored, and a duplicate is never rendered twice."""

    def __init__(self, manager: Any, cache: DuplicateCache) -> None:
        self.manager = manager
        self.cache = cache

    def deduplicate(self, message: aiocoap.Message) -> bool:
        now = self.manager.loop.time()
        stored = self.cache.lookup(message.remote, message.mid, now)
        if stored is _ABSENT:
            self.cache.add(message.remote, message.mid, now)
            return False
        if message.mtype is Type.CON and isinstance(stored, bytes):
            reply = aiocoap.Message.decode(stored, message.remote.as_response_address())
            reply.direction = Direction.OUTGOING  # the stored reply goes out again, byte for byte
            self.manager._send_via_transport(reply)
        return True

    def store_response(self, message: aiocoap.Message) -> None:
        if self.cache.expects_reply(message.remote, message.mid):
            self.cache.set_reply(message.remote, message.mid, message.encode())


def _install_duplicate_cache(context: aiocoap.Context) -> list[DuplicateCache]:
    """Give every message manager of the context a bounded DuplicateCache (before it receives)."""
    caches = []
    for interface in context.request_interfaces:
        manager: Any = getattr(interface, "token_interface", None)
        if not hasattr(manager, "_deduplicate_message"):
            continue  # not a message-managed transport (TCP, WebSocket): no message ids
        detector = _DuplicateDetector(manager, DuplicateCache(DEDUP_WINDOW + DEDUP_JITTER, DEDUP_CAPACITY))
        manager._deduplicate_message = detector.deduplicate
        manager._store_response_for_duplicates = detector.store_response
        caches.append(detector.cache)
    return caches


def _bound_address(context: aiocoap.Context, fallback_host: str) -> tuple[str, int]:
    """The (host, port) the UDP transport actually bound (port 0 resolves to a free port)."""
    for interface in context.request_interfaces:
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        # udp6 keeps its asyncio transport on the interface, simplesocketserver on its server socket.
        holder = getattr(message_interface, "_pool", message_interface)
        transport = getattr(holder, "transport", None) or getattr(holder, "_transport", None)
        if transport is None:
            continue
        sockname = transport.get_extra_info("socket").getsockname()
        return fallback_host, int(sockname[1])
    raise RuntimeError("the CoAP server has no UDP transport")


_WILDCARDS = ("", "0.0.0.0", "::")


def _transport_for(host: str) -> tuple[str, str]:
    """The aiocoap server transport for a bind address, and the address to give it.

    One concrete address (the usual 127.0.0.1, or a LAN address) gets ``simplesocketserver``: a plain
    asyncio datagram endpoint that answers from the one address it is bound to. aiocoap's default
    ``udp6`` exists to serve wildcard binds (it reads each request's destination address from
    ancillary data to answer from the right one) and pays for it on every request: recvmsg/sendmsg
    with packet info and repeated parsing of IPv4-mapped addresses (coap-notes.md: ~11% of a request,
    and 5,200 against 3,900 req/s for the two transports). Wildcards keep ``udp6``.

    What ``simplesocketserver`` gives up is ICMP errors: an observer that vanishes is not dropped at
    the first "port unreachable" but when a CON notification (every ``con_every``-th) goes unanswered.
    """
    if host in _WILDCARDS:
        return "udp6", "::ffff:0.0.0.0" if host == "0.0.0.0" else "::"
    return "simplesocketserver", host


async def start_coap_server(tree: DeviceTree, host: str, port: int, *, con_every: int = 10) -> CoapServer:
    """Bind a UDP CoAP server; raises OSError (EADDRINUSE ...) with the address in the message."""
    face = CoapFace(tree, con_every=con_every)
    transport, bind_host = _transport_for(host)
    try:
        context = await _EmulatorContext.create_server_context(
            face, bind=(bind_host, port), transports=[transport]
        )
    except OSError as exc:
        face.close()
        raise OSError(exc.errno, f"cannot listen for CoAP on {host}:{port}: {exc.strerror}") from None
    server = CoapServer(context, face, _bound_address(context, host))
    server.duplicate_caches = _install_duplicate_cache(context)
    return server
