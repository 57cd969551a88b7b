"""The CoAP fast path: plain requests answered from the face without aiocoap's per-message pipeline.

aiocoap spends most of a request's ~250 us in its pipeline, not in the resource (coap-notes.md,
"Throughput": options parsed into objects and deep-copied, a Pipe and a task per request, URI
building). For the common request (CON or NON; GET, PUT, POST or DELETE; only Uri-Path, Accept and
Content-Format options; a path the model resolves) this module takes the datagram before aiocoap parses
it (the datagram screen parses it with ``codec.coap`` and hands it over), renders it with the face's
own ``refused`` and ``respond`` (so every rule of the face and the tree applies, in one place;
aiocoap's ``render`` goes through ``respond`` too), and encodes the ``Reply`` itself with the same
header, options and payload aiocoap would send. Everything else goes to aiocoap untouched: the
datagram is handed to aiocoap's receive method as it arrived.

A GET served once is remembered by its shape, the bytes after its token (its options; it has no
payload): the parse, and the reply rendered for it with the face's ``read_generation`` then. The
same bytes from any peer passed the datagram screen then and would again, so the screen's hook asks
``received_known`` first; while the read generation is unchanged (nothing a read can see changed: no
value, instance, rollback, reload, target-memory byte or Write-Attributes), the kept reply goes out
again under the request's message id and token without rendering, and otherwise the request is
rendered as any other. Duplicates are detected before either. Peers choose the shapes, so at most
``CoapLimits.kept_replies`` are kept (the set is emptied when full, as the face's parsed paths are).

What aiocoap's message layer does is done the same way, mostly by calling it:

- duplicates: the message manager's ``DuplicateDetector`` (one cache for both paths; a repeated CON
  gets the stored reply, byte for byte);
- the rendering runs at once, in the datagram's callback; only one that suspends (a write waiting
  for its commit) continues in a task;
- a CON answered within EMPTY_ACK_DELAY is piggybacked on the ACK and its bytes stored for
  duplicates; one that takes longer gets aiocoap's empty ACK, then its response goes out as a CON
  through aiocoap's message manager (retransmitted, as aiocoap does); a NON gets a NON with the
  manager's next message id;
- a response too large for one datagram goes through the face's block2 cache as aiocoap would send it
  (the first block, the rest served by aiocoap from the cache);
- an exception in rendering becomes aiocoap's answer to it (``error_to_message``).

The fast path steps aside (hands the datagram to aiocoap) while ``enabled`` is False, whenever any
predicate in ``step_aside_when`` is true (trace and fault plans register theirs there), for a token
aiocoap holds a request for (a running observation), and for anything it does not serve. It serves
the ``simplesocketserver`` transport (one concrete bind address); wildcard binds (``udp6``) and OSCORE
keep aiocoap's path. ``--coap-fast-path off`` (or ``TAP_EMULATOR_COAP_FAST_PATH=off``) turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.pipe import Pipe, error_to_message

from tap_emulator.codec.coap import ACK, CON, NON, CoapMessage, encode_tail, encode_with_tail
from tap_emulator.faces.coap.message_layer import DuplicateDetector
from tap_emulator.faces.coap.reply import Reply

if TYPE_CHECKING:
    from tap_emulator.faces.coap.server import CoapFace

__all__ = ["FAST_PATH_ENV", "FastPath", "PlainRequest", "fast_path_default"]

log = logging.getLogger(__name__)

FAST_PATH_ENV = "TAP_EMULATOR_COAP_FAST_PATH"
_OFF = frozenset({"off", "0", "no", "false"})

_URI_PATH, _CONTENT_FORMAT, _ACCEPT = int(OptionNumber.URI_PATH), int(OptionNumber.CONTENT_FORMAT), 17
_METHODS = {int(code): code for code in (Code.GET, Code.POST, Code.PUT, Code.DELETE)}
_GET = int(Code.GET)
_EMPTY_ACK_DELAY = TransportTuning().EMPTY_ACK_DELAY
_WELL_KNOWN_CORE = (".well-known", "core")
# uint options of at most two bytes (RFC 7252 table 4); a longer one is aiocoap's to judge.
_MAX_FORMAT_LENGTH = 2


def fast_path_default() -> bool:
    """On unless ``TAP_EMULATOR_COAP_FAST_PATH`` says off (the default of ``--coap-fast-path``)."""
    return os.environ.get(FAST_PATH_ENV, "on").strip().lower() not in _OFF


class _Option:
    """An option as ``CoapFace._refusal`` looks at it (its number)."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = OptionNumber(number)


