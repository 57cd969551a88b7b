"""What ``tap-emulator fleet`` refuses before it opens anything: serial formats, port ranges, counts.

Each refusal is a usage error (exit 2) with one line naming the option, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator.cli import main
from tap_emulator.config import PROFILES_DIR, ConfigError, load_profile
from tap_emulator.fleet import (
    DEFAULT_SERIAL_FORMAT,
    Fleet,
    FleetOptions,
    PortRange,
    fleet_serials,
    parse_port_range,
)


def test_serials_follow_the_format_from_the_first_index() -> None:
    assert fleet_serials(DEFAULT_SERIAL_FORMAT, 2000, 3) == [
        "EMU0000002000",
        "EMU0000002001",
        "EMU0000002002",
    ]
    assert fleet_serials("LAB-{:04X}", 254, 3) == ["LAB-00FE", "LAB-00FF", "LAB-0100"]


@pytest.mark.parametrize(
    ("fmt", "count", "says"),
    [
        ("X{", 3, "Single '{'"),
        ("X}", 3, "Single '}'"),
        ("EMU", 3, "no field"),
        ("{0}{1}", 3, "IndexError"),
        ("{name}", 3, "KeyError"),
        ("{:s}", 3, "ValueError"),
        ("X{!s:.2}", 200, "twice"),  # 10 and 100 both give X10
        ("X{:040d}", 3, "length"),  # object 3's serial number holds 32 characters
        ("E/{}", 3, "'/'"),
        ("E+{}", 3, "'+'"),
        ("É{}", 3, "ASCII"),
    ],
)
def test_a_bad_format_is_refused_naming_it(fmt: str, count: int, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        fleet_serials(fmt, 0, count)
    assert "--serial-format" in str(caught.value) and says in str(caught.value)


def test_port_ranges() -> None:
    assert parse_port_range("20000-") == PortRange(20000, 65535)
    assert parse_port_range("20000-20199").size == 200
    assert parse_port_range("30000") == PortRange(30000, 30000)
    for bad in ("x-", "-5", "20000-10", "0-10", "70000-", "1-2-3", ""):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_a_range_smaller_than_the_fleet_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--tcp-ports 30000-30009 holds 10 ports, not the 11 devices"):
        Fleet(FleetOptions(count=11, tcp_ports=PortRange(30000, 30009), mqtt="off", state=":memory:"))


def test_the_broker_is_the_mqtt_option_or_the_profiles(tmp_path: Path) -> None:
    assert load_profile().mqtt.host  # the default profile names Mosquitto on 127.0.0.1:1883
    assert Fleet(FleetOptions(count=2, state=":memory:")).broker == ("127.0.0.1", 1883)
    assert Fleet(FleetOptions(count=2, mqtt="mqtt://127.0.0.1:1884", state=":memory:")).broker == (
        "127.0.0.1",
        1884,
    )
    assert Fleet(FleetOptions(count=2, mqtt="off", state=":memory:")).broker is None
    text = (PROFILES_DIR / "default.toml").read_text()
    no_broker = tmp_path / "no-broker.toml"
    no_broker.write_text(text.replace('broker = "mqtt://127.0.0.1:1883"', ""))
    with pytest.raises(ConfigError, match="--mqtt URL or --mqtt off"):
        Fleet(FleetOptions(count=2, profile=str(no_broker), state=":memory:"))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--count", "3", "--serial-format", "X{"], "--serial-format"),
        (["--count", "300", "--serial-format", "X{!s:.2}"], "twice"),
        (["--count", "3", "--serial-format", "X{:040d}"], "length"),
        (["--count", "0"], "--count"),
        (["--count", "ten"], "--count"),
        (["--count", "3", "--first", "-1"], "--first"),
        (["--count", "300", "--coap-ports", "20000-20010"], "--coap-ports"),
        (["--count", "3", "--tcp-ports", "x"], "--tcp-ports"),
        (["--count", "3", "--mqtt", "ws://x"], "--mqtt"),
        (["--count", "3", "--host", "127.0.0.1:5"], "--host"),
        (["--count", "3", "--profile", "no-such-profile"], "no-such-profile"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "--state", ":memory:", *args]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert says in last, err
    assert "Traceback" not in err
