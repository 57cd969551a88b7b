"""The credentials file of the seed faces: the shipped defaults, exactly, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator.config import ConfigError
from tap_emulator.faces.http.cloud_config import DEFAULT_CLOUD_CONFIG, load_cloud_config, same_secret


def test_the_shipped_defaults_are_the_documented_ones() -> None:
    config = load_cloud_config()
    assert DEFAULT_CLOUD_CONFIG.name == "default.toml" and DEFAULT_CLOUD_CONFIG.parent.name == "cloud"
    assert [(u.email, u.token) for u in config.iotize_users] == [
        ("alice@example.com", "iotize-alice"),
        ("bob@example.com", "iotize-bob"),
    ]
    assert [(a.app_id, a.token, sorted(a.authorized_apps)) for a in config.oceanconnect_apps] == [
        ("oc-app-1", "oc-token-1", []),
        ("oc-app-2", "oc-token-2", ["oc-app-1"]),
    ]
    assert config.oceanconnect_throttle_per_minute == 100
    assert [(a.app_id, a.app_key, a.accounts) for a in config.appservice_apps] == [
        ("app-1", "app-key-1", ("acct-1", "acct-2", "acct-3"))
    ]
    assert [t.token for t in config.roma_tokens] == ["roma-token-1"]
    assert config.roma_instance_exists("proj-1", "inst-1")
    assert not config.roma_instance_exists("proj-1", "inst-2")


def test_lookups_need_the_exact_secret() -> None:
    config = load_cloud_config()
    assert config.iotize_user("iotize-alice") is not None
    assert config.iotize_user("iotize-alicE") is None and config.iotize_user(None) is None
    assert config.oceanconnect_app("oc-app-1", "oc-token-1") is not None
    assert config.oceanconnect_app("oc-app-1", "oc-token-2") is None  # another app's token
    assert config.appservice_app("app-1", "app-key-1") is not None
    assert config.appservice_app("app-1", "") is None
    assert same_secret("\udcff", "x") is False  # undecodable header text never raises


def test_secrets_stay_out_of_repr() -> None:
    text = repr(load_cloud_config())
    for secret in ("iotize-alice", "iotize-bob", "oc-token-1", "oc-token-2", "app-key-1", "roma-token-1"):
        assert secret not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[iotize.users]]\nemail = 'a@b'\n", "'token' must be printable text"),
        ("[oceanconnect]\nthrottle_per_minute = -1\n", "throttle_per_minute"),
        (
            "[[oceanconnect.apps]]\napp_id='a'\ntoken='t'\n[[oceanconnect.apps]]\napp_id='a'\ntoken='u'\n",
            "unique",
        ),
        ("iotize = 3\n", "[iotize] must be a table"),
        ("not toml [", "bad.toml"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_cloud_config(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_cloud_config(tmp_path / "absent.toml")