_OPTION_REFS = {number: _Option(number) for number in (_URI_PATH, _CONTENT_FORMAT, _ACCEPT)}


class _PlainOptions:
    """The options of a plain request, with the attribute names of aiocoap's ``Options``: the served
    ones carry values, every other one the absent value aiocoap gives it."""

    __slots__ = ("_numbers", "accept", "content_format", "uri_path")
    if_match: tuple[bytes, ...] = ()
    if_none_match = False
    observe = None
    block1 = None
    block2 = None
    size1 = None
    proxy_uri = None
    proxy_scheme = None
    uri_query: tuple[str, ...] = ()
    uri_host = None
    uri_port = None
    no_response = None

    def __init__(
        self, uri_path: tuple[str, ...], accept: int | None, content_format: int | None, numbers: list[int]
    ) -> None:
        self.uri_path = uri_path
        self.accept = None if accept is None else ContentFormat(accept)
        self.content_format = None if content_format is None else ContentFormat(content_format)
        self._numbers = numbers

    def option_list(self) -> list[_Option]:
        return [_OPTION_REFS[number] for number in self._numbers]


class PlainRequest:
    """A request the fast path serves, shaped as the face reads an ``aiocoap.Message`` (code, opt,
    payload, remote, token, mtype, mid)."""

    __slots__ = ("code", "mid", "mtype", "opt", "payload", "remote", "token")

    def __init__(
        self, code: Code, mtype: int, mid: int, token: bytes, opt: _PlainOptions, payload: bytes, remote: Any
    ) -> None:
        self.code = code
        self.mtype = mtype
        self.mid = mid
        self.token = token
        self.opt = opt
        self.payload = payload
        self.remote = remote


def _wire_options(response: Reply | aiocoap.Message) -> list[tuple[int, bytes]]:
    if isinstance(response, Reply):
        return response.opt.wire_options()
    return [(int(option.number), option.encode()) for option in response.opt.option_list()]


class _Shape:
    """A plain GET the fast path served before, by the bytes after its token (its options): their
    parse, and the reply last rendered for it with the face's read generation then (None until
    a rendering finishes at once with a reply that fits one datagram)."""

    __slots__ = ("code", "generation", "opt", "size", "tail")

    def __init__(self, opt: _PlainOptions) -> None:
        self.opt = opt
        self.generation: int | None = None
        self.code = 0
        self.tail = b""
        self.size = 0

    def keep(self, reply: Reply, tail: bytes, generation: int) -> None:
        self.code, self.tail, self.size = int(reply.code), tail, len(reply.payload)
        self.generation = generation


