"""The login attacks of issue 9 replayed over real sockets against the Tap face, with the fix holding.

Real TCP and WebSocket servers on 127.0.0.1 (port 0); attackers and users connect from distinct
loopback source addresses (127.0.0.2, 127.0.0.3, ... are all loopback on Linux), so each is its own
peer. The face's clock is the fake one of `tap_support`, so waits of minutes pass in no time; the
password work of the concurrency tests runs in real threads, so the race they look for is real.

Covered: brute force within one connection and across connections (TCP and WebSocket), pre-opened
SCRAM handshakes, expired handshakes, concurrent wrong logins from one peer and from many, a lockout
DoS that must fail to keep admin out, and the device-wide last resort.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tap_support import (
    INTERFACE,
    Device,
    FrameLink,
    ScramClient,
    TcpLink,
    WsLink,
    device_profile,
    get,
    hash_login,
    make_device,
    name16,
    plain_login,
)

from tap_emulator.codec.apdu import decode_response
from tap_emulator.config import SecurityMode
from tap_emulator.faces.tap import TapServer, start_tcp_server, start_ws_server
from tap_emulator.security import client_proof, derive_scram_keys, hash_login_password

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
ATTACKER, ADMIN_DESK, NEW_LAPTOP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
UNAUTHORIZED, SERVICE_UNAVAILABLE, CHANGED, CONTENT = 0x81, 0xA3, 0x44, 0x45
Opener = Callable[[int, str], Awaitable[FrameLink]]


class Rig:
    """One device with its TCP and WebSocket servers, and the links tests open to them."""

    def __init__(self, device: Device, tcp: TapServer, ws: TapServer) -> None:
        self.device = device
        self.tcp = tcp
        self.ws = ws
        self.links: list[TcpLink | WsLink] = []

    async def open(self, transport: str, source: str) -> TcpLink | WsLink:
        link: TcpLink | WsLink
        if transport == "tcp":
            link = await TcpLink.open(self.tcp.address[1], source)
        else:
            link = await WsLink.open(self.ws.address[1], source)
        self.links.append(link)
        return link

    def advance(self, seconds: float) -> None:
        self.device.clock.advance(seconds)


@pytest.fixture
def profile_args() -> dict[str, Any]:
    return {}


@pytest.fixture
async def rig(profile_args: dict[str, Any]) -> AsyncIterator[Rig]:
    args = {"mode": SecurityMode.SCRAM, **profile_args}
    device = make_device(device_profile(**args))
    tcp = await start_tcp_server(device.face, HOST, 0)
    ws = await start_ws_server(device.face, HOST, 0)
    rig = Rig(device, tcp, ws)
    try:
        yield rig
    finally:
        for link in rig.links:
            await link.close()
        await tcp.close()
        await ws.close()
        device.close()


async def status_of(link: FrameLink, frame: bytes) -> int:
    return decode_response(await link.handle_frame(frame))[0]


def scram_status(result: tuple[int, bytes]) -> int:
    return result[0]


def _mode(mode: SecurityMode) -> dict[str, Any]:
    return {"mode": mode}


# ------------------------------------------------------------------------------ brute force


@pytest.mark.parametrize("profile_args", [_mode(SecurityMode.HASH)])
async def test_brute_force_on_one_connection_gets_three_tries_then_doubling_waits(rig: Rig) -> None:
    link = await rig.open("tcp", ATTACKER)
    assert [await status_of(link, hash_login("admin", f"guess{i}")) for i in range(3)] == [UNAUTHORIZED] * 3
    # The right password is not even evaluated while the peer waits.
    assert await status_of(link, hash_login("admin", "admin")) == SERVICE_UNAVAILABLE
    rig.advance(60)
    assert await status_of(link, hash_login("admin", "guess3")) == UNAUTHORIZED  # one try, then 120 s
    rig.advance(119)
    assert await status_of(link, hash_login("admin", "admin")) == SERVICE_UNAVAILABLE
    rig.advance(1)
    assert await status_of(link, hash_login("admin", "admin")) == CHANGED
    # The user at another desk never noticed.
    desk = await rig.open("tcp", ADMIN_DESK)
    assert await status_of(desk, hash_login("admin", "admin")) == CHANGED


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_brute_force_across_connections_is_counted_per_address(rig: Rig, transport: str) -> None:
    statuses = []
    for guess in ["a", "b", "c", "d", "admin"]:
        link = await rig.open(transport, ATTACKER)  # a fresh connection for every guess
        statuses.append(scram_status(await ScramClient(link).login("admin", guess)))
        await link.close()
    assert statuses == [UNAUTHORIZED] * 3 + [SERVICE_UNAVAILABLE] * 2
    # The other transport from the same address shares the count: same peer.
    other = await rig.open("ws" if transport == "tcp" else "tcp", ATTACKER)
    assert scram_status(await ScramClient(other).login("admin", "admin")) == SERVICE_UNAVAILABLE
    desk = await rig.open(transport, ADMIN_DESK)
    assert scram_status(await ScramClient(desk).login("admin", "admin")) == CONTENT


async def test_unknown_account_names_are_limited_like_known_ones(rig: Rig) -> None:
    known, unknown = await rig.open("tcp", ATTACKER), await rig.open("tcp", NEW_LAPTOP)
    known_statuses = [scram_status(await ScramClient(known).login("admin", "x")) for _ in range(4)]
    unknown_statuses = [scram_status(await ScramClient(unknown).login("nobody", "x")) for _ in range(4)]
    assert known_statuses == unknown_statuses == [UNAUTHORIZED] * 3 + [SERVICE_UNAVAILABLE]


# ------------------------------------------------------------------------------ SCRAM handshakes


async def _open_handshake(link: FrameLink, client_nonce: int) -> tuple[int, bytes]:
    """Step 1 only: returns the server nonce and the raw answer (salt and iteration)."""
    status, body = decode_response(
        await link.handle_frame(get(INTERFACE, None, 40, name16("admin") + client_nonce.to_bytes(4, "big")))
    )
    assert status == CONTENT
    return int.from_bytes(body[:4], "big"), body


async def test_pre_opened_handshakes_cannot_outlast_the_lockout(rig: Rig) -> None:
    # 50 handshakes from one address, over both transports (each under the per-peer connection cap).
    links = [await rig.open(transport, ATTACKER) for transport in ("tcp", "ws") for _ in range(25)]
    opened = [await _open_handshake(link, 1000 + i) for i, link in enumerate(links)]
    salt, iterations = opened[0][1][4:8], int.from_bytes(opened[0][1][8:12], "big")
    keys = derive_scram_keys(hash_login_password("admin"), salt, iterations)
    statuses = []
    for i, (link, (server_nonce, _)) in enumerate(zip(links, opened, strict=True)):
        right = i == 30  # the guess that would have logged in
        proof = client_proof(keys, 1000 + i, server_nonce) if right else bytes([i]) * 16
        statuses.append(await status_of(link, get(INTERFACE, None, 41, proof)))
    assert statuses == [UNAUTHORIZED] * 3 + [SERVICE_UNAVAILABLE] * 47
    # Every connection is still served, and still anonymous.
    assert decode_response(await links[30].handle_frame(get(INTERFACE, None, 7))) == (CONTENT, b"\x00\x00")


async def test_a_handshake_expires_and_its_late_proof_is_not_evaluated(rig: Rig) -> None:
    link = await rig.open("tcp", ATTACKER)
    server_nonce, body = await _open_handshake(link, 7)
    keys = derive_scram_keys(hash_login_password("admin"), body[4:8], int.from_bytes(body[8:12], "big"))
    rig.advance(31)  # the profile's scram_handshake_seconds is 30
    assert (
        await status_of(link, get(INTERFACE, None, 41, client_proof(keys, 7, server_nonce))) == UNAUTHORIZED
    )
    # Expired proofs are not counted: three of them do not lock the peer.
    for nonce in (8, 9, 10):
        await _open_handshake(link, nonce)
        rig.advance(31)
        assert await status_of(link, get(INTERFACE, None, 41, bytes(16))) == UNAUTHORIZED
    assert scram_status(await ScramClient(link).login("admin", "admin")) == CONTENT


async def test_a_handshake_opened_before_the_lockout_is_refused_at_its_proof(rig: Rig) -> None:
    early = await rig.open("tcp", ATTACKER)
    server_nonce, body = await _open_handshake(early, 5)
    keys = derive_scram_keys(hash_login_password("admin"), body[4:8], int.from_bytes(body[8:12], "big"))
    other = await rig.open("ws", ATTACKER)
    for _ in range(3):
        assert scram_status(await ScramClient(other).login("admin", "wrong")) == UNAUTHORIZED
    proof = client_proof(keys, 5, server_nonce)
    assert await status_of(early, get(INTERFACE, None, 41, proof)) == SERVICE_UNAVAILABLE
    assert await status_of(other, get(INTERFACE, None, 40, name16("admin") + bytes(4))) == SERVICE_UNAVAILABLE


# ------------------------------------------------------------------------------ concurrency


class CountingOffload:
    """The face's offload, in real threads, counting how many password checks it ran."""

    def __init__(self) -> None:
        self.runs = 0
        self._lock = threading.Lock()

    async def __call__(self, fn: Callable[[], Any]) -> Any:
        def counted() -> Any:
            with self._lock:
                self.runs += 1
            return fn()

        return await asyncio.to_thread(counted)


