"""aiocoap adapter of the tree (see the package docstring for the paths it serves).

One root resource parses every path itself (a resource mounted in an aiocoap ``Site`` at ("1025",)
would answer 4.04 for ``/1025``), maps methods and representations, and forwards to the tree.
Observations are keyed by the tree path they watch; a change event renders each distinct request
once and sends it to every observer of that shape. Notifications go out NON, with every
``con_every``-th one CON, retried once, so that a vanished observer is dropped within seconds
(RFC 7641 section 4.5).

Every request names its caller (``--coap-access``; with ``--coap-oscore``, requests an OSCORE context
authenticates act as maintenance): the tree decides what it may do. Before aiocoap
reassembles or renders anything, ``render_to_pipe`` refuses what the face does not process (unknown
critical options 4.02, proxying 5.05, block size exponent 7 over UDP 4.00) and bodies larger than the
model lets the target take (4.13 with Size1, from the first block); datagrams are screened even before
aiocoap parses them (``tap_emulator.codec.coap_screen``). What the face holds is bounded by
``CoapLimits``. The face answers with plain ``Reply`` values (``respond``); aiocoap gets them as
messages (``render``), and the fast path (``fast_path``) sends them itself for plain requests, before
aiocoap's pipeline, with the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

# aiocoap sets SO_REUSEPORT by default, which lets two servers share a port silently; a busy port must
# be an error instead (coap-notes.md, "Traps"). Read by aiocoap when a transport binds.
os.environ["AIOCOAP_REUSE_PORT"] = "0"

import aiocoap
import aiocoap.error
import aiocoap.interfaces
import aiocoap.resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.pipe import error_to_message, run_driving_pipe

from tap_emulator.codec.lwm2m import (
    LWM2M_FORMATS,
    SENML_JSON,
    Lwm2mFormatError,
    Record,
    decode_records,
    encode_records,
    records_of,
)
from tap_emulator.codec.values import (
    LINK_FORMAT,
    TEXT,
    VALUE_FORMATS,
    RepresentationError,
    UnsupportedFormat,
    decode_representation,
    encode_representation,
    entity_tag,
    max_body_size,
)
from tap_emulator.faces.coap.attributes import (
    AttributeError_,
    Attributes,
    AttributeStore,
    NotifyGate,
    Path,
    parse_write_attributes,
)
from tap_emulator.faces.coap.discovery import discover, filter_links, render_links, well_known_links
from tap_emulator.faces.coap.fast_path import FastPath, fast_path_default
from tap_emulator.faces.coap.fault_layer import CoapFaults, install_fault_layer
from tap_emulator.faces.coap.limits import (
    NOTIFICATION_TUNING,
    CoapLimits,
    bounded_block_stores,
)
from tap_emulator.faces.coap.message_layer import (
    DuplicateCache,
    install_datagram_screens,
    install_duplicate_cache,
    install_notification_resets,
)
from tap_emulator.faces.coap.receiver import drain_datagrams
from tap_emulator.faces.coap.reply import Reply
from tap_emulator.faults import FaultInjector
from tap_emulator.logsafety import RateLimitedLog
from tap_emulator.model import Behaviour, Form, ObjectDef, Operation, ResourceDef, ValueType
from tap_emulator.trace import Trace
from tap_emulator.tree import MAINTENANCE, Caller, ChangeEvent, DeviceTree, Request, Response, Status

__all__ = ["CoapFace", "CoapLimits", "start_coap_server"]

log = logging.getLogger(__name__)
# Lines that network input can repeat (junk datagrams, observers past a cap): one per reason per
# interval, per server.
LIMITED_LOG_INTERVAL = 10.0
NOTIFY_BATCH = 64
PARSED_PATHS = 4096  # paths whose parse is remembered

# Critical options (odd numbers) this face or aiocoap acts on; any other critical option is 4.02
# (RFC 7252 section 5.4.1). Uri-Query is accepted and ignored, as a resource may; Request-Tag keys
# block-wise reassembly in aiocoap. Proxy-Uri and Proxy-Scheme are recognised only to answer 5.05.
_PROCESSED_CRITICAL = frozenset(
    {
        OptionNumber.IF_MATCH,
        OptionNumber.URI_HOST,
        OptionNumber.IF_NONE_MATCH,
        OptionNumber.URI_PORT,
        OptionNumber.URI_PATH,
        OptionNumber.URI_QUERY,
        OptionNumber.ACCEPT,
        OptionNumber.BLOCK2,
        OptionNumber.BLOCK1,
        OptionNumber.PROXY_URI,
        OptionNumber.PROXY_SCHEME,
        OptionNumber.REQUEST_TAG,
    }
)

_OPERATIONS = {
    Code.GET: Operation.READ,
    Code.PUT: Operation.WRITE,
    Code.POST: Operation.EXECUTE,
    Code.DELETE: Operation.DELETE,
}

# Timers of attribute-driven notifications: ``call_later(delay, callback)`` returns what ``cancel()``s it.
CallLater = Callable[[float, Callable[[], None]], Any]
# The path of Bootstrap-Request (on the bootstrap server) and Bootstrap-Finish (on the device).
BOOTSTRAP_PATH = "bs"
# Per record of a container write, beyond the value itself: its name, keys and a base64 expansion.
RECORD_OVERHEAD = 64


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


def _message(status: Status, payload: bytes = b"", content_format: int | None = None) -> Reply:
    msg = Reply(int(status), payload)
    if content_format is not None:
        msg.opt.content_format = content_format
    return msg


def _error(status: Status | Code, diagnostic: str) -> Reply:
    # RFC 7252 5.5.2: a diagnostic payload, UTF-8 text, no content format.
    return Reply(int(status), diagnostic.encode("utf-8"))


# Options a request commonly carries that need no check before rendering (a fast path for GETs).
_PLAIN_OPTIONS = frozenset(
    {
        OptionNumber.URI_HOST,
        OptionNumber.URI_PORT,
        OptionNumber.URI_PATH,
        OptionNumber.URI_QUERY,
        OptionNumber.ACCEPT,
        OptionNumber.CONTENT_FORMAT,
        OptionNumber.OBSERVE,
        OptionNumber.IF_MATCH,
        OptionNumber.IF_NONE_MATCH,
        OptionNumber.ETAG,
    }
)

# _refusal's answer for a body sent where the method takes none.
_RENDER_ALONE = Reply(Code.EMPTY)


def _clone(message: aiocoap.Message) -> aiocoap.Message:
    """A fresh message with the same code, payload and options (aiocoap sets token, remote and the
    Observe number on the message it sends, so each observer needs its own). Option objects are
    shared: aiocoap replaces options rather than mutating them."""
    clone = aiocoap.Message(code=message.code, payload=message.payload)
    for option in message.opt.option_list():
        clone.opt.add_option(option)
    return clone


class CoapFace(aiocoap.resource.Resource, aiocoap.interfaces.ObservableResource):  # type: ignore[misc]
    """The root resource: parses paths from the model and forwards to the tree."""

    def __init__(
        self,
        tree: DeviceTree,
        *,
        caller: Caller = MAINTENANCE,
        authenticated_caller: Caller | None = None,
        con_every: int = 10,
        limits: CoapLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        call_later: CallLater | None = None,
        trace: Trace | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.trace = trace or Trace()
        self.faults = CoapFaults(faults or FaultInjector(time.monotonic), self.trace, time.monotonic)
        self.model = tree.model
        self.caller = caller
        # The caller of a request whose remote carries authenticated claims (an OSCORE context); None
        # when no credentials are configured, so claims grant nothing.
        self.authenticated_caller = authenticated_caller
        self.con_every = max(1, con_every)
        self.limits = limits or CoapLimits()
        # aiocoap's block-wise stores (set by its Resource.__init__), replaced by bounded ones.
        self._block1, self._block2 = bounded_block_stores(self.limits, time.monotonic)
        self._observations: dict[tuple[int, int | None, int | None], set[_Observation]] = defaultdict(set)
        self._observers_per_peer: dict[Hashable, int] = {}
        self._observer_total = 0
        self._unsubscribe = tree.subscribe(self._on_change)
        self._body_caps = self._build_body_caps()
        # Write-Attributes per path, and the clock and timers notifications honour them by (injectable).
        self.attributes = AttributeStore()
        self._clock = clock
        self._call_later = call_later
        # Set while a client-initiated bootstrap runs (registration.bootstrap): called on Bootstrap-Finish.
        # Meanwhile a write to a missing instance creates it and a delete of an object empties it.
        self.bootstrap_finish: Callable[[], None] | None = None
        self._parsed: dict[tuple[str, ...], _Target | tuple[Status, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.limited_log = RateLimitedLog(log, interval=LIMITED_LOG_INTERVAL)

    def close(self) -> None:
        self._unsubscribe()
        self.faults.close()
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------------ paths

    def _parse(self, segments: tuple[str, ...]) -> _Target:
        """The target at a path (``_parse_path``), remembered: it depends on the model alone."""
        parsed = self._parsed.get(segments)
        if parsed is None:
            try:
                parsed = self._parse_path(segments)
            except _PathError as exc:
                parsed = (exc.status, exc.diagnostic)
            if len(self._parsed) >= PARSED_PATHS:  # peers choose the paths: bounded
                self._parsed.clear()
            self._parsed[segments] = parsed
        if isinstance(parsed, tuple):
            raise _PathError(*parsed)
        return parsed

    def _parse_path(self, segments: tuple[str, ...]) -> _Target:
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

    def _caller_for(self, request: aiocoap.Message) -> Caller:
        if self.authenticated_caller is not None and request.remote.authenticated_claims:
            return self.authenticated_caller
        return self.caller

    # ------------------------------------------------------------------ refusals before rendering

    async def render_to_pipe(self, pipe: Any) -> None:
        refusal = self._refusal(pipe.request)
        if refusal is None:
            if pipe.request.opt.observe == 0:
                _number_observations_from_one(pipe)
            await super().render_to_pipe(pipe)
            return
        if refusal is _RENDER_ALONE:  # as in ``refused``, through ``render`` (faults and the trace)
            pipe.add_response(await self.render(pipe.request), is_last=True)
            return
        self._traced(pipe.request, refusal, time.perf_counter(), None)
        pipe.add_response(refusal.to_message(), is_last=True)

    async def refused(self, request: aiocoap.Message) -> Reply | None:
        """The whole answer to a request decided before block-wise handling, or None to render it."""
        refusal = self._refusal(request)
        if refusal is _RENDER_ALONE:
            # The method takes no body here: answer as for the first block alone (4.05, 4.00 ...),
            # without reassembling the rest.
            return await self.respond(request)
        return refusal

    @property
    def read_generation(self) -> int:
        """Changes whenever the answer to a GET may change: the tree's ``generation`` (every value,
        instance and target-memory byte) and this face's own Write-Attributes (a Discover shows them).
        The fast path replays a GET's kept reply while it holds; no other state of the face enters a
        GET's answer (the caller is the face's; ``/.well-known/core`` and ``/bs`` never reach the fast
        path)."""
        return self.tree.generation + self.attributes.generation

    def resolves(self, path: tuple[str, ...]) -> bool:
        """Whether the model names a target at ``path`` (the fast path serves only those)."""
        try:
            self._parse(path)
        except _PathError:
            return False
        return True

    @property
    def block2_cache(self) -> Any:
        """aiocoap's (bounded) store of block-wise responses, for answers rendered outside its pipeline."""
        return self._block2

    def _refusal(self, request: aiocoap.Message) -> Reply | None:
        """The answer to a request that must not reach block-wise reassembly or rendering, if any
        (``_RENDER_ALONE``: render it as it is, without reassembly)."""
        opt = request.opt
        plain = True
        for option in opt.option_list():
            number = option.number
            if number in _PLAIN_OPTIONS:
                continue
            if number.is_critical() and number not in _PROCESSED_CRITICAL:
                return _error(Code.BAD_OPTION, f"critical option {int(number)} is not supported")
            plain = False
        if plain and not request.payload:
            return None  # the common GET: nothing below applies
        if opt.proxy_uri is not None or opt.proxy_scheme is not None:
            return _error(Code.PROXYING_NOT_SUPPORTED, "this server is not a proxy")
        block1, block2 = opt.block1, opt.block2
        if request.remote.scheme == "coap":  # UDP
            for block in (block1, block2):
                # Size exponent 7 is BERT, defined for reliable transports only (RFC 8323).
                if block is not None and block.is_bert:
                    return _error(Status.BAD_REQUEST, "block size exponent 7 (BERT) is not defined over UDP")
        if not request.payload and block1 is None and opt.size1 is None:
            return None
        extent = len(request.payload)
        if block1 is not None:
            extent += block1.block_number * block1.size
        extent = max(extent, opt.size1 or 0)
        cap = self._body_cap(request)
        if extent <= cap:
            return None
        if cap == 0:
            return _RENDER_ALONE
        response = _error(Code.REQUEST_ENTITY_TOO_LARGE, f"this target takes at most {cap} bytes")
        response.opt.size1 = cap
        return response

    def _build_body_caps(self) -> dict[tuple[int, int | None, str | None], int]:
        """Per (object, resource, addressed form or None) the largest body a write or execute may carry
        (codec.values.max_body_size over the forms it accepts); resources that take none are absent."""
        caps: dict[tuple[int, int | None, str | None], int] = {}
        for obj in self.model.objects.values():
            for res in obj.resources.values():
                if not res.operations & {Operation.WRITE, Operation.EXECUTE}:
                    continue
                caps[(obj.id, res.id, None)] = max(max_body_size(form) for form in res.forms)
                for form in res.forms:
                    caps[(obj.id, res.id, form.alias)] = max_body_size(form)
            # An instance write or a Create carries each writable resource once, in any LwM2M format.
            writable = [r for r in obj.resources.values() if Operation.WRITE in r.operations]
            caps[(obj.id, None, None)] = RECORD_OVERHEAD + sum(
                2 * max(max_body_size(form) for form in r.forms) + RECORD_OVERHEAD for r in writable
            )
        return caps

    def _body_cap(self, request: aiocoap.Message) -> int:
        """The largest body the request's method may carry to its target; 0 for none (or no target)."""
        operation = _OPERATIONS.get(request.code)
        if operation not in (Operation.WRITE, Operation.EXECUTE):
            return 0
        try:
            target = self._parse(tuple(request.opt.uri_path))
        except _PathError:
            return 0
        if target.resource is None:
            return self._body_caps.get((target.obj.id, None, None), 0)
        if operation not in target.resource.operations:
            return 0
        alias = None if target.form is None else target.form.alias
        cap = self._body_caps.get((target.obj.id, target.resource.id, alias), 0)
        cf = request.opt.content_format
        if cap and cf is not None and int(cf) in LWM2M_FORMATS:
            # One record: the value (base64 at worst) with its name and base name around it.
            return 2 * cap + 2 * RECORD_OVERHEAD
        return cap

    # ------------------------------------------------------------------ rendering

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        """A request's answer, with the fault plan's forced status and the trace (notifications are
        rendered by ``_render`` alone: they are not requests)."""
        if not self.trace.active and not self.faults.active:
            return await self._render(request)
        started = time.perf_counter()
        decision = self.faults.for_request(request)
        if decision is not None and decision.status is not None:
            response = _error(Code(decision.status), "fault injected").to_message()
        else:
            response = await self._render(request)
        self._traced(request, response, started, None if decision is None else decision.label)
        return response

    def _traced(
        self, request: aiocoap.Message, response: aiocoap.Message | Reply, started: float, fault: str | None
    ) -> None:
        if not self.trace.active:
            return
        extra: dict[str, Any] = {}
        if request.payload and request.code in (Code.PUT, Code.POST) and not self._is_secret(request):
            extra["body"] = request.payload.hex()  # for ``trace replay``; never a credential's
            if request.opt.content_format is not None:
                extra["content_format"] = int(request.opt.content_format)
        self.trace.record(
            "coap",
            request.remote.hostinfo,
            "/" + "/".join(request.opt.uri_path),
            str(request.code),
            int(response.code),
            request_bytes=len(request.payload),
            response_bytes=len(response.payload),
            latency_ms=(time.perf_counter() - started) * 1000,
            fault=fault,
            **extra,
        )

    def _is_secret(self, request: aiocoap.Message) -> bool:
        """True unless the request's target is a resource that is not a credential (a path that does not
        parse counts as secret: its body is not recorded)."""
        try:
            target = self._parse(tuple(request.opt.uri_path))
        except _PathError:
            return True
        resource = target.resource
        return resource is None or resource.secret

    async def _render(self, request: aiocoap.Message) -> aiocoap.Message:
        return (await self.respond(request)).to_message()

    async def respond(self, request: aiocoap.Message) -> Reply:
        """The answer to a request (both paths render through here; ``render`` adds the fault plan and
        the trace, and the fast path steps aside while either is active)."""
        path = tuple(request.opt.uri_path)
        if path == (".well-known", "core"):
            return self._render_link_format(request)
        if path == (BOOTSTRAP_PATH,):
            return self._bootstrap_finish(request)
        try:
            target = self._parse(path)
        except _PathError as exc:
            return _error(exc.status, exc.diagnostic)
        operation = _OPERATIONS.get(request.code)
        if operation is None:
            return _error(Status.METHOD_NOT_ALLOWED, f"{request.code} is not supported")
        if operation is Operation.WRITE and request.opt.uri_query and not request.payload:
            return await self._write_attributes(request, target)
        if request.opt.if_match or request.opt.if_none_match:
            failed = await self._precondition_failed(request, target)
            if failed is not None:
                return failed
        if target.resource is None:
            return await self._render_container(request, target, operation)
        return await self._render_resource(request, target, operation)

    async def _render_container(
        self, request: aiocoap.Message, target: _Target, operation: Operation
    ) -> Reply:
        """An object or an instance: read (LwM2M formats, or Discover with link-format), written
        (PUT replaces, POST updates, both with the resources given), created (POST on the object), or
        deleted (DELETE on an instance)."""
        if operation is Operation.READ:
            return await self._read_container(request, target)
        multiple = target.obj.multiple
        if operation is Operation.EXECUTE and multiple and target.instance_id is None:
            return await self._create(request, target)
        if (
            operation is Operation.EXECUTE
            and multiple
            and not request.payload
            and request.opt.content_format is None
        ):
            # POST /obj/{id} with no body: a Create naming its instance id (LwM2M 1.0 servers send it).
            return await self._create(request, target)
        if self.bootstrap_finish is not None and multiple:
            bootstrapped = await self._bootstrap_write_or_delete(request, target, operation)
            if bootstrapped is not None:
                return bootstrapped
        if operation is Operation.DELETE and multiple and target.instance_id is not None:
            response = await self.tree.handle(
                Request(Operation.DELETE, target.obj.id, target.instance_id, caller=self._caller_for(request))
            )
            if not response.status.is_success:
                return _error(response.status, response.diagnostic)
            self.attributes.forget_instance(target.obj.id, target.instance_id)
            return _message(response.status)
        if operation in (Operation.WRITE, Operation.EXECUTE) and (
            target.instance_id is not None or not multiple
        ):
            records = self._container_records(request, target)
            if isinstance(records, Reply):
                return records
            return await self._write_records(request, target.obj, target.instance_id, records)
        return _error(
            Status.METHOD_NOT_ALLOWED, "an object is read or created, an instance read, written or deleted"
        )

    async def _read_container(self, request: aiocoap.Message, target: _Target) -> Reply:
        accept = int(request.opt.accept) if request.opt.accept is not None else SENML_JSON
        if accept == LINK_FORMAT:
            return await self._discover(request, target)
        if accept not in LWM2M_FORMATS:
            offered = ", ".join(str(cf) for cf in (*LWM2M_FORMATS, LINK_FORMAT))
            return _error(Status.NOT_ACCEPTABLE, f"instances and objects are offered as {offered}")
        response = await self.tree.handle(
            Request(Operation.READ, target.obj.id, target.instance_id, caller=self._caller_for(request))
        )
        if not response.status.is_success:
            return _error(response.status, response.diagnostic)
        assert isinstance(response.value, dict)
        records: list[Record] = []
        if target.obj.multiple and target.instance_id is None:
            for iid, values in response.value.items():
                records += records_of(values, iid)
        else:
            records = records_of(response.value)
        payload = encode_records(target.obj, target.instance_id, None, records, accept, base=target.base)
        return _message(Status.CONTENT, payload, accept)

    def _container_records(self, request: aiocoap.Message, target: _Target) -> list[Record] | Reply:
        """The records of a write to an object or instance, every one a writable resource whose value
        fits the model (checked before anything is written); or the error answer."""
        cf = request.opt.content_format
        if cf is None or int(cf) not in LWM2M_FORMATS:
            offered = ", ".join(str(f) for f in LWM2M_FORMATS)
            return _error(Status.UNSUPPORTED_CONTENT_FORMAT, f"instances are written in {offered}")
        try:
            records = decode_records(target.obj, target.instance_id, None, request.payload, int(cf))
        except Lwm2mFormatError as exc:
            return _error(Status.BAD_REQUEST, str(exc))
        for record in records:
            resource = target.obj.resources[record.resource_id]
            if Operation.WRITE not in resource.operations:
                return _error(Status.METHOD_NOT_ALLOWED, f"{resource.name} is not writable")
            try:
                resource.form.validate(record.value)
            except ValueError as exc:
                return _error(Status.BAD_REQUEST, f"{resource.name}: {exc}")
        return records

    async def _write_records(
        self, request: aiocoap.Message, obj: ObjectDef, instance_id: int | None, records: list[Record]
    ) -> Reply:
        """Each record as one write through the tree (rights, limits and durability are the tree's);
        the first refusal is the answer, the records before it stay written."""
        caller = self._caller_for(request)
        for record in records:
            response = await self.tree.handle(
                Request(Operation.WRITE, obj.id, instance_id, record.resource_id, record.value, caller=caller)
            )
            if not response.status.is_success:
                return _error(response.status, response.diagnostic)
        return _message(Status.CHANGED)

    async def _create(self, request: aiocoap.Message, target: _Target) -> Reply:
        """LwM2M Create: the object's create resource (as the GroupService create, with its rights),
        then the given resources; the new instance is deleted again if a write is refused."""
        obj = target.obj
        create = next((r for r in obj.resources.values() if r.behaviour is Behaviour.CREATE), None)
        if create is None:
            return _error(Status.METHOD_NOT_ALLOWED, f"object {obj.id} has no create operation")
        records: list[Record] = []
        if request.payload or request.opt.content_format is not None:
            checked = self._container_records(request, target)
            if isinstance(checked, Reply):
                return checked
            records = checked
        ids = {r.instance_id for r in records if r.instance_id is not None}
        if target.instance_id is not None:
            ids.add(target.instance_id)
        if len(ids) > 1:
            return _error(Status.BAD_REQUEST, "a Create makes one instance")
        instance_id = ids.pop() if ids else self._free_instance_id(obj)
        if instance_id is None or not obj.valid_instance(instance_id):
            return _error(Status.BAD_REQUEST, f"no instance id of object {obj.id} is free")
        caller = self._caller_for(request)
        created = await self.tree.handle(
            Request(Operation.EXECUTE, obj.id, instance_id, create.id, caller=caller)
        )
        if not created.status.is_success:
            return _error(created.status, created.diagnostic)
        written = await self._write_records(request, obj, instance_id, records)
        if not Code(written.code).is_successful():
            await self.tree.handle(Request(Operation.DELETE, obj.id, instance_id, caller=MAINTENANCE))
            return written
        response = _message(Status.CREATED)
        response.opt.location_path = (str(obj.id), str(instance_id))
        return response

    def _bootstrap_finish(self, request: aiocoap.Message) -> Reply:
        """Bootstrap-Finish (``POST /bs``): the bootstrap server is done; 4.04 when none is at work."""
        finish = self.bootstrap_finish
        if finish is None:
            return _error(Status.NOT_FOUND, "no bootstrap is under way")
        if request.code != Code.POST:
            return _error(Status.METHOD_NOT_ALLOWED, "Bootstrap-Finish is a POST")
        self.bootstrap_finish = None
        finish()
        return _message(Status.CHANGED)

    async def _bootstrap_write_or_delete(
        self, request: aiocoap.Message, target: _Target, operation: Operation
    ) -> Reply | None:
        """Bootstrap-Write of an instance the device lacks creates it; Bootstrap-Delete of an object
        deletes its instances (TS 1.1 Core section 5.2.7). None: the request is served as usual."""
        obj, caller = target.obj, self._caller_for(request)
        if operation is Operation.WRITE and target.instance_id is not None:
            if self.tree.live(obj.id, target.instance_id) is not None:
                return None
            created = await self._create(request, target)
            return _message(Status.CHANGED) if created.code == Code.CREATED else created
        if operation is Operation.DELETE and target.instance_id is None:
            for iid in self.tree.instance_ids(obj.id):
                deleted = await self.tree.handle(Request(Operation.DELETE, obj.id, iid, caller=caller))
                if not deleted.status.is_success:
                    return _error(deleted.status, deleted.diagnostic)
                self.attributes.forget_instance(obj.id, iid)
            return _message(Status.DELETED)
        return None

    def _free_instance_id(self, obj: ObjectDef) -> int | None:
        """The lowest instance id not in use, for a Create that names none."""
        assert obj.instance_range is not None
        used = set(self.tree.instance_ids(obj.id))
        low, high = obj.instance_range
        return next((i for i in range(low, high + 1) if i not in used), None)

    async def _render_resource(
        self, request: aiocoap.Message, target: _Target, operation: Operation
    ) -> Reply:
        resource = target.resource
        assert resource is not None
        value: object = None
        form = target.form
        accept = request.opt.accept
        if operation is Operation.READ:
            if accept is not None and int(accept) == LINK_FORMAT and resource.readable:
                return await self._discover(request, target)
            if accept is not None and int(accept) not in (*VALUE_FORMATS, *LWM2M_FORMATS):
                offered = ", ".join(str(cf) for cf in (*VALUE_FORMATS, *LWM2M_FORMATS, LINK_FORMAT))
                return _error(Status.NOT_ACCEPTABLE, f"offered: {offered}")
        elif operation in (Operation.WRITE, Operation.EXECUTE) and operation in resource.operations:
            try:
                cf = request.opt.content_format
                if cf is not None and int(cf) in LWM2M_FORMATS:
                    form, value = self._decode_one(target, resource, request.payload, int(cf))
                else:
                    form, value = decode_representation(
                        resource, request.payload, None if cf is None else int(cf), target.form
                    )
            except Lwm2mFormatError as exc:
                return _error(Status.BAD_REQUEST, str(exc))
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
                caller=self._caller_for(request),
                form=form,
            )
        )
        if not response.status.is_success:
            return _error(response.status, response.diagnostic)
        if operation is not Operation.READ:
            return _message(response.status)
        content_format = TEXT if accept is None else int(accept)
        if content_format in LWM2M_FORMATS:
            record = Record(None, resource.id, response.value)
            payload = encode_records(target.obj, target.instance_id, resource.id, [record], content_format)
        else:
            payload = encode_representation(form or resource.form, response.value, content_format)
        message = _message(response.status, payload, content_format)
        message.opt.etag = entity_tag(response.value)
        return message

    def _decode_one(
        self, target: _Target, resource: ResourceDef, payload: bytes, cf: int
    ) -> tuple[Form, Any]:
        """A resource write in an LwM2M format: exactly one record, for this resource."""
        records = decode_records(target.obj, target.instance_id, resource.id, payload, cf)
        if len(records) != 1:
            raise Lwm2mFormatError(f"a write of {resource.name} carries one value, not {len(records)}")
        return target.form or resource.form, records[0].value

    # ------------------------------------------------------------------ conditional requests

    async def _precondition_failed(self, request: aiocoap.Message, target: _Target) -> Reply | None:
        """4.12 unless If-Match / If-None-Match hold (RFC 7252 section 5.10.8), else None.

        The target exists when the caller can read it (a write-only resource: when its instance
        exists); its ETag is the value's (``entity_tag``), as GET sends it. Nothing awaits between this
        read and the request's own dispatch, so no other request changes the target in between.
        """
        resource = target.resource
        readable = resource is not None and resource.readable
        current = await self.tree.handle(
            Request(
                Operation.READ,
                target.obj.id,
                target.instance_id,
                resource.id if readable and resource is not None else None,
                caller=self._caller_for(request),
            )
        )
        if current.status is Status.NOT_FOUND:
            exists, etag = False, None
        elif current.status.is_success:
            exists, etag = True, entity_tag(current.value) if readable else None
        else:
            return _error(current.status, current.diagnostic)
        if request.opt.if_none_match and exists:
            return _error(Code.PRECONDITION_FAILED, "the target exists (If-None-Match)")
        if_match = list(request.opt.if_match)
        if if_match and not (exists and any(tag == b"" or tag == etag for tag in if_match)):
            return _error(Code.PRECONDITION_FAILED, "no If-Match entity tag matches the target")
        return None

    # ------------------------------------------------------------------ discovery

    def _instance_ids(self, obj: ObjectDef) -> list[int]:
        return self.tree.instance_ids(obj.id) if obj.multiple else [0]

    def _render_link_format(self, request: aiocoap.Message) -> Reply:
        """``/.well-known/core`` from the model and the live instances, filtered by the query (RFC
        6690 section 4.1); aiocoap sends it block-wise when it exceeds a block."""
        if request.code != Code.GET:
            return _error(Status.METHOD_NOT_ALLOWED, "only GET is allowed on /.well-known/core")
        if request.opt.accept is not None and int(request.opt.accept) != LINK_FORMAT:
            return _error(Status.NOT_ACCEPTABLE, "offered: application/link-format (40)")
        links = filter_links(well_known_links(self.model, self._instance_ids), list(request.opt.uri_query))
        if isinstance(links, str):
            return _error(Status.BAD_REQUEST, links)
        return _message(Status.CONTENT, render_links(links), LINK_FORMAT)

    async def _unreadable(
        self, request: aiocoap.Message, target: _Target, resource_id: int | None
    ) -> Reply | None:
        """The refusal of a read of the target by this request's caller, or None when it may read it
        (Discover and Write-Attributes need read rights on what they address)."""
        readable = await self.tree.handle(
            Request(
                Operation.READ,
                target.obj.id,
                target.instance_id,
                resource_id,
                caller=self._caller_for(request),
            )
        )
        return None if readable.status.is_success else _error(readable.status, readable.diagnostic)

    async def _discover(self, request: aiocoap.Message, target: _Target) -> Reply:
        """LwM2M Discover of an object, instance or resource the caller may read."""
        resource_id = None if target.resource is None else target.resource.id
        refused = await self._unreadable(request, target, resource_id)
        if refused is not None:
            return refused
        links = discover(
            target.obj, target.instance_id, resource_id, self._instance_ids(target.obj), self.attributes
        )
        return _message(Status.CONTENT, render_links(links), LINK_FORMAT)

    async def _write_attributes(self, request: aiocoap.Message, target: _Target) -> Reply:
        """LwM2M Write-Attributes: a PUT with the attributes as Uri-Query and no payload, on a target
        the caller may read; observations under it take the new attributes at once."""
        resource = target.resource
        if resource is not None and not resource.readable:
            return _error(Status.METHOD_NOT_ALLOWED, f"{resource.name} is not readable, so not observable")
        resource_id = None if resource is None else resource.id
        refused = await self._unreadable(request, target, resource_id)
        if refused is not None:
            return refused
        path: Path = (target.obj.id, target.instance_id, resource_id)
        numeric = resource is not None and resource.form.value_type is ValueType.INTEGER
        try:
            changes = parse_write_attributes(
                request.opt.uri_query, resource_level=resource is not None, numeric=numeric
            )
            self.attributes.write(path, changes)
        except AttributeError_ as exc:
            return _error(Status.BAD_REQUEST, str(exc))
        for watchers in self._observations.values():
            for observation in watchers:
                if _under(observation.key, path):
                    observation.retune(self.attributes.effective(observation.key))
        return _message(Status.CHANGED)

    # ------------------------------------------------------------------ observe

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        if request.code != Code.GET:
            return _decline(serverobservation)
        try:
            target = self._parse(tuple(request.opt.uri_path))
        except _PathError:
            return _decline(serverobservation)
        if target.resource is not None and not target.resource.readable:
            return _decline(serverobservation)
        key = (target.obj.id, target.instance_id, None if target.resource is None else target.resource.id)
        peer: Hashable = request.remote
        per_peer = self._observers_per_peer.get(peer, 0)
        if (
            self._observer_total >= self.limits.max_observers
            or per_peer >= self.limits.max_observers_per_peer
        ):
            self.limited_log.warning(
                "observer cap", "coap: observer cap reached; a GET was answered without observing"
            )
            return _decline(serverobservation)
        observation = _Observation(self, request, serverobservation, key)
        self._observations[key].add(observation)
        self._observers_per_peer[peer] = per_peer + 1
        self._observer_total += 1

        def cancel() -> None:
            watchers = self._observations.get(key)
            if watchers is None or observation not in watchers:
                return
            observation.stop()
            watchers.discard(observation)
            if not watchers:
                del self._observations[key]
            self._observer_total -= 1
            left = self._observers_per_peer.pop(peer) - 1
            if left:
                self._observers_per_peer[peer] = left

        serverobservation.accept(cancel)
        attributes = self.attributes.effective(key)
        if not attributes.empty:
            observation.retune(attributes, await self._observed_number(observation))

    def _on_change(self, event: ChangeEvent) -> None:
        keys: list[tuple[int, int | None, int | None]] = [
            (event.object_id, event.instance_id, rid) for rid in event.resource_ids
        ]
        keys.append((event.object_id, event.instance_id, None))
        if event.instance_id is not None:
            keys.append((event.object_id, None, None))
        observations = [o for key in keys for o in self._observations.get(key, ())]
        immediate = [o for o in observations if o.gate is None]
        for observation in observations:
            if observation.gate is not None:
                observation.changed()
        if immediate:
            self._spawn(self._notify(immediate))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _timer(self, at: float, callback: Callable[[], None]) -> Any:
        delay = max(0.0, at - self._clock())
        if self._call_later is not None:
            return self._call_later(delay, callback)
        return asyncio.get_running_loop().call_later(delay, callback)

    async def drain(self) -> None:
        """Wait until every notification under way has gone out (for tests with an injected clock)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _notify(self, observations: list[_Observation]) -> None:
        """Render each distinct observed request once, and send a copy to each of its observers.

        Every ``NOTIFY_BATCH`` notifications the loop gets a turn, so requests that arrive meanwhile are
        served between batches instead of after thousands of notifications.
        """
        rendered: dict[Hashable, aiocoap.Message] = {}
        for index, observation in enumerate(observations, 1):
            response = rendered.get(observation.shape)
            if response is None:
                response = rendered[observation.shape] = await self._render(observation.request)
            observation.send(_clone(response))
            if index % NOTIFY_BATCH == 0:
                await asyncio.sleep(0)

    async def _observed_number(self, observation: _Observation) -> float | None:
        """The value a threshold or step compares: an integer resource's, else None."""
        obj_id, instance_id, resource_id = observation.key
        if resource_id is None:
            return None
        resource = self.model.objects[obj_id].resources[resource_id]
        if resource.form.value_type is not ValueType.INTEGER:
            return None
        response = await self.tree.handle(
            Request(
                Operation.READ, obj_id, instance_id, resource_id, caller=self._caller_for(observation.request)
            )
        )
        return float(response.value) if isinstance(response.value, int) else None

    @property
    def observation_count(self) -> int:
        return self._observer_total

    def end_observations(self, reason: str) -> int:
        """End every observation with a final 5.03 (RFC 7641 section 3.2: an error ends it), as a
        rebooting device forgets its observers; returns how many ended."""
        ended = [o for watchers in self._observations.values() for o in watchers]
        self._observations.clear()
        self._observers_per_peer.clear()
        self._observer_total = 0
        for observation in ended:
            observation.retune(Attributes())  # its pmin/pmax timers end with it
            observation.serverobservation.trigger(_error(Code.SERVICE_UNAVAILABLE, reason).to_message())
        return len(ended)

    def held(self) -> dict[str, int]:
        """How much peer-driven state the face holds now (for tests and the benchmarks)."""
        assemblies, completes = self._block1._assemblies, self._block2._completes
        return {
            "observers": self._observer_total,
            "observer_peers": len(self._observers_per_peer),
            "block1": len(assemblies),
            "block2": len(completes),
            "block2_bytes": completes.bytes,
        }