class FastPath:
    """The fast path of one UDP transport (see the module docstring)."""

    def __init__(self, face: CoapFace, manager: Any, detector: DuplicateDetector, task_name: str) -> None:
        self.face = face
        self.manager = manager
        self.detector = detector
        self.task_name = task_name
        self.enabled = True
        # Predicates that make every datagram take aiocoap's path while one is true (trace, faults).
        self.step_aside_when: list[Callable[[], bool]] = []
        self.served = 0  # requests answered here
        self.replayed = 0  # of which answered from a shape's kept reply, without rendering
        self.handed_over = 0  # datagrams passed to aiocoap
        self._aiocoap_received: Callable[[Any, bytes], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._shapes: dict[bytes, _Shape] = {}

    def install(self, message_interface: Any) -> bool:
        """Learn where aiocoap takes the transport's datagrams (``received`` hands them there); False if
        the transport is not one the fast path serves. The datagram screen passes datagrams to
        ``received`` (``install_datagram_screens``), so each is parsed once."""
        received = getattr(message_interface, "_received_datagram", None)
        if received is None:
            return False
        self._aiocoap_received = received
        return True

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------------ receiving

    def received(self, address: Any, datagram: bytes, message: CoapMessage) -> None:
        """One screened datagram and its parse: answered here, or handed to aiocoap as it arrived."""
        request = self.plain_request(address, message)
        if request is None:
            self.handed_over += 1
            assert self._aiocoap_received is not None
            self._aiocoap_received(address, datagram)
            return
        shape = None
        if message.code == _GET and not message.payload:
            shapes = self._shapes
            if len(shapes) >= self.face.limits.kept_replies:
                shapes.clear()
            shape = shapes[datagram[4 + len(message.token) :]] = _Shape(request.opt)
        if self.detector.duplicate(address, request.mid, request.mtype == CON, address.send):
            return
        self.served += 1
        self._serve(request, datagram, shape)

    def received_known(self, address: Any, datagram: bytes) -> bool:
        """Serve a GET whose bytes after the token are a shape served before (``received`` remembered
        it: it passed the datagram screen and ``plain_request`` then, and its parse is kept); False
        for any other datagram, which then takes the usual way (screen, ``received``).

        The shape's kept reply is sent again, under this request's message id and token, while the
        face's ``read_generation`` is the one it was rendered at (nothing a read can see has changed);
        otherwise the request is rendered as any other. Duplicates are detected first, as always."""
        if len(datagram) < 4 or datagram[1] != _GET:
            return False
        first = datagram[0]
        start = 4 + (first & 0x0F)
        # Version 1, type CON or NON (bits 01 0x), a token length RFC 7252 allows.
        if first & 0xE0 != 0x40 or start > 12 or len(datagram) < start:
            return False
        shape = self._shapes.get(datagram[start:])
        if shape is None or not self.enabled or any(check() for check in self.step_aside_when):
            return False
        token = datagram[4:start]
        if (token, address) in self.manager.token_manager.incoming_requests:
            return False
        mid = datagram[2] << 8 | datagram[3]
        confirmable = first & 0x30 == 0
        if self.detector.duplicate(address, mid, confirmable, address.send):
            return True
        self.served += 1
        if shape.generation == self.face.read_generation and shape.size <= address.maximum_payload_size:
            self.replayed += 1
            if confirmable:
                reply = encode_with_tail(ACK, shape.code, mid, token, shape.tail)
                address.send(reply)
                self.detector.remember_reply(address, mid, reply)
            else:
                address.send(
                    encode_with_tail(NON, shape.code, self.manager._next_message_id(), token, shape.tail)
                )
            return True
        request = PlainRequest(Code.GET, CON if confirmable else NON, mid, token, shape.opt, b"", address)
        self._serve(request, datagram, shape)
        return True

    def _serve(self, request: PlainRequest, datagram: bytes, shape: _Shape | None) -> None:
        """Render and answer a request; a GET's reply is kept in its shape if nothing changed meanwhile."""
        generation = self.face.read_generation
        # Run the rendering at once, as an eager task would (Python 3.12's eager_task_factory): most
        # requests finish without suspending, and need no task, no timer and no further loop turn.
        rendering = self._render(request, datagram)
        try:
            suspended_on = rendering.send(None)
        except StopIteration as done:
            response = done.value
            tail = None
            if isinstance(response, Reply):
                tail = encode_tail(response.opt.wire_options(), response.payload)
                if shape is not None and generation == self.face.read_generation:
                    shape.keep(response, tail, generation)
            self._send(request, response, late=False, tail=tail)
            return
        task = self.manager.loop.create_task(
            self._finish(request, _Resumed(rendering, suspended_on)), name=self.task_name
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def plain_request(self, address: Any, message: CoapMessage) -> PlainRequest | None:
        """The request if the fast path serves it, else None (aiocoap's)."""
        if not self.enabled or any(check() for check in self.step_aside_when):
            return None
        code = _METHODS.get(message.code)
        if code is None or message.mtype > NON:
            return None
        path: list[str] = []
        accept = content_format = None
        numbers: list[int] = []
        try:
            for number, value in message.options:
                if number == _URI_PATH:
                    path.append(value.decode("utf-8"))
                elif number == _ACCEPT and accept is None and len(value) <= _MAX_FORMAT_LENGTH:
                    accept = int.from_bytes(value, "big")
                elif (
                    number == _CONTENT_FORMAT and content_format is None and len(value) <= _MAX_FORMAT_LENGTH
                ):
                    content_format = int.from_bytes(value, "big")
                else:
                    return None
                numbers.append(number)
        except UnicodeDecodeError:
            return None
        uri_path = tuple(path)
        if uri_path == _WELL_KNOWN_CORE or not self.face.resolves(uri_path):
            return None
        if (message.token, address) in self.manager.token_manager.incoming_requests:
            return None  # aiocoap ends its running request for this token first
        opt = _PlainOptions(uri_path, accept, content_format, numbers)
        return PlainRequest(code, message.mtype, message.mid, message.token, opt, message.payload, address)

    # ------------------------------------------------------------------ answering

    async def _finish(self, request: PlainRequest, rendering: _Resumed) -> None:
        """The rest of a rendering that suspended: an empty ACK if a CON's answer takes too long."""
        late: list[bool] = []
        timer = None
        if request.mtype == CON:
            timer = self.manager.loop.call_later(_EMPTY_ACK_DELAY, self._empty_ack, request, late)
        try:
            response = await rendering
        finally:
            if timer is not None:
                timer.cancel()
        self._send(request, response, late=bool(late))

    def _send(
        self,
        request: PlainRequest,
        response: Reply | aiocoap.Message,
        *,
        late: bool,
        tail: bytes | None = None,
    ) -> None:
        address, token = request.remote, request.token
        if tail is None and not late:
            tail = encode_tail(_wire_options(response), response.payload)
        if request.mtype == CON and not late:
            assert tail is not None
            reply = encode_with_tail(ACK, int(response.code), request.mid, token, tail)
            address.send(reply)
            self.detector.remember_reply(address, request.mid, reply)
        elif request.mtype == CON:
            # After the empty ACK the response is a CON of its own, retransmitted by aiocoap.
            if isinstance(response, Reply):
                response = response.to_message()
            response.token = token
            response.remote = address.as_response_address()
            self.manager.send_message(response, lambda: None)
        else:
            mid = self.manager._next_message_id()
            assert tail is not None
            address.send(encode_with_tail(NON, int(response.code), mid, token, tail))

    def _empty_ack(self, request: PlainRequest, late: list[bool]) -> None:
        late.append(True)
        self.manager._send_empty_ack(request.remote, request.mid, "Response took too long to prepare")

    async def _render(self, request: PlainRequest, datagram: bytes) -> Reply | aiocoap.Message:
        face = self.face
        try:
            response = await face.refused(request)
            if response is None:
                response = await face.respond(request)
            if len(response.payload) > request.remote.maximum_payload_size:
                # Block-wise, as aiocoap would: the first block now, the rest from the face's cache.
                whole = response.to_message()

                async def assembled() -> aiocoap.Message:
                    return whole

                full_request = aiocoap.Message.decode(datagram, request.remote)
                response = await face.block2_cache.extract_or_insert(full_request, assembled)
            return response
        except Exception as exc:  # aiocoap's answer to a failed rendering
            return _error_answer(request, exc)


class _Resumed:
    """Awaiting this continues a coroutine that was already stepped once and suspended on ``first``
    (what it yielded: a future, or None for a bare ``sleep(0)``), forwarding what the awaiting task
    sends or throws, as ``await`` of the coroutine itself would have from that point on."""

    __slots__ = ("coroutine", "first")

    def __init__(self, coroutine: Coroutine[Any, Any, Reply | aiocoap.Message], first: Any) -> None:
        self.coroutine = coroutine
        self.first = first

    def __await__(self) -> Generator[Any, Any, Reply | aiocoap.Message]:
        coroutine, value = self.coroutine, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation and the like, into the coroutine
                try:
                    value = coroutine.throw(exc)
                except StopIteration as done:
                    return cast(Reply | aiocoap.Message, done.value)
            else:
                try:
                    value = coroutine.send(sent)
                except StopIteration as done:
                    return cast(Reply | aiocoap.Message, done.value)


def _error_answer(request: PlainRequest, exc: Exception) -> aiocoap.Message:
    """What aiocoap's ``error_to_message`` answers for ``exc`` (and logs as it does)."""
    answers: list[aiocoap.Message] = []

    def collect(event: Any) -> bool:
        answers.append(event.message)
        return False

    outer = Pipe(request, log)
    outer.on_event(collect)
    error_to_message(outer, log).add_exception(exc)
    return answers[0]
