"""Sans-IO core of the Tap face: one `TapSession` per connection turns request frames into response frames.

The transports (`server.py`) only move bytes; everything a connection remembers lives here: the
logged-in group, the SCRAM handshake in progress, the encrypted channel (key, IVs, frame counter) and
the idle timer. Everything a device shares across connections lives in `TapFace`: the tree, the login
limiter, the clock and the random source (both injected, so tests drive them).

Which requests the session serves itself: the resources of the model whose behaviour is ``session``
(object 1024: login, logout, current group and profile, keep-alive, SCRAM login and proof, IV refresh,
encrypted frame, send-with-IV, initialize, multi-request frame), found by their alias slugs. Every
other request goes to the tree, with the session's group as the caller, so rights, validation and
change events are the tree's, exactly as for CoAP.

Choices where the spec (tap-protocol.md, section F) is silent:

- Login mechanism follows the security mode (/1024//6): ``POST /1024//0`` in none and hash modes,
  ``/1024//40`` + ``/41`` in SCRAM mode; the other mechanism answers METHOD_NOT_ALLOWED (0x85) and is
  not counted as a failed login.
- A wrong password, an unknown user and a wrong SCRAM proof all answer UNAUTHORIZED (0x81), which the
  SDK reports as invalid credentials, and each counts as one failed login of that account from that
  peer (see `tap_emulator.security.lockout`). An attempt the limits refuse answers
  SERVICE_UNAVAILABLE (0xA3, the SDK's "too many login attempts") without being evaluated. The failure
  is counted before the password work is awaited and refunded on success, so concurrent attempts
  cannot slip past the limits. The password checks of one peer run one at a time, so a client
  logging in on several connections at once waits for its own checks instead of being refused by
  them. A malformed login body is BAD_REQUEST (0x80) and is not counted.
- SCRAM: ``/1024//40`` is refused (0xA3) while the limits refuse that peer and account; the proof
  (``/41``) is the attempt that is counted, and is refused while locked like a plain login. A
  handshake expires ``scram_handshake_seconds`` after its ``/40``; a proof after that is UNAUTHORIZED
  and is not evaluated.
- Once a SCRAM session exists, its rights belong to the encrypted channel: requests sent in clear on
  the same connection are served as anonymous (group 0).
- ``/1024//45`` and a proof without a pending ``/40`` answer UNAUTHORIZED outside an encrypted session;
  ``/1024//48`` without a session key answers UNAUTHORIZED in clear; an encrypted frame with a bad
  length, CRC or a counter that does not increase answers BAD_REQUEST in clear; a ``/48`` nested inside
  ``/48`` is BAD_REQUEST.
- A new SCRAM login on an encrypted connection keeps the IVs in use, as the SDK does (it only changes the
  key and resets its counter); logout forgets key and IVs.
- Session lifetime (resource ``session-lifetime`` of the logged-in group, read at each request so a
  change applies at once) is an idle time: every request served refreshes it; 0 means no limit. Its
  unit comes from the profile (seconds by default). An expired session falls back to anonymous before
  the request that finds it expired is served.
- Keep-alive (``GET /1024//4``) answers the logged-in group's session lifetime (0 for anonymous).
- Password resource (``POST /1025/{g}/2``, the credential form pair): which form a body is in is the
  tree's answer (``DeviceTree.wire_form``, the rule beside the credential table in
  ``tap_emulator.security``).
- ``/1024//47`` (initialize, sent in clear by the SDK's ``encryption.start()``) answers a fresh key and
  starts a channel under it with zero IVs, keeping the session's group: the configurator carries on as
  the group it logged in as. Whoever can write into the connection in clear can do the same (the
  Swift SDK documents this resource as NFC only); the emulator serves it on every transport because
  the configurator uses it on every transport.
- A multi-request frame (``/1024//89``) serves its sub-requests in order on this session, each with the
  rights the frame itself has; a sub-request missing its expected status ends the frame.
- Wire instance 0xFFFF of a multi-instance object is instance 65535 (admin) when the object has that
  instance, else no instance (``GET /1029//4``, read profile); instance 0 of a single-instance object is
  accepted like the empty instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from tap_emulator.codec.apdu import (
    NFC_SELECT_ANSWER,
    NO_INSTANCE,
    FrameError,
    Method,
    TapRequest,
    TapStatus,
    decode_inner_request,
    decode_multi_request,
    decode_request,
    encode_multi_response_item,
    encode_response,
    is_nfc_select,
)
from tap_emulator.codec.secure_frame import SecureChannel, SecureFrameError
from tap_emulator.codec.values import RepresentationError, decode_wire, encode_wire
from tap_emulator.config import ANONYMOUS_GROUP, SecurityMode
from tap_emulator.faults import FaultDecision, FaultInjector
from tap_emulator.logsafety import RateLimitedLog
from tap_emulator.model import Behaviour, Form, ObjectDef, Operation, ResourceDef, ValueError_
from tap_emulator.security import (
    USERNAME_LENGTH,
    AuthenticationFailed,
    ScramKeys,
    ScramServerHandshake,
    check_hash_login,
    check_plain_login,
    login_name,
)
from tap_emulator.security.lockout import LoginLimiter, Reservation, peer_key
from tap_emulator.trace import TRACE_LOGGER, Trace
from tap_emulator.tree import Caller, DeviceTree, Request

__all__ = ["TRACE_LOGGER", "TapAnswer", "TapFace", "TapSession"]

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)  # lines that a peer's bad frames can repeat
_LIMIT_LOG_INTERVAL: Final = 10.0

T = TypeVar("T")

_OPERATIONS: Final = {Method.GET: Operation.READ, Method.PUT: Operation.WRITE, Method.POST: Operation.EXECUTE}
_IV_LENGTH: Final = 16
_SESSION_KEY_LENGTH: Final = 16
_DECOY_KEY_LENGTH: Final = 32
_NONCE_LENGTH: Final = 4
_KNOWN_STATUSES: Final = frozenset(int(s) for s in TapStatus)


def _tap_status(status: int) -> int:
    """The tree's status as a Tap status byte: the same byte when the Tap has it, else its class."""
    if status in _KNOWN_STATUSES:
        return status
    if status < 0x80:
        return TapStatus.CHANGED
    return TapStatus.BAD_REQUEST if status < 0xA0 else TapStatus.INTERNAL_SERVER_ERROR