def _number_observations_from_one(pipe: Any) -> None:
    """Shift the Observe numbers of an observation's responses by one (aiocoap numbers them from 0).

    Any start is valid (RFC 7641 section 4.4), but node-coap before 1.0, which LwM2M servers such as
    lwm2m-node-lib ship, keeps only numbers above the last one seen, starting from 0: it drops a first
    response numbered 0, and the server never sees the Observe succeed.
    """
    add_response = pipe.add_response

    def numbered(response: aiocoap.Message, is_last: bool = False) -> None:
        if response.opt.observe is not None:
            response.opt.observe = (response.opt.observe + 1) & 0xFFFFFF
        add_response(response, is_last=is_last)

    pipe.add_response = numbered


def _under(key: Path, path: Path) -> bool:
    """Whether an observation of ``key`` inherits attributes set on ``path``."""
    return key[0] == path[0] and path[1] in (None, key[1]) and path[2] in (None, key[2])


def _decline(serverobservation: Any) -> None:
    """Answer the request without registering it (no Observe option, RFC 7641 section 4.1).

    aiocoap 0.4.17 calls the cancellation callback of every observation request when its rendering
    ends, accepted or not, and one never accepted has none (an AttributeError, logged with a traceback
    by the task). Declining is therefore accepting with nothing to cancel and deregistering at once,
    which aiocoap treats as an early deregistration: the first response goes out alone.
    """
    serverobservation.accept(lambda: None)
    serverobservation.deregister()