async def _concurrent_wrong_logins(rig: Rig, sources: list[tuple[str, str]]) -> tuple[list[int], int]:
    counter = CountingOffload()
    rig.device.face.offload = counter
    links = [await rig.open(transport, source) for transport, source in sources]
    results = await asyncio.gather(*(status_of(link, plain_login("admin", "wrong")) for link in links))
    return list(results), counter.runs


@pytest.mark.parametrize("profile_args", [_mode(SecurityMode.NONE)])
async def test_concurrent_wrong_logins_from_one_peer_evaluate_at_most_three(rig: Rig) -> None:
    sources = [(transport, ATTACKER) for transport in ("tcp", "ws") for _ in range(25)]
    statuses, evaluated = await _concurrent_wrong_logins(rig, sources)
    assert evaluated == 3
    assert sorted(statuses) == [UNAUTHORIZED] * 3 + [SERVICE_UNAVAILABLE] * 47


@pytest.mark.parametrize("profile_args", [_mode(SecurityMode.NONE)])
async def test_concurrent_right_logins_from_one_peer_all_succeed(rig: Rig) -> None:
    """A client on several connections at once waits for its own checks, never refused by them."""
    counter = CountingOffload()
    rig.device.face.offload = counter
    links = [await rig.open("tcp", ADMIN_DESK) for _ in range(12)]
    statuses = await asyncio.gather(*(status_of(link, plain_login("admin", "admin")) for link in links))
    assert statuses == [CHANGED] * 12 and counter.runs == 12
    assert rig.device.face._check_locks == {}  # nothing kept once the checks are done


