"""Fault injection and the drop trace on the CoAP face's UDP transports (``tap_emulator.faults``).

A lost request must look lost to the client (it retransmits a CON), so the plan is applied where
datagrams arrive, before aiocoap sees them: the request is parsed once (only while a plan is active),
the device's ``FaultInjector`` decides, and the datagram is dropped, held back (delay) or passed on.
What is done to the answer (a forced status, a duplicate, a corrupted byte) is remembered by the
request's message id and token for the face's rendering and for the transport's send hook. A
corrupted answer is corrupted on the wire only: aiocoap's duplicate cache keeps the true bytes, so the
client's retransmission gets a good answer, as after real corruption. Offline drops every datagram,
ACKs and RSTs included. The hooks replace methods on the transport instance, as ``message_layer`` does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.error

from tap_emulator.faces.coap.limits import BoundedExpiringMap
from tap_emulator.faults import FaultDecision, FaultInjector
from tap_emulator.trace import Trace

__all__ = ["CoapFaults", "install_fault_layer"]

# Decisions waiting for their request's rendering or answer: a request is rendered within seconds.
_PENDING_SECONDS = 60.0
_PENDING_MAX = 4096

RequestKey = tuple[int, bytes]  # (message id, token)


class CoapFaults:
    """The CoAP face's view of the device's fault plan: decisions per datagram, looked up by the face."""

    def __init__(self, injector: FaultInjector, trace: Trace, clock: Callable[[], float]) -> None:
        self.injector = injector
        self.trace = trace
        self._pending: BoundedExpiringMap[RequestKey, FaultDecision] = BoundedExpiringMap(
            _PENDING_SECONDS, _PENDING_MAX, clock
        )
        self._answers: BoundedExpiringMap[bytes, FaultDecision] = BoundedExpiringMap(
            _PENDING_SECONDS, _PENDING_MAX, clock
        )
        self._held: set[asyncio.TimerHandle] = set()  # delayed datagrams, cancelled when the face closes

    def hold(self, delay: float, deliver: Callable[..., None], *args: Any) -> None:
        """Deliver a datagram ``delay`` seconds from now (a delay fault)."""
        loop = asyncio.get_running_loop()

        def release() -> None:
            self._held.discard(handle)
            deliver(*args)

        handle = loop.call_later(delay, release)
        self._held.add(handle)

    def close(self) -> None:
        for handle in self._held:
            handle.cancel()
        self._held.clear()

    @property
    def active(self) -> bool:
        return self.injector.active

    def on_datagram(self, data: bytes, peer: str) -> FaultDecision | None:
        """The decision for an arriving datagram; None when it passes untouched."""
        try:
            message = aiocoap.Message.decode(data)
        except aiocoap.error.UnparsableMessage:
            return None  # the screen and aiocoap deal with it
        is_request = message.code.is_request()
        path = "/" + "/".join(message.opt.uri_path)
        if not is_request and not self.injector.offline_remaining():
            return None
        decision = self.injector.decide("coap", path)
        if decision.label is None:
            return None
        if decision.drop:
            if self.trace.active and is_request:
                self.trace.record(
                    "coap",
                    peer,
                    path,
                    str(message.code),
                    None,
                    request_bytes=len(message.payload),
                    fault=decision.label,
                )
            return decision
        self._pending[(message.mid, message.token)] = decision
        return decision

    def for_request(self, request: aiocoap.Message) -> FaultDecision | None:
        """The decision made for this request's datagram (its status, its label for the trace)."""
        if not self.active:
            return None
        try:
            decision = self._pending[(request.mid, request.token)]
        except KeyError:
            return None
        if decision.duplicate or decision.corrupt:
            self._answers[request.token] = decision
        return decision

    def for_answer(self, message: aiocoap.Message) -> FaultDecision | None:
        if not self.active or not message.code.is_response():
            return None
        return self._answers.pop(message.token)


def _peer_text(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def install_fault_layer(context: aiocoap.Context, faults: CoapFaults) -> int:
    """Hook every UDP transport of the context (after the datagram screens); returns how many."""
    hooked = 0
    for interface in context.request_interfaces:
        manager: Any = getattr(interface, "token_interface", None)
        message_interface = getattr(manager, "message_interface", None)
        if message_interface is None:
            continue
        received = getattr(message_interface, "_received_datagram", None)
        if received is not None:  # simplesocketserver

            def received_datagram(address: Any, data: bytes, received: Any = received) -> None:
                if not faults.active:
                    received(address, data)
                    return
                decision = faults.on_datagram(data, _peer_text(address.address))
                if decision is None or not (decision.drop or decision.delay):
                    received(address, data)
                elif not decision.drop:
                    faults.hold(decision.delay, received, address, data)

            message_interface._received_datagram = received_datagram

            def raw_send(message: aiocoap.Message, data: bytes, mi: Any = None) -> None:
                message.remote.send(data)

        elif hasattr(message_interface, "datagram_msg_received"):  # udp6
            msg_received = message_interface.datagram_msg_received

            def datagram_msg_received(
                data: bytes, ancdata: Any, flags: int, address: Any, msg_received: Any = msg_received
            ) -> None:
                if not faults.active:
                    msg_received(data, ancdata, flags, address)
                    return
                decision = faults.on_datagram(data, _peer_text(address))
                if decision is None or not (decision.drop or decision.delay):
                    msg_received(data, ancdata, flags, address)
                elif not decision.drop:
                    faults.hold(decision.delay, msg_received, data, ancdata, flags, address)

            message_interface.datagram_msg_received = datagram_msg_received

            def raw_send(message: aiocoap.Message, data: bytes, mi: Any = message_interface) -> None:
                ancdata = []
                if message.remote.pktinfo is not None:
                    ancdata.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, message.remote.pktinfo))
                mi.transport.sendmsg(data, ancdata, 0, message.remote.sockaddr)

        else:
            continue
        send = message_interface.send

        def send_with_faults(message: aiocoap.Message, send: Any = send, raw_send: Any = raw_send) -> None:
            decision = faults.for_answer(message)
            if decision is None:
                send(message)
                return
            if decision.corrupt:
                raw_send(message, decision.corrupted(message.encode()))
            else:
                send(message)
            if decision.duplicate:
                send(message)

        message_interface.send = send_with_faults
        hooked += 1
    return hooked
