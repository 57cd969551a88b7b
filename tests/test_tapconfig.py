"""``serve --tap-config PATH``: a tap-config.json read as the SDK's configurator flattens it, over a base
profile; every bad file is a ConfigError naming the entry (``serve`` exits 2 with it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.app import open_device
from tap_emulator.config import ConfigError, SecurityMode, load_profile
from tap_emulator.security import hash_login_password
from tap_emulator.tapconfig import MAX_TAP_CONFIG_BYTES, load_tap_config

REPO = Path(__file__).resolve().parents[1]
BASE = load_profile("default")
ONLY_COAP = ("--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off", "--http", "off")
SCRAM_KEY = "0x1b0469eeca2aa2e7a310a55369602047d218daa51ecfaef7d5394d4f104251f301020304"


def tap_config(**config: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "1.2.3",
        "application": {"name": "Demo"},
        "tap": {"security": {"scramActivated": True, "hashPassword": True}, "scram": {"hashIteration": 1000}},
        "data": {
            "profiles": [
                {"username": "admin", "password": "newadmin", "lifeTime": 600},
                {
                    "username": "tech",
                    "id": 1,
                    "password": "techpw",
                    "lifeTime": 120,
                    "users": [{"username": "bob", "id": 11, "key": SCRAM_KEY}],
                },
                {"username": "anonymous"},
            ],
            "bundles": [
                {
                    "id": 1,
                    "name": "sensors",
                    "acls": {
                        "tech": {"read": True, "write": True},
                        "anonymous": {"read": True, "write": False},
                    },
                    "variables": [
                        {
                            "id": 10,
                            "address": "0x100",
                            "dataType": "FLOAT32",
                            "domain": "TARGET",
                            "meta": {"name": "t"},
                        }
                    ],
                }
            ],
        },
        "wireless": {"options": {"inactivityTimeout": 5}},
    }
    doc.update(config)
    return {"meta": {}, "config": doc}


def write(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "tap-config.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def test_profiles_users_security_and_data_become_the_devices_factory_state(tmp_path: Path) -> None:
    profile = load_tap_config(write(tmp_path, tap_config()), BASE)
    assert profile.device == BASE.device and profile.access == BASE.access
    assert profile.security.mode is SecurityMode.SCRAM and profile.security.hash_iteration == 1000
    assert profile.application.name == "Demo" and profile.application.config_version == 0x01020003
    groups = {g.id: g for g in profile.groups}
    assert set(groups) == {0, 1, 11, 0xFFFE, 0xFFFF}
    assert (groups[1].name, groups[1].alias, groups[1].session_lifetime) == ("tech", None, 120)
    assert (groups[11].name, groups[11].alias, groups[11].key) == ("bob", 1, bytes.fromhex(SCRAM_KEY[2:]))
    # Admin keeps its id under its username; supervisor, absent, is written as the configurator does.
    assert (groups[0xFFFF].password, groups[0xFFFF].session_lifetime) == ("newadmin", 600)
    assert (groups[0xFFFE].password, groups[0xFFFE].session_lifetime) == ("supervisor", 30)
    (bundle,) = profile.data.bundles
    assert bundle.name == "sensors" and [v.id for v in bundle.variables] == [10]
    assert {(a.username, a.read, a.write) for a in bundle.acls} == {
        ("tech", True, True),
        ("anonymous", True, False),
    }

    # Seeded, a 36-byte key takes the file's hash iteration, as /1024//42 is written before the keys.
    tree = open_device(profile, ":memory:")
    try:
        bob = tree.account(11)
        assert bob is not None and bob.alias == 1
        assert bob.credential is not None and bob.credential.scram is not None
        assert bob.credential.scram.iterations == 1000
        assert tree.security_mode is SecurityMode.SCRAM and tree.hash_iteration == 1000
    finally:
        tree.state.close()


@pytest.mark.parametrize(
    ("security", "mode"),
    [({"hashPassword": True}, SecurityMode.HASH), ({}, SecurityMode.NONE), (None, SecurityMode.NONE)],
)
def test_the_security_mode_is_what_the_configurators_last_options_write_sets(
    tmp_path: Path, security: dict[str, bool] | None, mode: SecurityMode
) -> None:
    tap: dict[str, Any] = {} if security is None else {"security": security}
    doc = tap_config(tap=tap)
    doc["config"]["data"]["profiles"][1]["users"][0]["key"] = "0x" + hash_login_password("bob").hex()
    assert load_tap_config(write(tmp_path, doc), BASE).security.mode is mode


def _bad(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    node: Any = doc["config"]
    for part in path[:-1]:
        node = node[part]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["version"], KeyError, "'version' is missing"),
        (["version"], "1.0", "not a version"),
        (["surprise"], 1, "unknown key 'surprise'"),
        (["application", "name"], "x" * 33, "at most 32"),
        (["tap", "scram", "hashIteration"], 0, "1..65535"),
        (["data", "profiles", 1, "id"], KeyError, "'id' is missing"),
        (["data", "profiles", 1, "id"], 65534, "0..65533"),
        (["data", "profiles", 1, "key"], "0x" + "00" * 16, "give a password or a key"),
        (["data", "profiles", 1, "users", 0, "key"], "0x0011", "16, 36 or 40 bytes"),
        (["data", "profiles", 1, "users", 0, "key"], "zz", "hex string"),
        (["data", "profiles", 1, "users", 0, "id"], 1, "declared twice"),
        (["data", "profiles", 1, "password"], "é", "printable ASCII"),
        (["data", "bundles", 0, "acls", "ghost"], {"read": True, "write": False}, "no profile 'ghost'"),
        (["data", "bundles", 0, "variables", 0, "dataType"], "DOUBLE", "dataType"),
        (["data", "profiles"], {}, "must be a list"),
    ],
)
def test_a_bad_file_names_what_is_wrong(tmp_path: Path, path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_tap_config(write(tmp_path, _bad(tap_config(), path, value)), BASE)


def test_files_that_are_not_a_tap_config(tmp_path: Path) -> None:
    for text, message in (
        ("{", "not JSON"),
        ("[]", "must be an object"),
        ('{"meta": {}}', "'config' is missing"),
    ):
        (tmp_path / "t.json").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_tap_config(str(tmp_path / "t.json"), BASE)
    with pytest.raises(ConfigError, match="No such file"):
        load_tap_config(str(tmp_path / "absent.json"), BASE)
    (tmp_path / "big.json").write_bytes(b" " * (MAX_TAP_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_tap_config(str(tmp_path / "big.json"), BASE)


def test_a_scram_key_in_hash_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SCRAM key"):
        load_tap_config(write(tmp_path, tap_config(tap={"security": {"hashPassword": True}})), BASE)


def test_serve_exits_2_with_the_message_for_a_bad_file(tmp_path: Path) -> None:
    bad = write(tmp_path, _bad(tap_config(), ["version"], "x"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tap_emulator",
            "serve",
            "--tap-config",
            bad,
            "--state",
            ":memory:",
            *ONLY_COAP,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "tap-config.json config version: 'x' is not a version x.y.z" in done.stderr
    assert "Traceback" not in done.stderr
