"""Who may use the CoAP face (issue 9, defect 10): ``--coap-access maintenance|read-only|anonymous``,
maintenance by default on a loopback bind, read-only on any other, and a startup warning naming the
choice. Real emulators (in-process, and ``tap-emulator serve`` subprocesses) answer an aiocoap client on
127.0.0.1; the wildcard binds listen on 0.0.0.0 port 0 and are only spoken to over loopback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.app import CoapAccess, Emulator, Endpoint, ServeOptions, is_loopback
from tap_emulator.cli import main

ADMIN = 65535

StartEmulator = Callable[..., Awaitable[Emulator]]


def code(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 0x1F:02d}"


@pytest.fixture
async def start_emulator(tmp_path: Path) -> AsyncIterator[StartEmulator]:
    started: list[Emulator] = []

    async def start(host: str = "127.0.0.1", access: CoapAccess | None = None) -> Emulator:
        emulator = Emulator(
            ServeOptions(
                state=str(tmp_path / f"device-{len(started)}.sqlite3"),
                coap=Endpoint(host, 0),
                coap_access=access,
                tcp=None,
                ws=None,
                http=None,
                store="off",
            ),
            announce=lambda _line: None,
        )
        await emulator.start()
        started.append(emulator)
        return emulator

    try:
        yield start
    finally:
        for emulator in started:
            await emulator.stop()


async def calls(coap_client: Any, emulator: Emulator) -> dict[str, str]:
    """The codes of a read, a rename, a password change and a group creation."""
    from conftest import CoapCall

    assert emulator.coap_address is not None
    client = CoapCall(coap_client, "127.0.0.1", emulator.coap_address[1])
    return {
        "read": code(await client.request("GET", f"/1025/{ADMIN}/0")),
        "rename": code(await client.request("PUT", f"/1025/{ADMIN}/0", b"mine")),
        "password": code(await client.request("POST", f"/group/{ADMIN}/password", b"taken")),
        "create": code(await client.request("POST", "/group/91/create")),
    }


def access_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "--coap-access" in r.getMessage()
    ]


WRITES_REFUSED = {"read": "2.05", "rename": "4.01", "password": "4.01", "create": "4.01"}
EVERYTHING = {"read": "2.05", "rename": "2.04", "password": "2.04", "create": "2.01"}


async def test_a_loopback_bind_defaults_to_maintenance_and_says_so(
    start_emulator: StartEmulator, coap_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    emulator = await start_emulator("127.0.0.1")
    assert await calls(coap_client, emulator) == EVERYTHING
    (warning,) = access_warnings(caplog)
    assert "--coap-access maintenance" in warning and "default for a loopback bind" in warning
    assert "maintenance rights" in warning


async def test_a_wildcard_bind_defaults_to_read_only(
    start_emulator: StartEmulator, coap_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    emulator = await start_emulator("0.0.0.0")
    assert await calls(coap_client, emulator) == WRITES_REFUSED
    assert emulator.tree is not None and emulator.tree.account(ADMIN).name == "admin"  # type: ignore[union-attr]
    (warning,) = access_warnings(caplog)
    assert "--coap-access read-only" in warning and "default for a non-loopback bind" in warning


async def test_maintenance_can_be_chosen_for_a_wildcard_bind(
    start_emulator: StartEmulator, coap_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    emulator = await start_emulator("0.0.0.0", CoapAccess.MAINTENANCE)
    assert await calls(coap_client, emulator) == EVERYTHING
    (warning,) = access_warnings(caplog)
    assert "--coap-access maintenance (chosen)" in warning


async def test_read_only_can_be_chosen_for_loopback(start_emulator: StartEmulator, coap_client: Any) -> None:
    emulator = await start_emulator("127.0.0.1", CoapAccess.READ_ONLY)
    assert await calls(coap_client, emulator) == WRITES_REFUSED


async def test_anonymous_access_has_the_profiles_anonymous_rights(
    start_emulator: StartEmulator, coap_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    emulator = await start_emulator("127.0.0.1", CoapAccess.ANONYMOUS)
    # The default profile lets anonymous read groups and write none of them.
    assert await calls(coap_client, emulator) == WRITES_REFUSED
    (warning,) = access_warnings(caplog)
    assert "--coap-access anonymous (chosen)" in warning and "anonymous rights" in warning


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("fe80::1", False),
        ("tap.example", False),
    ],
)
def test_what_counts_as_a_loopback_bind(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    expected = CoapAccess.MAINTENANCE if loopback else CoapAccess.READ_ONLY
    assert CoapAccess.default_for(host) is expected


def test_serve_on_a_wildcard_warns_that_it_is_read_only(spawn_server: Any) -> None:
    server = spawn_server("--coap", "0.0.0.0:0")
    assert server.stop() == 0
    lines = [line for line in server.stderr().splitlines() if "--coap-access" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "read-only" in lines[0], server.stderr()


def test_an_unknown_access_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--coap-access", "root", "--state", ":memory:"]) == 2
    assert "--coap-access" in capsys.readouterr().err