async def _in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


@dataclass(frozen=True, slots=True)
class TapAnswer:
    """What the transport sends for one request frame: ``frames`` in order (none when the request was
    lost to a fault, two when duplicated), then closes the connection if ``close``."""

    frames: tuple[bytes, ...]
    close: bool = False


@dataclass(slots=True)
class _Reply:
    status: int
    data: bytes = b""


@dataclass(slots=True)
class _PendingHandshake:
    """A SCRAM login between its ``/40`` and its proof: who it is for and when it started."""

    handshake: ScramServerHandshake
    account: str
    started: float


_Handler = Callable[["TapSession", TapRequest, ResourceDef, bool], Awaitable[_Reply]]


class TapFace:
    """What every Tap session of one device shares: tree, login limiter, clock, randomness and settings.

    ``clock`` returns monotonic seconds; ``random_bytes(n)`` returns n random bytes (nonces, IVs and the
    decoy key of unknown users are drawn from it); ``offload`` runs heavy hashing off the event loop.
    """

    def __init__(
        self,
        tree: DeviceTree,
        *,
        limiter: LoginLimiter,
        clock: Callable[[], float],
        random_bytes: Callable[[int], bytes],
        lifetime_unit_seconds: float = 1.0,
        handshake_seconds: float = 30.0,
        trace: Trace | None = None,
        faults: FaultInjector | None = None,
        offload: Callable[[Callable[[], Any]], Awaitable[Any]] = _in_thread,
    ) -> None:
        self.tree = tree
        self.model = tree.model
        self.limiter = limiter
        self.clock = clock
        self.random_bytes = random_bytes
        self.lifetime_unit_seconds = lifetime_unit_seconds
        self.handshake_seconds = handshake_seconds
        # Failed logins are network input: their log line is rate-limited device-wide.
        self.limit_log = RateLimitedLog(log, interval=_LIMIT_LOG_INTERVAL, clock=clock)
        # Peers with a password check running or waiting; an entry lives only as long as its users.
        self._check_locks: dict[str, asyncio.Lock] = {}
        self._check_users: Counter[str] = Counter()
        self.trace = trace or Trace()
        self.faults = faults or FaultInjector(clock)
        self._session_ids = itertools.count(1)
        self.offload = offload
        self.decoy_key = random_bytes(_DECOY_KEY_LENGTH)
        # Open sessions and how to close each one's connection (insertion order: oldest first).
        self._sessions: dict[TapSession, Callable[[], None] | None] = {}
        # Session resources by alias slug: the model names them, the session serves them.
        self.handlers: dict[int, _Handler] = {}
        iface = tree.interface_object
        for slug, handler in _SESSION_HANDLERS.items():
            entry = iface.forms_by_alias.get(slug)
            if entry is None or entry[0].behaviour is not Behaviour.SESSION:
                raise LookupError(f"the model's object {iface.id} has no session resource {slug!r}")
            self.handlers[entry[0].id] = handler
        self.frame_carriers = frozenset(iface.forms_by_alias[slug][0].id for slug in _FRAME_CARRIERS)

    def open_session(
        self, peer: str, address: str | None = None, *, disconnect: Callable[[], None] | None = None
    ) -> TapSession:
        """A new connection: anonymous, no key, no handshake.

        ``peer`` names it in logs; ``address`` (the client's IP address) is whose failed logins it
        shares. Without one, the connection is its own peer. ``disconnect`` closes the transport's
        connection; `end_sessions` calls it (a reboot).
        """
        session = TapSession(self, peer, address)
        self._sessions[session] = disconnect
        return session

    @property
    def session_count(self) -> int:
        """Sessions whose connection is open."""
        return len(self._sessions)

    def end_sessions(self, *, keep: object | None = None) -> int:
        """End every session but ``keep`` and close their connections, as a rebooting Tap drops them;
        returns how many ended."""
        ended = [s for s in self._sessions if s is not keep]
        for session in ended:
            disconnect = self._sessions.pop(session, None)
            session.close()
            if disconnect is not None:
                disconnect()
        return len(ended)

    def _forget(self, session: TapSession) -> None:
        self._sessions.pop(session, None)

    @property
    def sessions(self) -> list[TapSession]:
        """The open sessions, oldest first (the control API lists them)."""
        return list(self._sessions)

    def end_session(self, session_id: int) -> bool:
        """End one session and close its connection (the control API); False if none has that id."""
        session = next((s for s in self._sessions if s.id == session_id), None)
        if session is None:
            return False
        disconnect = self._sessions.pop(session, None)
        session.close()
        if disconnect is not None:
            disconnect()
        return True

    @contextlib.asynccontextmanager
    async def one_check_per_peer(self, peer: str) -> AsyncIterator[None]:
        """Serialise the password checks of one peer (see the module docstring)."""
        lock = self._check_locks.setdefault(peer, asyncio.Lock())
        self._check_users[peer] += 1
        try:
            async with lock:
                yield
        finally:
            self._check_users[peer] -= 1
            if not self._check_users[peer]:
                del self._check_users[peer]
                del self._check_locks[peer]

    def lifetime_seconds(self, group_id: int) -> float:
        """Idle time after which a session of ``group_id`` ends; 0 means no limit."""
        account = self.tree.account(group_id)
        if account is None:
            return 0.0
        return float(account.session_lifetime) * self.lifetime_unit_seconds

    def scram_lookup(self, name: str) -> tuple[int, ScramKeys] | None:
        account = self.tree.find_account(name)
        if account is None or account.credential is None or account.credential.scram is None:
            return None
        return account.group_id, account.credential.scram


