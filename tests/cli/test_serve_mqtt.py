"""``serve --mqtt``: the announce line, a broker that cannot be reached (exit 1, no traceback), a bad URL
and a bad ``[mqtt]`` profile table (exit 2), and the relay off by default."""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_serve import SERVE_WITHOUT_TAP, run_cli

from tap_emulator.cli import main
from tap_emulator.config import PROFILES_DIR

# No default port either: another process may hold CoAP 5683.
SERVE_MQTT_ONLY = (*SERVE_WITHOUT_TAP, "--coap", "off")


def serial_profile(tmp_path: Path, extra: str = "") -> tuple[str, str]:
    """The default profile with a serial of its own and, when ``extra`` is given, ``extra`` for its
    [mqtt] table instead of the default one."""
    serial = "EMUC" + uuid.uuid4().hex[:12].upper()
    text = (PROFILES_DIR / "default.toml").read_text().replace('"EMU0000000001"', f'"{serial}"')
    if extra:
        start, end = text.index("[mqtt]"), text.index("[access]")
        text = text[:start] + text[end:]
    path = tmp_path / "p.toml"
    path.write_text(text + extra)
    return serial, str(path)


def test_serve_announces_the_relay_with_its_serial_and_broker(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    serial, profile = serial_profile(tmp_path)
    server = spawn_server("--state", ":memory:", "--profile", profile, "--mqtt", "mqtt://127.0.0.1:1883")
    assert server.process.stdout is not None
    assert server.process.stdout.readline().strip() == f"listening mqtt {serial} mqtt://127.0.0.1:1883"
    assert server.stop(signal.SIGTERM) == 0


def test_an_unreachable_broker_is_a_clear_runtime_error(tmp_path: Path) -> None:
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        done = run_cli(
            *SERVE_MQTT_ONLY, "--state", ":memory:", "--mqtt", f"mqtt://127.0.0.1:{port}", cwd=tmp_path
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr and "not reachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stdout


@pytest.mark.parametrize("value", ["ws://127.0.0.1:9001", "mqtt://", "mqtt://host:0", "mqtt://host:x"])
def test_a_bad_mqtt_url_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SERVE_MQTT_ONLY, "--state", ":memory:", "--mqtt", value]) == 2
    assert "--mqtt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("relay = true\n", "needs a broker"),
        ('broker = "ws://x"\n', "broker"),
        ("relay = 1\n", "relay"),
        (f'net_key = "{"k" * 65}"\n', "net_key"),
        ('password = "é"\n', "password"),
        ('color = "blue"\n', "color"),
    ],
)
def test_a_bad_mqtt_table_exits_2_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    _, profile = serial_profile(tmp_path, "\n[mqtt]\n" + table)
    done = run_cli(*SERVE_MQTT_ONLY, "--state", ":memory:", "--profile", profile, cwd=tmp_path)
    assert done.returncode == 2
    assert "[mqtt]" in done.stderr and key in done.stderr
    assert "Traceback" not in done.stderr


def test_the_relay_is_off_unless_asked(spawn_server: Callable[..., Any], tmp_path: Path) -> None:
    _, profile = serial_profile(tmp_path, '\n[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n')  # relay not set
    server = spawn_server("--state", ":memory:", "--profile", profile)
    assert server.stop(signal.SIGTERM) == 0
    _, on = serial_profile(tmp_path, '\n[mqtt]\nrelay = true\nbroker = "mqtt://127.0.0.1:1"\n')
    server = spawn_server("--state", ":memory:", "--profile", on, "--mqtt", "off")
    assert server.stop(signal.SIGTERM) == 0
