"""The MQTT relay's device side (`faces.mqtt.relay.RelayEndpoint`) without a broker: one Tap session per
sender, answers that echo the ids, malformed messages dropped, sessions bounded and expired."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tap_support import get, make_device, plain_login

from tap_emulator.codec.apdu import decode_response
from tap_emulator.codec.mqtt_relay import RelayMessage, decode, encode
from tap_emulator.faces.mqtt.relay import RelayEndpoint

INTERFACE, CURRENT_GROUP = 1024, 7
ADMIN = 0xFFFF


async def ask(endpoint: RelayEndpoint, sender: int, reference: int, frame: bytes) -> tuple[int, bytes]:
    answer = await endpoint.handle(encode(RelayMessage(sender, reference, frame)))
    assert answer is not None
    message = decode(answer)
    assert (message.sender_id, message.reference_id) == (sender, reference)
    return decode_response(message.frame)


async def current_group(endpoint: RelayEndpoint, sender: int) -> int:
    status, data = await ask(endpoint, sender, 1, get(INTERFACE, None, CURRENT_GROUP))
    assert status == 0x45
    return int.from_bytes(data, "big")


async def test_each_sender_has_its_own_session() -> None:
    device = make_device()
    endpoint = RelayEndpoint(device.face, "dev", clock=device.clock)
    try:
        assert (await ask(endpoint, 1, 5, plain_login("admin", "admin")))[0] == 0x44
        assert await current_group(endpoint, 1) == ADMIN
        assert await current_group(endpoint, 2) == 0  # another sender is anonymous
        assert len(endpoint) == 2
    finally:
        endpoint.close()
        device.close()


async def test_malformed_messages_get_no_answer_and_no_session() -> None:
    device = make_device()
    endpoint = RelayEndpoint(device.face, "dev", clock=device.clock)
    try:
        assert await endpoint.handle(b"zz") is None
        assert await endpoint.handle(encode(RelayMessage(1, 1, b"\xa2"))[:-1] + b"0") is None
        assert len(endpoint) == 0
        # A well-formed envelope around a malformed frame is answered by the session: BAD_REQUEST.
        assert (await ask(endpoint, 1, 1, b"\xa2\xca"))[0] == 0x80
    finally:
        device.close()


async def test_sessions_are_bounded_the_least_recently_used_sender_is_displaced() -> None:
    device = make_device()
    endpoint = RelayEndpoint(device.face, "dev", clock=device.clock, max_sessions=3)
    try:
        await ask(endpoint, 1, 1, plain_login("admin", "admin"))
        for sender in (2, 3):
            await current_group(endpoint, sender)
        assert await current_group(endpoint, 1) == ADMIN  # 1 is now the most recently used
        await current_group(endpoint, 4)  # displaces 2, the least recently used
        assert len(endpoint) == 3
        assert await current_group(endpoint, 1) == ADMIN
        for sender in range(5, 40):
            await current_group(endpoint, sender)
        assert len(endpoint) == 3
        assert await current_group(endpoint, 1) == 0  # displaced meanwhile: a new, anonymous session
    finally:
        endpoint.close()
        device.close()


async def test_a_silent_sender_loses_its_session_after_the_idle_time() -> None:
    device = make_device()
    endpoint = RelayEndpoint(device.face, "dev", clock=device.clock, idle_seconds=60)
    try:
        await ask(endpoint, 1, 1, plain_login("admin", "admin"))
        device.clock.advance(59)
        assert await current_group(endpoint, 1) == ADMIN
        device.clock.advance(61)
        assert await current_group(endpoint, 1) == 0
    finally:
        endpoint.close()
        device.close()


async def test_frames_of_one_sender_are_served_in_order() -> None:
    device = make_device()

    async def slow_offload(fn: Callable[[], Any]) -> Any:
        await asyncio.sleep(0.01)  # the password check yields, as the worker process does
        return fn()

    device.face.offload = slow_offload
    endpoint = RelayEndpoint(device.face, "dev", clock=device.clock)
    try:
        login = endpoint.handle(encode(RelayMessage(1, 1, plain_login("admin", "admin"))))
        probe = endpoint.handle(encode(RelayMessage(1, 2, get(INTERFACE, None, CURRENT_GROUP))))
        answers = await asyncio.gather(login, probe)
        status, data = decode_response(decode(answers[1] or b"").frame)
        assert (status, int.from_bytes(data, "big")) == (0x45, ADMIN)
    finally:
        endpoint.close()
        device.close()


async def test_sessions_the_face_ends_are_replaced_by_fresh_ones() -> None:
    device = make_device()
    endpoint = RelayEndpoint(device.face, "dev", clock=device.clock)
    try:
        await ask(endpoint, 1, 1, plain_login("admin", "admin"))
        assert device.face.end_sessions() == 1  # as a reboot does
        assert len(endpoint) == 0
        assert await current_group(endpoint, 1) == 0  # a new anonymous session, not a closed one
    finally:
        endpoint.close()
        device.close()