class TapSession:
    """One connection's state machine: `handle_frame` takes a request frame and returns the response frame.

    Frames are handled one at a time, in order (the SDK waits for each answer). Never raises: a malformed
    frame gets BAD_REQUEST and an unexpected failure INTERNAL_SERVER_ERROR (logged).
    """

    def __init__(self, face: TapFace, peer: str, address: str | None = None) -> None:
        self.face = face
        self.id = next(face._session_ids)
        self.peer = peer
        self.transport = peer.partition(" ")[0]  # "tcp" or "ws": the trace's and the faults' face
        self.frames_answered = 0
        self.opened_at = time.time()
        self.limiter_peer = peer if address is None else peer_key(address)
        self.group_id = ANONYMOUS_GROUP
        self._channel: SecureChannel | None = None
        self._ivs: tuple[bytes, bytes] | None = None  # (client IV, Tap IV) in use on the channel
        self._handshake: _PendingHandshake | None = None
        self._last_activity = face.clock()
        self._deferred: list[Callable[[], None]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"TapSession({self.peer}, group={self.group_id}, encrypted={self._channel is not None})"

    @property
    def encrypted(self) -> bool:
        """True once a SCRAM login has set a session key (until logout or expiry)."""
        return self._channel is not None

    def close(self) -> None:
        """The connection is gone (or the device dropped it): forget keys and the handshake; any frame
        still arriving is answered SERVICE_UNAVAILABLE, as a rebooting Tap serves nothing."""
        self._closed = True
        self._end_session()
        self.face._forget(self)

    # ------------------------------------------------------------------ frames

    async def answer(self, frame: bytes) -> TapAnswer:
        """``handle_frame`` with the device's fault plan applied (the transports call this)."""
        faults = self.face.faults
        if not faults.active:
            self.frames_answered += 1
            return TapAnswer((await self.handle_frame(frame),))
        path, method = _outer_path(frame)
        decision = faults.decide(self.transport, path, self.frames_answered)
        if decision.drop:
            self._record(path, method, None, len(frame), 0, 0.0, decision.label)
            return TapAnswer((), close=decision.close)
        if decision.delay:
            await asyncio.sleep(decision.delay)
        if decision.status is not None:
            response = encode_response(decision.status)
            self._record(path, method, decision.status, len(frame), len(response), 0.0, decision.label)
        else:
            response = await self.handle_frame(frame, fault=decision)
        if decision.corrupt:
            response = decision.corrupted(response)
        self.frames_answered += 1
        frames = (response, response) if decision.duplicate else (response,)
        return TapAnswer(frames, close=decision.close)

    async def handle_frame(self, frame: bytes, *, fault: FaultDecision | None = None) -> bytes:
        """Serve one request frame (APDU or NFC SELECT); return the complete response frame."""
        started = time.perf_counter()
        label = None if fault is None else fault.label
        if is_nfc_select(frame):
            self._trace("NFC SELECT", "SELECT", len(frame), 0x90, len(NFC_SELECT_ANSWER), started, label)
            return NFC_SELECT_ANSWER
        if self._closed:
            return encode_response(TapStatus.SERVICE_UNAVAILABLE)
        try:
            request = decode_request(frame)
        except FrameError as exc:
            _limited.debug("malformed frame", "%s: malformed frame: %s", self.peer, exc)
            self._trace("malformed frame", "?", len(frame), TapStatus.BAD_REQUEST, 0, started, label)
            return encode_response(TapStatus.BAD_REQUEST)
        try:
            now = self.face.clock()
            self._expire_if_idle(now)
            reply = await self._serve(request, encrypted=False)
            if self.group_id != ANONYMOUS_GROUP:
                self._last_activity = now
        except Exception:
            log.exception("%s: internal error serving %s", self.peer, request)
            reply = _Reply(TapStatus.INTERNAL_SERVER_ERROR)
        finally:
            self._apply_deferred()
        self._trace(request, None, len(request.payload), reply.status, len(reply.data), started, label)
        return encode_response(reply.status, reply.data)

    def _trace(
        self,
        what: TapRequest | str,
        method: str | None,
        request_size: int,
        status: int,
        data_size: int,
        started: float,
        fault: str | None = None,
        *,
        inner: bool = False,
    ) -> None:
        if not self.face.trace.active:
            return  # nothing is built when no one reads it: this runs for every frame
        if isinstance(what, str):
            path, verb = what, method or "?"
        else:
            path, verb = what.path, what.method.name
        # Sizes only: payloads may hold passwords, keys, proofs or decrypted credentials.
        latency = (time.perf_counter() - started) * 1000
        self._record(path, verb, status, request_size, data_size, latency, fault, encrypted=inner)

    def _record(
        self,
        path: str,
        method: str,
        status: int | None,
        request_size: int,
        data_size: int,
        latency_ms: float,
        fault: str | None,
        *,
        encrypted: bool = False,
    ) -> None:
        trace = self.face.trace
        if not trace.active:
            return
        trace.record(
            self.transport,
            self.peer.partition(" ")[2],
            path,
            method,
            status,
            session=self.id,
            request_bytes=request_size,
            response_bytes=data_size,
            latency_ms=latency_ms,
            fault=fault,
            group=self.group_id,
            encrypted=encrypted,
        )

    def _apply_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for action in deferred:
            action()

    # ------------------------------------------------------------------ session state

    def _end_session(self) -> None:
        self.group_id = ANONYMOUS_GROUP
        self._channel = None
        self._ivs = None
        self._handshake = None

    def _expire_if_idle(self, now: float) -> None:
        if self.group_id == ANONYMOUS_GROUP:
            return
        lifetime = self.face.lifetime_seconds(self.group_id)
        if lifetime > 0 and now - self._last_activity > lifetime:
            log.debug("%s: session of group %d expired after %.1f s idle", self.peer, self.group_id, lifetime)
            self._end_session()

    def _caller(self, encrypted: bool) -> Caller:
        """The rights of a SCRAM session belong to its encrypted channel; clear requests are anonymous."""
        if self._channel is not None and not encrypted:
            return Caller(ANONYMOUS_GROUP, session=self)
        return Caller(self.group_id, session=self)

    def _start_channel(self, key: bytes) -> None:
        channel = SecureChannel(key)
        if self._ivs is not None:
            channel.set_ivs(*self._ivs)
        self._channel = channel

    # ------------------------------------------------------------------ dispatch

    async def _serve(self, request: TapRequest, *, encrypted: bool) -> _Reply:
        face = self.face
        obj = face.model.objects.get(request.object_id)
        if obj is None:
            return _Reply(TapStatus.NOT_FOUND)
        resource = obj.resources.get(request.resource_id)
        if resource is None:
            return _Reply(TapStatus.NOT_FOUND)
        instance = request.instance_id
        if obj.multiple and instance is None and obj.valid_instance(NO_INSTANCE):
            instance = NO_INSTANCE  # 0xFFFF on the wire is also the admin group's id
        elif not obj.multiple and instance == 0:
            instance = None
        operation = _OPERATIONS[request.method]
        if resource.behaviour is Behaviour.SESSION and obj is face.tree.interface_object:
            if instance is not None:
                return _Reply(TapStatus.NOT_FOUND)
            if operation not in resource.operations:
                return _Reply(TapStatus.METHOD_NOT_ALLOWED)
            handler = face.handlers.get(resource.id)
            if handler is None:
                return _Reply(TapStatus.NOT_IMPLEMENTED)
            return await handler(self, request, resource, encrypted)
        return await self._serve_tree(request, obj, resource, instance, operation, encrypted)

    async def _serve_tree(
        self,
        request: TapRequest,
        obj: ObjectDef,
        resource: ResourceDef,
        instance: int | None,
        operation: Operation,
        encrypted: bool,
    ) -> _Reply:
        value: object = None
        form: Form | None = None
        if operation is not Operation.READ and operation in resource.operations:
            form = self.face.tree.wire_form(obj, resource, request.payload)
            try:
                value = decode_wire(form, request.payload)
            except RepresentationError:
                return _Reply(TapStatus.BAD_REQUEST)
        response = await self.face.tree.handle(
            Request(
                operation, obj.id, instance, resource.id, value, caller=self._caller(encrypted), form=form
            )
        )
        status = _tap_status(response.status)
        if operation is not Operation.READ or not response.status.is_success or response.value is None:
            return _Reply(status)
        return _Reply(status, encode_wire(resource.form, response.value))

    # ------------------------------------------------------------------ session resources

    @staticmethod
    def _valid_body(resource: ResourceDef, payload: bytes) -> bool:
        try:
            resource.form.validate(payload)
        except ValueError_:
            return False
        return True

    async def _login(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        face = self.face
        mode = face.tree.security_mode
        if mode is SecurityMode.SCRAM:
            return _Reply(TapStatus.METHOD_NOT_ALLOWED)
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        name = login_name(request.payload[:USERNAME_LENGTH])
        secret = request.payload[USERNAME_LENGTH:]
        async with face.one_check_per_peer(self.limiter_peer):
            # Counted before the PBKDF2 work is awaited: concurrent attempts see it at once.
            reservation = face.limiter.reserve(self.limiter_peer, name, face.clock())
            if reservation is None:
                return _Reply(TapStatus.SERVICE_UNAVAILABLE)
            account = face.tree.find_account(name)
            credential = None if account is None else account.credential
            if mode is SecurityMode.NONE:
                # One PBKDF2 run, also for an unknown user, so timing does not tell the two apart.
                accepted = await face.offload(lambda: check_plain_login(credential, secret))
            else:
                accepted = check_hash_login(credential, secret)
            if not accepted or account is None:
                self._login_failed(reservation)
                return _Reply(TapStatus.UNAUTHORIZED)
            face.limiter.succeeded(reservation, face.clock())
        self._end_session()
        self.group_id = account.group_id
        return _Reply(TapStatus.CHANGED)

    def _login_failed(self, reservation: Reservation) -> None:
        """The failure is already counted; say once in a while when it earned a wait."""
        wait = self.face.limiter.wait(reservation.peer, reservation.account, self.face.clock())
        if wait > 0:
            self.face.limit_log.warning(
                "login-limit", "%s: failed logins; further attempts refused for %.0f s", self.peer, wait
            )

    async def _logout(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        group = self.group_id
        self._handshake = None
        self.group_id = ANONYMOUS_GROUP
        # An encrypted logout is answered under the key it ends.
        self._deferred.append(self._end_session)
        log.debug("%s: group %d logged out", self.peer, group)
        return _Reply(TapStatus.CHANGED)

    async def _current_group(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        return _Reply(TapStatus.CONTENT, encode_wire(resource.form, self._caller(encrypted).group_id))

    async def _current_profile(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        group = self._caller(encrypted).group_id
        account = self.face.tree.account(group) if group is not None else None
        profile = ANONYMOUS_GROUP if group == ANONYMOUS_GROUP or account is None else account.alias
        return _Reply(TapStatus.CONTENT, encode_wire(resource.form, profile))

    async def _keep_alive(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        group = self._caller(encrypted).group_id
        account = self.face.tree.account(group) if group not in (None, ANONYMOUS_GROUP) else None
        lifetime = 0 if account is None else account.session_lifetime
        return _Reply(TapStatus.CONTENT, encode_wire(resource.form, lifetime))

    async def _scram_login(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        face = self.face
        if face.tree.security_mode is not SecurityMode.SCRAM:
            return _Reply(TapStatus.METHOD_NOT_ALLOWED)
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        name = login_name(request.payload[:USERNAME_LENGTH])
        now = face.clock()
        if face.limiter.wait(self.limiter_peer, name, now) > 0:
            self._handshake = None
            return _Reply(TapStatus.SERVICE_UNAVAILABLE)
        handshake = ScramServerHandshake(
            face.scram_lookup, face.decoy_key, decoy_iterations=face.tree.hash_iteration
        )
        server_nonce = int.from_bytes(face.random_bytes(_NONCE_LENGTH), "big")
        try:
            answer = handshake.start(request.payload, server_nonce)
        except AuthenticationFailed:
            return _Reply(TapStatus.BAD_REQUEST)
        self._handshake = _PendingHandshake(handshake, name, now)
        return _Reply(TapStatus.CONTENT, answer)

    async def _scram_proof(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        face = self.face
        pending, self._handshake = self._handshake, None
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        now = face.clock()
        if pending is None or now - pending.started > face.handshake_seconds:
            return _Reply(TapStatus.UNAUTHORIZED)  # no handshake, or an expired one: nothing evaluated
        reservation = face.limiter.reserve(self.limiter_peer, pending.account, now)
        if reservation is None:
            return _Reply(TapStatus.SERVICE_UNAVAILABLE)
        try:
            result = pending.handshake.finish(request.payload)
        except AuthenticationFailed:
            self._login_failed(reservation)
            return _Reply(TapStatus.UNAUTHORIZED)
        face.limiter.succeeded(reservation, now)
        self.group_id = result.group_id
        key = result.session_key
        # The proof is answered under the old key (or in clear); the new key applies to the next frame.
        self._deferred.append(lambda: self._start_channel(key))
        return _Reply(TapStatus.CONTENT, result.server_proof)

    async def _refresh_ivs(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        channel = self._channel
        if not encrypted or channel is None:
            return _Reply(TapStatus.UNAUTHORIZED)
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        client_iv = bytes(request.payload)
        tap_iv = self.face.random_bytes(_IV_LENGTH)
        # Staged: this answer is still sealed with the old IVs, the next request uses the new ones.
        channel.set_ivs(client_iv, tap_iv)
        self._ivs = (client_iv, tap_iv)
        return _Reply(TapStatus.CONTENT, tap_iv)

    async def _encrypted_frame(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        channel = self._channel
        if encrypted:
            return _Reply(TapStatus.BAD_REQUEST)
        if channel is None:
            return _Reply(TapStatus.UNAUTHORIZED)
        try:
            inner_bytes = channel.open_request(request.payload)
        except SecureFrameError as exc:
            _limited.debug("encrypted frame refused", "%s: encrypted frame refused: %s", self.peer, exc)
            return _Reply(TapStatus.BAD_REQUEST)
        reply = await self._serve_encrypted(inner_bytes)
        return _Reply(TapStatus.CONTENT, channel.seal_response(encode_response(reply.status, reply.data)))

    async def _send_with_iv(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        """``/1024//44`` in clear: a request encrypted under a one-off client IV, answered under a fresh
        Tap IV sent ahead of it. Both IVs then stay in use, as the SDK keeps them (tap-protocol.md B.5)."""
        channel = self._channel
        if encrypted:
            return _Reply(TapStatus.BAD_REQUEST)
        if channel is None:
            return _Reply(TapStatus.UNAUTHORIZED)
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        client_iv, ciphertext = request.payload[:_IV_LENGTH], request.payload[_IV_LENGTH:]
        try:
            inner_bytes = channel.open_request_at(client_iv, ciphertext)
        except SecureFrameError as exc:
            _limited.debug("encrypted frame refused", "%s: encrypted frame refused: %s", self.peer, exc)
            return _Reply(TapStatus.BAD_REQUEST)
        reply = await self._serve_encrypted(inner_bytes)
        tap_iv = self.face.random_bytes(_IV_LENGTH)
        sealed = channel.seal_response_at(tap_iv, encode_response(reply.status, reply.data))
        channel.set_ivs(client_iv, tap_iv)
        self._ivs = (client_iv, tap_iv)
        return _Reply(TapStatus.CONTENT, tap_iv + sealed)

    async def _serve_encrypted(self, inner_bytes: bytes) -> _Reply:
        started = time.perf_counter()
        try:
            inner = decode_inner_request(inner_bytes)
        except FrameError:
            reply = _Reply(TapStatus.BAD_REQUEST)
            self._trace("malformed inner frame", "?", len(inner_bytes), reply.status, 0, started, inner=True)
            return reply
        reply = await self._serve(inner, encrypted=True)
        self._trace(inner, None, len(inner.payload), reply.status, len(reply.data), started, inner=True)
        return reply

    async def _initialize(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        """``/1024//47``: a fresh session key, answered as it is asked (in clear, as the SDK's
        ``encryption.start()`` asks); the channel starts under it at the next frame, with zero IVs and
        counter, and keeps the session's group (the configurator carries on as admin)."""
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        key = self.face.random_bytes(_SESSION_KEY_LENGTH)
        self._handshake = None

        def start() -> None:
            self._ivs = None
            self._start_channel(key)

        self._deferred.append(start)
        return _Reply(TapStatus.CONTENT, key)

    async def _multi_request(self, request: TapRequest, resource: ResourceDef, encrypted: bool) -> _Reply:
        """``/1024//89``: each sub-request is served in order, as if sent alone on this session (same
        rights, encrypted or not as the frame was), and answered in one body. A sub-request that misses
        its expected status ends the frame: the ones after it are neither served nor answered. A frame
        carrier (``/48``, ``/44``, ``/89``) inside is BAD_REQUEST; the frame size bounds the count."""
        if not self._valid_body(resource, request.payload):
            return _Reply(TapStatus.BAD_REQUEST)
        try:
            items = decode_multi_request(request.payload)
        except FrameError as exc:
            _limited.debug("multi-request refused", "%s: multi-request refused: %s", self.peer, exc)
            return _Reply(TapStatus.BAD_REQUEST)
        body = bytearray()
        carriers = self.face.frame_carriers
        for item in items:
            started = time.perf_counter()
            sub = item.request
            if sub.object_id == self.face.tree.interface_object.id and sub.resource_id in carriers:
                reply = _Reply(TapStatus.BAD_REQUEST)
            else:
                reply = await self._serve(sub, encrypted=encrypted)
            self._trace(sub, None, len(sub.payload), reply.status, len(reply.data), started, inner=True)
            body += encode_multi_response_item(reply.status, reply.data)
            if not item.meets(reply.status):
                break
        return _Reply(TapStatus.CONTENT, bytes(body))


def _outer_path(frame: bytes) -> tuple[str, str]:
    """The path and method a fault rule sees for a frame (the outer request: ``/1024//48`` when
    encrypted), without serving it."""
    if is_nfc_select(frame):
        return "NFC SELECT", "SELECT"
    try:
        request = decode_request(frame)
    except FrameError:
        return "malformed frame", "?"
    return request.path, request.method.name


# Alias slugs of object 1024's session resources and the methods serving them.
_SESSION_HANDLERS: Final[dict[str, _Handler]] = {
    "login": TapSession._login,
    "logout": TapSession._logout,
    "current-group-id": TapSession._current_group,
    "current-profile-id": TapSession._current_profile,
    "keep-alive": TapSession._keep_alive,
    "scram-login": TapSession._scram_login,
    "scram-login-proof": TapSession._scram_proof,
    "scram-iv": TapSession._refresh_ivs,
    "scram-frame": TapSession._encrypted_frame,
    "scram-send-with-iv": TapSession._send_with_iv,
    "scram-initialize": TapSession._initialize,
    "multi-request-frame": TapSession._multi_request,
}
# Session resources whose body carries other requests: none may be nested in a multi-request frame.
_FRAME_CARRIERS: Final = ("scram-frame", "scram-send-with-iv", "multi-request-frame")
