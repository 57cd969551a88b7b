"""Profile loading of the login limits: defaults, overrides, and a clear error naming each bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator.cli import main
from tap_emulator.config import ConfigError, load_profile
from tap_emulator.security.lockout import LockoutPolicy

HEAD = '[device]\nmodel = "x"\nserial_number = "S1"\nfirmware_version = "1"\n[security]\n'


def write_profile(tmp_path: Path, security: str) -> str:
    path = tmp_path / "limits.toml"
    path.write_text(HEAD + security, encoding="utf-8")
    return str(path)


def test_the_default_profile_documents_the_default_limits() -> None:
    security = load_profile("default").security
    assert security.lockout == LockoutPolicy()
    assert security.lockout == LockoutPolicy(3, 60.0, 900.0, 10, 100)
    assert security.scram_handshake_seconds == 30.0


def test_limits_are_read_from_the_profile(tmp_path: Path) -> None:
    profile = load_profile(
        write_profile(
            tmp_path,
            "max_failed_logins = 5\nlockout_seconds = 2.5\nlockout_max_seconds = 40\n"
            "account_max_failed_logins = 0\ndevice_max_failed_logins = 50\nscram_handshake_seconds = 4\n",
        )
    )
    assert profile.security.lockout == LockoutPolicy(5, 2.5, 40.0, 0, 50)
    assert profile.security.scram_handshake_seconds == 4.0
    assert load_profile(write_profile(tmp_path, "")).security.lockout == LockoutPolicy()


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_failed_logins = -1", "max_failed_logins"),
        ('max_failed_logins = "3"', "max_failed_logins"),
        ("lockout_seconds = -5", "lockout_seconds"),
        ("lockout_seconds = nan", "lockout_seconds"),
        ("lockout_max_seconds = 10", "lockout_max_seconds"),
        ("lockout_max_seconds = inf", "lockout_max_seconds"),
        ("account_max_failed_logins = 2", "account_max_failed_logins"),
        ("device_max_failed_logins = 10", "device_max_failed_logins"),
        ("scram_handshake_seconds = 0", "scram_handshake_seconds"),
        ("scram_handshake_seconds = true", "scram_handshake_seconds"),
    ],
)
def test_a_bad_limit_is_a_config_error_naming_the_key(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as caught:
        load_profile(write_profile(tmp_path, line + "\n"))
    assert "limits.toml" in str(caught.value)


def test_serve_with_a_bad_limit_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_profile(tmp_path, "account_max_failed_logins = 1\n")
    assert (
        main(
            [
                "serve",
                "--coap",
                "off",
                "--tcp",
                "127.0.0.1:0",
                "--ws",
                "off",
                "--http",
                "off",
                "--state",
                ":memory:",
                "--profile",
                path,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "account_max_failed_logins" in err and "Traceback" not in err