class _Observation:
    """One accepted observation: sends its notifications, NON with the periodic CON.

    Without notification attributes each change is sent at once (batched by the face). With them a
    ``NotifyGate`` holds changes back until ``pmin``, drops those under the thresholds, and a timer
    sends the ``pmax`` notification; ``sent_at`` records the face clock of each notification.
    """

    def __init__(self, face: CoapFace, request: aiocoap.Message, serverobservation: Any, key: Path) -> None:
        self.face = face
        self.request = request
        self.serverobservation = serverobservation
        self.key = key
        self.sent = 0
        self.sent_at: list[float] = []
        self.gate: NotifyGate | None = None
        self._evaluation: Any = None
        self._sending: Any = None
        self._pmax: Any = None
        opt = request.opt
        # What the rendering depends on: observers with the same shape get the same notification.
        self.shape: Hashable = (tuple(opt.uri_path), opt.accept, tuple(opt.if_match), opt.if_none_match)

    def send(self, response: aiocoap.Message) -> None:
        self.sent += 1
        self.sent_at.append(self.face._clock())
        if self.sent % self.face.con_every == 0:
            response.mtype = Type.CON
            response.transport_tuning = NOTIFICATION_TUNING
        else:
            response.mtype = Type.NON
        self.serverobservation.trigger(response)

    # ---------------------------------------------------------------- attribute-driven notifications

    def retune(self, attributes: Any, value: float | None = None) -> None:
        """Take new effective attributes (none: back to notifying every change at once)."""
        if attributes.empty:
            self.stop()
            self.gate = None
            return
        if self.gate is None:
            self.gate = NotifyGate(attributes, self.face._clock(), value)
        else:
            self.gate.attributes = attributes
        self._arm_pmax()

    def stop(self) -> None:
        for handle in (self._evaluation, self._sending, self._pmax):
            if handle is not None:
                handle.cancel()
        self._evaluation = self._sending = self._pmax = None

    def changed(self) -> None:
        assert self.gate is not None
        if self._evaluation is None:
            at = self.gate.evaluation_time(self.face._clock())
            self._evaluation = self.face._timer(at, self._evaluate_due)

    def _evaluate_due(self) -> None:
        self._evaluation = None
        self.face._spawn(self._evaluate())

    async def _evaluate(self) -> None:
        gate = self.gate
        if gate is None:
            return
        value = await self.face._observed_number(self)
        at = gate.evaluate(self.face._clock(), value)
        if at is not None and self._sending is None:
            self._sending = self.face._timer(at, self._send_due)

    def _send_due(self) -> None:
        self._sending = None
        self.face._spawn(self._notify_now())

    def _live(self, gate: NotifyGate) -> bool:
        return self.gate is gate

    def _arm_pmax(self) -> None:
        if self._pmax is not None:
            self._pmax.cancel()
            self._pmax = None
        deadline = None if self.gate is None else self.gate.deadline()
        if deadline is not None:
            self._pmax = self.face._timer(deadline, self._pmax_due)

    def _pmax_due(self) -> None:
        self._pmax = None
        if self._sending is None:
            self.face._spawn(self._notify_now())

    async def _notify_now(self) -> None:
        gate = self.gate
        if gate is None:
            return
        response = await self.face._render(self.request)
        value = await self.face._observed_number(self)
        if not self._live(gate):  # cancelled or retuned meanwhile
            return
        self.send(_clone(response))
        gate.sent(self.face._clock(), value)
        self._arm_pmax()


