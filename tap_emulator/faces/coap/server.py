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
``CoapLimits``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
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
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
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
    entity_tag,
    max_body_size,
)
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
from tap_emulator.logsafety import RateLimitedLog
from tap_emulator.model import Behaviour, Form, ObjectDef, Operation, ResourceDef
from tap_emulator.tree import MAINTENANCE, Caller, ChangeEvent, DeviceTree, Request, Response, Status

__all__ = ["CoapFace", "CoapLimits", "start_coap_server"]

log = logging.getLogger(__name__)
# Lines that network input can repeat (junk datagrams, observers past a cap): one per reason per
# interval, per server.
LIMITED_LOG_INTERVAL = 10.0
NOTIFY_BATCH = 64

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


def _error(status: Status | Code, diagnostic: str) -> aiocoap.Message:
    # RFC 7252 5.5.2: a diagnostic payload, UTF-8 text, no content format.
    return aiocoap.Message(code=Code(int(status)), payload=diagnostic.encode("utf-8"))


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
_RENDER_ALONE = aiocoap.Message(code=Code.EMPTY)


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
    ) -> None:
        super().__init__()
        self.tree = tree
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
        self._link_format = self._build_link_format()
        self._body_caps = self._build_body_caps()
        self._tasks: set[asyncio.Task[None]] = set()
        self.limited_log = RateLimitedLog(log, interval=LIMITED_LOG_INTERVAL)

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

    def _caller_for(self, request: aiocoap.Message) -> Caller:
        if self.authenticated_caller is not None and request.remote.authenticated_claims:
            return self.authenticated_caller
        return self.caller

    # ------------------------------------------------------------------ refusals before rendering

    async def render_to_pipe(self, pipe: Any) -> None:
        refusal = self._refusal(pipe.request)
        if refusal is None:
            await super().render_to_pipe(pipe)
            return
        if refusal is _RENDER_ALONE:
            # The method takes no body here: answer as for the first block alone (4.05, 4.00 ...),
            # without reassembling the rest.
            refusal = await self.render(pipe.request)
        pipe.add_response(refusal, is_last=True)

    def _refusal(self, request: aiocoap.Message) -> aiocoap.Message | None:
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

    def _build_body_caps(self) -> dict[tuple[int, int, str | None], int]:
        """Per (object, resource, addressed form or None) the largest body a write or execute may carry
        (codec.values.max_body_size over the forms it accepts); resources that take none are absent."""
        caps: dict[tuple[int, int, str | None], int] = {}
        for obj in self.model.objects.values():
            for res in obj.resources.values():
                if not res.operations & {Operation.WRITE, Operation.EXECUTE}:
                    continue
                caps[(obj.id, res.id, None)] = max(max_body_size(form) for form in res.forms)
                for form in res.forms:
                    caps[(obj.id, res.id, form.alias)] = max_body_size(form)
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
        if target.resource is None or operation not in target.resource.operations:
            return 0
        alias = None if target.form is None else target.form.alias
        return self._body_caps.get((target.obj.id, target.resource.id, alias), 0)

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
        if request.opt.if_match or request.opt.if_none_match:
            failed = await self._precondition_failed(request, target)
            if failed is not None:
                return failed
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
            Request(Operation.READ, target.obj.id, target.instance_id, caller=self._caller_for(request))
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
                caller=self._caller_for(request),
                form=form,
            )
        )
        if not response.status.is_success:
            return _error(response.status, response.diagnostic)
        if operation is not Operation.READ:
            return _message(response.status)
        content_format = TEXT if accept is None else int(accept)
        payload = encode_representation(form or resource.form, response.value, content_format)
        message = _message(response.status, payload, content_format)
        message.opt.etag = entity_tag(response.value)
        return message

    # ------------------------------------------------------------------ conditional requests

    async def _precondition_failed(self, request: aiocoap.Message, target: _Target) -> aiocoap.Message | None:
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
        observation = _Observation(self, request, serverobservation)
        self._observations[key].add(observation)
        self._observers_per_peer[peer] = per_peer + 1
        self._observer_total += 1

        def cancel() -> None:
            watchers = self._observations.get(key)
            if watchers is None or observation not in watchers:
                return
            watchers.discard(observation)
            if not watchers:
                del self._observations[key]
            self._observer_total -= 1
            left = self._observers_per_peer.pop(peer) - 1
            if left:
                self._observers_per_peer[peer] = left

        serverobservation.accept(cancel)

    def _on_change(self, event: ChangeEvent) -> None:
        keys: list[tuple[int, int | None, int | None]] = [
            (event.object_id, event.instance_id, rid) for rid in event.resource_ids
        ]
        keys.append((event.object_id, event.instance_id, None))
        if event.instance_id is not None:
            keys.append((event.object_id, None, None))
        observations = [o for key in keys for o in self._observations.get(key, ())]
        if observations:
            task = asyncio.get_running_loop().create_task(self._notify(observations))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self, observations: list[_Observation]) -> None:
        """Render each distinct observed request once, and send a copy to each of its observers.

        Every ``NOTIFY_BATCH`` notifications the loop gets a turn, so requests that arrive meanwhile are
        served between batches instead of after thousands of notifications.
        """
        rendered: dict[Hashable, aiocoap.Message] = {}
        for index, observation in enumerate(observations, 1):
            response = rendered.get(observation.shape)
            if response is None:
                response = rendered[observation.shape] = await self.render(observation.request)
            observation.send(_clone(response))
            if index % NOTIFY_BATCH == 0:
                await asyncio.sleep(0)

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
            observation.serverobservation.trigger(_error(Code.SERVICE_UNAVAILABLE, reason))
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
    """One accepted observation: sends its notifications, NON with the periodic CON."""

    def __init__(self, face: CoapFace, request: aiocoap.Message, serverobservation: Any) -> None:
        self.face = face
        self.request = request
        self.serverobservation = serverobservation
        self.sent = 0
        opt = request.opt
        # What the rendering depends on: observers with the same shape get the same notification.
        self.shape: Hashable = (tuple(opt.uri_path), opt.accept, tuple(opt.if_match), opt.if_none_match)

    def send(self, response: aiocoap.Message) -> None:
        self.sent += 1
        if self.sent % self.face.con_every == 0:
            response.mtype = Type.CON
            response.transport_tuning = NOTIFICATION_TUNING
        else:
            response.mtype = Type.NON
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
) -> CoapServer:
    """Bind a UDP CoAP server answering as ``caller``; raises OSError (EADDRINUSE ...) with the address
    in the message.

    ``oscore`` (an aiocoap CredentialsMap, see ``load_oscore_credentials``) makes aiocoap's OSCORE site
    wrapper unprotect requests before the face sees them; those its contexts authenticate act with
    maintenance rights, every other request as ``caller``.
    """
    face = CoapFace(
        tree,
        caller=caller,
        authenticated_caller=None if oscore is None else MAINTENANCE,
        con_every=con_every,
        limits=limits,
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
    server.duplicate_caches = install_duplicate_cache(context)
    install_notification_resets(context, face.limits)
    if not install_datagram_screens(context, face.limited_log):
        await server.close()
        raise RuntimeError("the CoAP transport has no receive hook to screen datagrams")
    return server
