"""``tap_emulator.testing`` and the pytest plugin: an emulated Tap in the test's loop, in a thread of its
own, as the ``tap_emulator`` fixture, and in a fresh project that only uses the fixture."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiocoap
import pytest

from tap_emulator.codec.apdu import Method, TapRequest, decode_response, encode_request
from tap_emulator.testing import EmulatedTap, ThreadedTap

REPO = Path(__file__).resolve().parents[2]
GET_MANUFACTURER = encode_request(TapRequest(Method.GET, 3, None, 0))


async def test_an_emulated_tap_in_the_tests_loop_with_its_endpoints_control_and_trace() -> None:
    async with EmulatedTap(
        faces=("coap", "http"), faults={"rules": [{"face": "coap", "path": "/3/*", "status": "5.03"}]}
    ) as tap:
        assert tap.faces == {"coap", "http"} and tap.http_url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="tcp face is off"):
            _ = tap.tcp_address
        context = await aiocoap.Context.create_client_context()
        try:
            first = await asyncio.wait_for(
                context.request(aiocoap.Message(code=aiocoap.GET, uri=tap.coap_uri + "/3//0")).response, 5
            )
            tap.clear_faults()
            await tap.reboot()
            second = await asyncio.wait_for(
                context.request(aiocoap.Message(code=aiocoap.GET, uri=tap.coap_uri + "/3//0")).response, 5
            )
        finally:
            await context.shutdown()
        assert str(first.code).startswith("5.03") and second.payload == b"IOTIZE"
        assert [(e["status"], e["fault"]) for e in tap.trace] == [("5.03", "status 5.03"), ("2.05", None)]
        assert (await tap.info())["serial"] == tap.serial
        workdir = Path(tap.options.state or "").parent
    assert not workdir.exists()  # the throw-away state is gone
    with pytest.raises(ValueError, match="unknown face"):
        EmulatedTap(faces=("bluetooth",))


def tcp_call(address: tuple[str, int], frame: bytes) -> tuple[int, bytes]:
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(frame)
        return decode_response(conn.recv(300))


def test_the_fixture_gives_a_running_tap_a_sync_test_can_use(tap_emulator: ThreadedTap) -> None:
    assert tcp_call(tap_emulator.tcp_address, GET_MANUFACTURER) == (0x45, b"IOTIZE")
    tap_emulator.set_faults({"rules": [{"face": "tcp", "status": "5.03"}]})
    assert tcp_call(tap_emulator.tcp_address, GET_MANUFACTURER)[0] == 0xA3
    assert [e["fault"] for e in tap_emulator.trace][-1] == "status 5.03"
    tap_emulator.factory_reset()
    assert tap_emulator.sessions() == []


def test_the_factory_starts_several_with_their_own_state(
    tap_emulator_factory: Callable[..., ThreadedTap], tmp_path: Path
) -> None:
    one = tap_emulator_factory(faces=("tcp",))
    two = tap_emulator_factory(faces=("tcp",), security="none")
    assert one.tcp_address != two.tcp_address
    assert one.info()["security_mode"] == "scram" and two.info()["security_mode"] == "none"
    assert len(list(tmp_path.glob("tap-emulator-*.sqlite3"))) == 2


FRESH_TEST = """
import socket

def test_the_device_answers(tap_emulator):
    host, port = tap_emulator.tcp_address
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(bytes.fromhex("{frame}"))
        assert conn.recv(300).endswith(b"\\x90\\x00")
"""


@pytest.mark.parametrize("load", ["-p", "entry point"])
def test_the_plugin_in_a_fresh_project(tmp_path: Path, load: str) -> None:
    (tmp_path / "test_fresh.py").write_text(FRESH_TEST.format(frame=GET_MANUFACTURER.hex()))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fresh.py"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    if load == "-p":
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        args[3:3] = ["-p", "tap_emulator.pytest_plugin"]
    done = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
