"""LwM2M client registration (TS 1.1 Core section 5.3, Transport section 6.2): the device tells an
LwM2M server where it is and what it holds, so the server can drive it.

For each ``--lwm2m-server`` the device keeps one account: a Security (0) and a Server (1) instance
with the same instance id, written through the tree at start (the server URI, the lifetime). The
``Registration`` task sends Register (``POST /rd?ep=&lt=&lwm2m=1.1&b=U`` with the object links) from the
CoAP face's own socket, so the server reaches the device at the address it registered from; an Update
at half the lifetime and whenever instances appear or vanish or the account's lifetime is written; a
fresh Register when an Update gets 4.04; backoff (doubling, capped) while the server is away; and
De-register on shutdown. Objects and resources are found by their model aliases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code

from tap_emulator.codec.values import LINK_FORMAT
from tap_emulator.faces.coap.discovery import registration_links
from tap_emulator.model import Behaviour, ObjectDef, Operation, ResourceDef
from tap_emulator.tree import MAINTENANCE, ChangeEvent, DeviceTree, Request

__all__ = [
    "LWM2M_VERSION",
    "Backoff",
    "Registration",
    "ServerUri",
    "accounts",
    "bootstrap",
    "ensure_account",
    "parse_server_uri",
]

log = logging.getLogger(__name__)
LWM2M_VERSION = "1.1"
BINDING = "U"
SECURITY_ALIAS, SERVER_ALIAS = "lwm2m-security", "lwm2m-server"
REQUEST_TIMEOUT = 30.0  # past aiocoap's own CON retransmissions to a silent server, give up and back off


@dataclass(frozen=True, slots=True)
class ServerUri:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap://{host}:{self.port}"


def parse_server_uri(text: str) -> ServerUri:
    """``coap://HOST:PORT`` (port 5683 when omitted); ValueError with the reason otherwise."""
    parts = urlsplit(text)
    if parts.scheme != "coap":
        raise ValueError(f"{text!r}: an LwM2M server is a coap:// URI (coaps needs DTLS, not served)")
    try:
        port = parts.port or aiocoap.COAP_PORT
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number in 0..65535") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{text!r}: give coap://HOST:PORT only")
    return ServerUri(parts.hostname, port)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds to wait after the n-th failure in a row: ``first`` doubled each time, at most ``cap``."""

    first: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2 ** max(0, failures - 1)))


def _object(tree: DeviceTree, alias: str) -> ObjectDef:
    obj = tree.model.object_by_alias(alias)
    if obj is None:
        raise LookupError(f"the model lacks the {alias} object")
    return obj


def _resource(obj: ObjectDef, slug: str) -> ResourceDef:
    entry = obj.forms_by_alias.get(slug)
    if entry is None:
        raise LookupError(f"object {obj.id} has no resource {slug!r}")
    return entry[0]


def _creator(obj: ObjectDef) -> ResourceDef:
    return next(r for r in obj.resources.values() if r.behaviour is Behaviour.CREATE)


async def ensure_account(tree: DeviceTree, account: int, uri: ServerUri, lifetime: int | None) -> None:
    """Security and Server instance ``account`` naming ``uri`` (created if missing); ``lifetime``
    written when given. Through the tree as maintenance, so the writes are durable and announced."""
    writes: list[tuple[ObjectDef, str, object]] = [(_object(tree, SECURITY_ALIAS), "server-uri", str(uri))]
    if lifetime is not None:
        writes.append((_object(tree, SERVER_ALIAS), "lifetime", lifetime))
    for obj in (_object(tree, SECURITY_ALIAS), _object(tree, SERVER_ALIAS)):
        if tree.live(obj.id, account) is None:
            created = await tree.handle(
                Request(Operation.EXECUTE, obj.id, account, _creator(obj).id, caller=MAINTENANCE)
            )
            if not created.status.is_success:
                raise RuntimeError(f"cannot create /{obj.id}/{account}: {created.diagnostic}")
    for obj, slug, value in writes:
        resource = _resource(obj, slug)
        response = await tree.handle(
            Request(Operation.WRITE, obj.id, account, resource.id, value, caller=MAINTENANCE)
        )
        if not response.status.is_success:
            raise RuntimeError(f"cannot write /{obj.id}/{account}/{resource.id}: {response.diagnostic}")


def accounts(tree: DeviceTree) -> list[tuple[int, ServerUri]]:
    """The LwM2M server accounts the Security object holds (bootstrap accounts aside), by instance id."""
    security = _object(tree, SECURITY_ALIAS)
    uri_id = _resource(security, "server-uri").id
    bootstrap_id = _resource(security, "bootstrap-server").id
    found = []
    for iid, inst in sorted(tree.live_instances(security.id).items()):
        if inst.values.get(bootstrap_id) == 1:
            continue
        try:
            found.append((iid, parse_server_uri(str(inst.values.get(uri_id) or ""))))
        except ValueError as exc:
            log.warning("lwm2m: security account %d has no usable server URI (%s)", iid, exc)
    return found


async def bootstrap(
    context: Any,
    face: Any,
    tree: DeviceTree,
    uri: ServerUri,
    endpoint: str,
    *,
    finish_timeout: float = 60.0,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    request_timeout: float = REQUEST_TIMEOUT,
) -> list[tuple[int, ServerUri]]:
    """Client-initiated bootstrap (TS 1.1 Transport section 6.1.7): Bootstrap-Request from the CoAP
    face's socket, the server's writes and deletes on the device (through the face, as any request),
    until its Bootstrap-Finish; retried with backoff. Returns the server accounts it left."""
    backoff = backoff or Backoff()
    failures = 0
    while True:
        finished = asyncio.Event()
        face.bootstrap_finish = finished.set
        try:
            message = aiocoap.Message(code=Code.POST, uri=f"{uri}/bs")
            message.opt.uri_query = (f"ep={endpoint}",)
            response = await asyncio.wait_for(context.request(message).response, request_timeout)
            if response.code != Code.CHANGED:
                raise _Refused(f"Bootstrap-Request answered {response.code}")
            await asyncio.wait_for(finished.wait(), finish_timeout)
            log.info("lwm2m: bootstrapped by %s", uri)
            return accounts(tree)
        except (aiocoap.error.Error, OSError, TimeoutError, _Refused) as exc:
            failures += 1
            if failures == 1:
                log.warning("lwm2m: bootstrap from %s failed (%s); retrying with backoff", uri, exc)
            await sleep(backoff.delay(failures))
        finally:
            face.bootstrap_finish = None


class _UpdateRefused(Exception):
    """The server no longer knows the registration (4.04 to an Update): register afresh."""


class Registration:
    """The registration of the device with one LwM2M server, kept alive by ``run``."""

    def __init__(
        self,
        context: Any,
        tree: DeviceTree,
        account: int,
        uri: ServerUri,
        endpoint: str,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.context = context  # the CoAP face's aiocoap context: requests leave from its socket
        self.tree = tree
        self.account = account
        self.uri = uri
        self.endpoint = endpoint
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self.request_timeout = request_timeout
        self.location: tuple[str, ...] | None = None
        self.registrations = 0
        self.updates = 0
        self._server = _object(tree, SERVER_ALIAS)
        self._lifetime = _resource(self._server, "lifetime")
        self._wake = asyncio.Event()
        self._links_changed = False
        self._lifetime_changed = False
        self._unsubscribe = tree.subscribe(self._on_change)
        self._task: asyncio.Task[None] | None = None

    @property
    def lifetime(self) -> int:
        inst = self.tree.live(self._server.id, self.account)
        value = None if inst is None else inst.values.get(self._lifetime.id)
        default = self._lifetime.default_value(self.account)
        return value if isinstance(value, int) else default if isinstance(default, int) else 1

    def _on_change(self, event: ChangeEvent) -> None:
        if event.created or event.deleted:
            self._links_changed = True
            self._wake.set()
        elif (
            event.object_id == self._server.id
            and event.instance_id == self.account
            and self._lifetime.id in event.resource_ids
        ):
            self._lifetime_changed = True
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"lwm2m registration {self.uri}")

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.location is None:
                    await self._register()
                else:
                    await self._update()
                failures = 0
            except _UpdateRefused:
                log.info("lwm2m: %s forgot the registration (4.04); registering again", self.uri)
                self.location = None
                continue
            except (aiocoap.error.Error, OSError, TimeoutError, _Refused) as exc:
                failures += 1
                delay = self.backoff.delay(failures)
                if failures == 1:
                    log.warning("lwm2m: %s is not answering (%s); retrying with backoff", self.uri, exc)
                self.location = None
                await self._sleep(delay)
                continue
            await self._wait(self.lifetime / 2)

    async def _wait(self, seconds: float) -> None:
        """Until the next Update is due: ``seconds`` on the injected sleep, or a change to announce."""
        if self._links_changed or self._lifetime_changed:
            return
        self._wake.clear()
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._sleep(seconds))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _send(self, message: aiocoap.Message) -> aiocoap.Message:
        request = self.context.request(message)
        return await asyncio.wait_for(request.response, self.request_timeout)

    def _links(self) -> bytes:
        return registration_links(
            self.tree.model, lambda obj: self.tree.instance_ids(obj.id) if obj.multiple else [0]
        )

    async def _register(self) -> None:
        self._links_changed = self._lifetime_changed = False
        message = aiocoap.Message(code=Code.POST, uri=f"{self.uri}/rd", payload=self._links())
        message.opt.content_format = LINK_FORMAT
        message.opt.uri_query = (
            f"ep={self.endpoint}",
            f"lt={self.lifetime}",
            f"lwm2m={LWM2M_VERSION}",
            f"b={BINDING}",
        )
        response = await self._send(message)
        if response.code != Code.CREATED or not response.opt.location_path:
            raise _Refused(f"Register answered {response.code}")
        self.location = tuple(response.opt.location_path)
        self.registrations += 1
        log.info("lwm2m: registered with %s as %s at /%s", self.uri, self.endpoint, "/".join(self.location))

    async def _update(self) -> None:
        assert self.location is not None
        links_changed, lifetime_changed = self._links_changed, self._lifetime_changed
        self._links_changed = self._lifetime_changed = False
        message = aiocoap.Message(code=Code.POST, uri=f"{self.uri}/{'/'.join(self.location)}")
        if lifetime_changed:
            message.opt.uri_query = (f"lt={self.lifetime}",)
        if links_changed:
            message.payload = self._links()
            message.opt.content_format = LINK_FORMAT
        response = await self._send(message)
        if response.code == Code.NOT_FOUND:
            raise _UpdateRefused()
        if response.code != Code.CHANGED:
            raise _Refused(f"Update answered {response.code}")
        self.updates += 1

    async def close(self) -> None:
        """De-register (best effort, bounded) and stop."""
        self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.location is None:
            return
        message = aiocoap.Message(code=Code.DELETE, uri=f"{self.uri}/{'/'.join(self.location)}")
        try:
            request = self.context.request(message)
            await asyncio.wait_for(request.response, 5.0)
        except (aiocoap.error.Error, OSError, TimeoutError) as exc:
            log.warning("lwm2m: could not de-register from %s: %s", self.uri, exc)
        self.location = None


class _Refused(Exception):
    """The server answered Register or Update with an error: back off and register again."""