@pytest.mark.parametrize("profile_args", [_mode(SecurityMode.NONE)])
async def test_concurrent_wrong_logins_from_many_peers_evaluate_at_most_the_account_limit(rig: Rig) -> None:
    sources = [("tcp", f"127.0.0.{10 + i}") for i in range(40) for _ in range(3)]
    statuses, evaluated = await _concurrent_wrong_logins(rig, sources)
    assert evaluated == 10  # account_max_failed_logins of the default profile
    assert statuses.count(UNAUTHORIZED) == 10 and statuses.count(SERVICE_UNAVAILABLE) == 110


# ------------------------------------------------------------------------------ denial of service


async def test_garbage_proofs_from_one_peer_do_not_keep_admin_out(rig: Rig) -> None:
    """The issue's attack: three garbage proofs a minute kept 75 of 75 admin logins out for 150 s."""
    attacker = await rig.open("tcp", ATTACKER)
    desk = await rig.open("ws", ADMIN_DESK)
    admin_logins = []
    for step in range(75):  # 150 s of fake time, 2 s a step
        if step % 30 == 0:  # each minute, a burst of three garbage proofs (refused once it waits)
            for burst in range(3):
                await ScramClient(attacker).login("admin", f"garbage{step}-{burst}")
        client = ScramClient(desk)
        admin_logins.append(scram_status(await client.login("admin", "admin", client_nonce=step)))
        assert await client.logout() == CHANGED
        rig.advance(2)
    assert admin_logins == [CONTENT] * 75


async def test_many_peers_fill_the_account_bucket_but_admins_own_desk_still_logs_in(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    desk = await rig.open("tcp", ADMIN_DESK)
    assert scram_status(await ScramClient(desk).login("admin", "admin")) == CONTENT
    for i in range(8):
        bot = await rig.open("tcp", f"127.0.0.{20 + i}")
        for _ in range(3):
            await ScramClient(bot).login("admin", "guess")
    laptop = await rig.open("ws", NEW_LAPTOP)
    # A stranger's login to admin waits for the bucket (the trade-off the README states) ...
    assert scram_status(await ScramClient(laptop).login("admin", "admin")) == SERVICE_UNAVAILABLE
    # ... other accounts are not affected, and a desk admin logged in from before gets in.
    assert scram_status(await ScramClient(laptop).login("supervisor", "supervisor")) == CONTENT
    desk_again = await rig.open("ws", ADMIN_DESK)
    assert scram_status(await ScramClient(desk_again).login("admin", "admin")) == CONTENT
    rig.advance(60)  # one failure leaks out a minute: the next stranger's attempt is evaluated
    assert scram_status(await ScramClient(laptop).login("admin", "admin")) == CONTENT
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("profile_args", [{"device_max_failed_logins": 30}])
async def test_the_device_wide_limit_refuses_strangers_only(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    desk = await rig.open("tcp", ADMIN_DESK)
    assert scram_status(await ScramClient(desk).login("admin", "admin")) == CONTENT
    for i in range(12):  # a spray of made-up names from 12 peers
        bot = await rig.open("tcp", f"127.0.0.{40 + i}")
        for j in range(3):
            await ScramClient(bot).login(f"user{i}-{j}", "guess")
    stranger = await rig.open("tcp", NEW_LAPTOP)
    assert scram_status(await ScramClient(stranger).login("supervisor", "supervisor")) == SERVICE_UNAVAILABLE
    desk_again = await rig.open("ws", ADMIN_DESK)
    assert scram_status(await ScramClient(desk_again).login("admin", "admin")) == CONTENT
    # One short warning line for the whole spray, not one per failure; never a traceback.
    warnings = [r for r in caplog.records if "failed logins" in r.getMessage()]
    assert len(warnings) == 1
    assert not [r for r in caplog.records if r.exc_info]