class CoapServer:
    """A running CoAP endpoint: the aiocoap context and the address it is bound to."""

    def __init__(self, context: aiocoap.Context, face: CoapFace, address: tuple[str, int]) -> None:
        self.context = context
        self.face = face
        self.address = address
        self.duplicate_caches: list[DuplicateCache] = []
        self.fast_paths: list[FastPath] = []

    async def close(self) -> None:
        for fast_path in self.fast_paths:
            fast_path.close()
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


async def start_coap_server(
    tree: DeviceTree,
    host: str,
    port: int,
    *,
    caller: Caller = MAINTENANCE,
    oscore: Any = None,
    con_every: int = 10,
    limits: CoapLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
    call_later: CallLater | None = None,
    trace: Trace | None = None,
    faults: FaultInjector | None = None,
    fast_path: bool | None = None,
) -> CoapServer:
    """Bind a UDP CoAP server answering as ``caller``; raises OSError (EADDRINUSE ...) with the address
    in the message.

    ``fast_path`` (default: ``fast_path_default()``) answers plain requests before aiocoap's pipeline
    (``faces.coap.fast_path``); without OSCORE, on a concrete bind address.

    ``oscore`` (an aiocoap CredentialsMap, see ``load_oscore_credentials``) makes aiocoap's OSCORE site
    wrapper unprotect requests before the face sees them; those its contexts authenticate act with
    maintenance rights, every other request as ``caller``. ``clock`` and ``call_later`` time the
    notifications that Write-Attributes hold back or require (the event loop's by default).
    """
    face = CoapFace(
        tree,
        caller=caller,
        authenticated_caller=None if oscore is None else MAINTENANCE,
        con_every=con_every,
        limits=limits,
        clock=clock,
        call_later=call_later,
        trace=trace,
        faults=faults,
    )
    site: Any = face
    if oscore is not None:
        from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

        site = OscoreSiteWrapper(face, oscore)
    transport, bind_host = _transport_for(host)
    try:
        context = await _EmulatorContext.create_server_context(
            site, bind=(bind_host, port), transports=[transport], server_credentials=oscore
        )
    except OSError as exc:
        face.close()
        raise OSError(exc.errno, f"cannot listen for CoAP on {host}:{port}: {exc.strerror}") from None
    server = CoapServer(context, face, _bound_address(context, host))
    detectors = install_duplicate_cache(context)
    server.duplicate_caches = [detector.cache for detector in detectors]
    if (fast_path_default() if fast_path is None else fast_path) and oscore is None:
        for detector in detectors:
            candidate = FastPath(face, detector.manager, detector, RENDER_TASK_NAME)
            # Faults and the trace act in ``render`` and the transport hooks: aiocoap's path (C7).
            candidate.step_aside_when.append(lambda: face.trace.active or face.faults.active)
            if candidate.install(detector.manager.message_interface):
                server.fast_paths.append(candidate)
    install_notification_resets(context, face.limits)
    if not install_datagram_screens(context, face.limited_log, server.fast_paths):
        await server.close()
        raise RuntimeError("the CoAP transport has no receive hook to screen datagrams")
    install_fault_layer(context, face.faults)
    _drain_simple_transports(context)
    return server


def _drain_simple_transports(context: aiocoap.Context) -> None:
    """Read every ``simplesocketserver`` transport's datagrams in batches (``receiver``); ``udp6``
    reads through aiocoap's own recvmsg reader and keeps it."""
    for interface in context.request_interfaces:
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        datagrams = getattr(getattr(message_interface, "_pool", None), "_transport", None)
        if datagrams is not None:
            drain_datagrams(datagrams)
