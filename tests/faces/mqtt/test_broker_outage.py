"""A broker that goes away during traffic: the relay face reconnects, resubscribes, answers again, and
no write it acknowledged is lost.

Mosquitto on 127.0.0.1:1883 is a system service shared with others, so this test runs a private
``mosquitto`` on a free port, kills it (SIGKILL, mid-traffic) and starts it again on the same port. The
app side is a small relay client written here with the codec, which matches answers to requests by
reference id, so "acknowledged" means exactly "an answer to that request arrived".
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from private_broker import HOST, PrivateBroker

from tap_emulator.app import Emulator, ServeOptions, open_device
from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.codec.mqtt_relay import RelayError, RelayMessage, decode, encode, relay_key, relay_topics
from tap_emulator.config import PROFILES_DIR, SecurityMode, load_profile
from tap_emulator.security import USERNAME_LENGTH

pytestmark = pytest.mark.timeout(90)

GROUP_OBJECT, CREATE, LOGIN_OBJECT, LOGIN = 1025, 0xFFFF, 1024, 0
CREATED, CHANGED = 0x41, 0x44
PORT, CURRENT_GROUP = 51, 7
WRITES = 40
KILL_AT, RESTART_AT = 12, 16


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    yield from _broker(tmp_path / "a")


@pytest.fixture
def second_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    yield from _broker(tmp_path / "b")


def _broker(directory: Path) -> Iterator[PrivateBroker]:
    directory.mkdir()
    private = PrivateBroker(directory)
    private.start()
    try:
        yield private
    finally:
        private.kill()


def profile_file(tmp_path: Path, serial: str, broker_port: int | None = None) -> str:
    text = (PROFILES_DIR / "default.toml").read_text().replace('"EMU0000000001"', f'"{serial}"')
    if broker_port is not None:
        text = text.replace("relay = false", "relay = true").replace(":1883", f":{broker_port}")
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return str(path)


def login_frame(name: str, password: str) -> bytes:
    body = name.encode().ljust(USERNAME_LENGTH, b"\0") + password.encode().ljust(16, b"\0")
    return encode_request(TapRequest(Method.POST, LOGIN_OBJECT, None, LOGIN, body))


class App:
    """The app side of the relay over its own reconnecting broker connection."""

    def __init__(self, port: int, serial: str) -> None:
        self.port = port
        self.topics = relay_topics(serial, relay_key("testnetkey", serial))
        self.reference = 0
        self.answers: dict[int, asyncio.Future[bytes]] = {}
        self.client: aiomqtt.Client | None = None
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(HOST, self.port, identifier=f"app-{uuid.uuid4().hex}") as client:
                    await client.subscribe(self.topics.answer)
                    self.client = client
                    async for message in client.messages:
                        try:
                            answer = decode(bytes(message.payload))
                        except RelayError:
                            continue
                        waiter = self.answers.pop(answer.reference_id, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(answer.frame)
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.1)

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        async with asyncio.timeout(10):
            while self.client is None:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def request(self, frame: bytes, timeout: float = 5.0) -> int | None:
        """The status byte of the answer, or None when no answer came (broker away, request lost)."""
        self.reference += 1
        waiter = asyncio.get_running_loop().create_future()
        self.answers[self.reference] = waiter
        try:
            client = self.client
            if client is None:
                return None
            await client.publish(self.topics.command, encode(RelayMessage(1, self.reference, frame)))
            async with asyncio.timeout(timeout):
                return decode_response(await waiter)[0]
        except (aiomqtt.MqttError, TimeoutError):
            return None
        finally:
            self.answers.pop(self.reference, None)


async def test_the_face_reconnects_resubscribes_and_loses_no_acknowledged_write(
    tmp_path: Path, broker: PrivateBroker
) -> None:
    await broker.wait_listening()
    serial = "EMUO" + uuid.uuid4().hex[:12].upper()
    state = str(tmp_path / "device.sqlite3")
    emulator = Emulator(
        ServeOptions(
            profile=profile_file(tmp_path, serial),
            state=state,
            coap=None,
            tcp=None,
            ws=None,
            http=None,
            mqtt=f"mqtt://{HOST}:{broker.port}",
            security=SecurityMode.NONE,
            store="off",
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    app = App(broker.port, serial)
    acknowledged: list[int] = []
    answered_after_restart = 0
    try:
        await app.start()
        assert await app.request(login_frame("admin", "admin")) == CHANGED
        for index in range(WRITES):
            if index == KILL_AT:
                broker.kill()
            if index == RESTART_AT:
                broker.start()
                await broker.wait_listening()
            group = 100 + index
            during_outage = KILL_AT <= index < RESTART_AT + 3
            status = await app.request(
                encode_request(TapRequest(Method.POST, GROUP_OBJECT, group, CREATE)),
                timeout=1.0 if during_outage else 5.0,
            )
            if status == CREATED:
                acknowledged.append(group)
                answered_after_restart += index >= RESTART_AT
            elif status is None and index >= RESTART_AT:
                await asyncio.sleep(0.3)  # both sides are still reconnecting
        relay = emulator.mqtt
        assert relay is not None
        assert relay.relay.connections >= 2  # it came back and subscribed again
        assert answered_after_restart >= WRITES - RESTART_AT - 10
        assert all(group in acknowledged for group in range(100, 100 + KILL_AT))  # before the outage
    finally:
        await app.stop()
        await emulator.stop()
    # Durable: the acknowledged groups are in the state file a fresh process opens.
    tree = open_device(load_profile(profile_file(tmp_path, serial)), state)
    try:
        missing = [g for g in acknowledged if tree.live(GROUP_OBJECT, g) is None]
    finally:
        tree.state.close()
    assert not missing


async def test_a_new_broker_port_written_to_the_device_moves_the_face(
    tmp_path: Path, broker: PrivateBroker, second_broker: PrivateBroker
) -> None:
    """Without --mqtt the face follows the device's own broker settings (profile [mqtt], then 1024)."""
    await broker.wait_listening()
    await second_broker.wait_listening()
    serial = "EMUP" + uuid.uuid4().hex[:12].upper()
    emulator = Emulator(
        ServeOptions(
            profile=profile_file(tmp_path, serial, broker.port),
            state=":memory:",
            coap=None,
            tcp=None,
            ws=None,
            http=None,
            security=SecurityMode.NONE,
            store="off",
        ),
        announce=lambda _line: None,
    )
    await emulator.start()
    first, second = App(broker.port, serial), App(second_broker.port, serial)
    try:
        assert emulator.mqtt is not None and emulator.mqtt.broker() == (HOST, broker.port)
        await first.start()
        await second.start()
        assert await second.request(login_frame("admin", "admin"), timeout=0.5) is None  # not there yet
        assert await first.request(login_frame("admin", "admin")) == CHANGED
        port = str(second_broker.port).encode()
        assert (
            await first.request(encode_request(TapRequest(Method.PUT, LOGIN_OBJECT, None, PORT, port)))
            == CHANGED
        )
        async with asyncio.timeout(10):
            # The new connection, not the old one still up while the change is picked up.
            while not (emulator.mqtt.relay.connections == 2 and emulator.mqtt.relay.connected):
                await asyncio.sleep(0.02)
        assert emulator.mqtt.broker() == (HOST, second_broker.port)
        # The session belongs to the sender, not to the broker connection: still admin.
        status = await second.request(
            encode_request(TapRequest(Method.GET, LOGIN_OBJECT, None, CURRENT_GROUP))
        )
        assert status == 0x45
        assert (
            await first.request(login_frame("admin", "admin"), timeout=0.5) is None
        )  # the old broker is left
    finally:
        await first.stop()
        await second.stop()
        await emulator.stop()
