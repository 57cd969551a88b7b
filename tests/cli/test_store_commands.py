"""`tap-emulator store show | status` and `serve --store`, run through `main` against real stores."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.cli import main
from tap_emulator.config import PROFILES_DIR
from tap_emulator.model import Operation
from tap_emulator.state import InstanceRow, InstanceWrite, StateFile
from tap_emulator.sync import SyncSettings
from tap_emulator.tree import MAINTENANCE, Request, Status

pytestmark = pytest.mark.timeout(60)

SUPERVISOR = 65534
FAST = SyncSettings(backoff_base=0.05, backoff_cap=0.2, stop_drain_timeout=0.5)
SERVE = ["serve", "--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off", "--http", "off"]
UNREACHABLE = "postgresql://127.0.0.1:1/nowhere?connect_timeout=2"


def options(**changes: object) -> ServeOptions:
    serve = ServeOptions(coap=Endpoint("127.0.0.1", 0), tcp=None, ws=None, http=None, sync=FAST)
    for name, value in changes.items():
        setattr(serve, name, value)
    return serve


def profile_with_serial(directory: Path, serial: str) -> str:
    text = (PROFILES_DIR / "default.toml").read_text(encoding="utf-8")
    path = directory / f"{serial}.toml"
    path.write_text(text.replace('serial_number = "EMU0000000001"', f'serial_number = "{serial}"'), "utf-8")
    return str(path)


async def run(argv: Sequence[str]) -> int:
    return await asyncio.to_thread(main, list(argv))


async def rename(emulator: Emulator, group_id: int, name: str) -> None:
    assert emulator.tree is not None
    response = await emulator.tree.handle(
        Request(Operation.WRITE, 1025, group_id, 0, name, caller=MAINTENANCE)
    )
    assert response.status is Status.CHANGED


async def until_idle(emulator: Emulator) -> None:
    assert emulator.sync is not None and emulator.tree is not None
    deadline = time.monotonic() + 10
    while await emulator.tree.state.pending_outbox():
        assert time.monotonic() < deadline, "the outbox did not drain"
        await asyncio.sleep(0.02)


async def test_defaults_store_beside_the_state_and_show_and_status_find_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    emulator = Emulator(options(), announce=lambda _line: None)
    await emulator.start()
    try:
        await rename(emulator, SUPERVISOR, "shown")
        await until_idle(emulator)
    finally:
        await emulator.stop()
    assert (tmp_path / "state" / "management-store.sqlite3").is_file()
    capsys.readouterr()
    assert await run(["store", "show"]) == 0
    text = capsys.readouterr().out
    assert "device EMU0000000001" in text and "'shown'" in text and "3 group(s), 0 deleted" in text
    assert await run(["store", "status"]) == 0
    status = capsys.readouterr().out
    assert "backlog: 0 pending change(s)" in status and "last error: -" in status


async def test_show_json_lists_devices_with_their_groups_and_filters_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    for serial in ("EMU-B", "EMU-A"):
        emulator = Emulator(
            options(profile=profile_with_serial(tmp_path, serial), state=str(tmp_path / serial), store=url),
            announce=lambda _line: None,
        )
        await emulator.start()
        try:
            await rename(emulator, SUPERVISOR, f"sup-{serial}")
            await until_idle(emulator)
        finally:
            await emulator.stop()
    capsys.readouterr()
    assert await run(["store", "show", "--store", url, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [device["serial"] for device in document] == ["EMU-A", "EMU-B"]
    groups = {group["group_id"]: group for group in document[0]["groups"]}
    assert sorted(groups) == [0, SUPERVISOR, 65535]
    assert groups[SUPERVISOR]["name"] == "sup-EMU-A" and groups[SUPERVISOR]["version"] > 0
    assert set(groups[SUPERVISOR]) >= {"version", "password_set", "scram_salt", "deleted", "updated_at"}
    assert await run(["store", "show", "--store", url, "--device", "EMU-B", "--json"]) == 0
    assert [device["serial"] for device in json.loads(capsys.readouterr().out)] == ["EMU-B"]
    assert await run(["store", "show", "--store", url, "--device", "EMU-Z"]) == 0
    assert capsys.readouterr().out == "no device EMU-Z\n"


async def test_status_shows_the_backlog_and_last_error_while_the_store_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "device.sqlite3"
    emulator = Emulator(options(state=str(state), store=UNREACHABLE), announce=lambda _line: None)
    await emulator.start()
    try:
        await rename(emulator, SUPERVISOR, "waiting")
        assert emulator.sync is not None and emulator.tree is not None
        deadline = time.monotonic() + 10
        while not any(row.attempts for row in await emulator.tree.state.pending_outbox()):
            assert time.monotonic() < deadline, "no failed attempt was recorded"
            await asyncio.sleep(0.05)
        # The device still takes writes while the store is away.
        await rename(emulator, SUPERVISOR, "still-waiting")
    finally:
        await emulator.stop()
    capsys.readouterr()
    assert await run(["store", "status", "--state", str(state), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"] == 5  # three seeded groups and two renames, none confirmed
    assert status["pending_instances"] == 3
    assert status["oldest_pending_attempts"] >= 1 and status["oldest_pending_at"] is not None
    assert "cannot connect" in status["last_error"] and "nowhere" in status["last_error"]
    assert status["delivered"] == 0 and status["rejected"] == 0
    assert await run(["store", "status", "--state", str(state)]) == 0
    text = capsys.readouterr().out
    assert "backlog: 5 pending change(s) of 3 group(s)" in text
    assert "last error: cannot connect" in text and "attempt(s))" in text


async def test_memory_state_syncs_nowhere_unless_a_store_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    emulator = Emulator(options(state=":memory:"), announce=lambda _line: None)
    await emulator.start()
    try:
        assert emulator.sync is None
    finally:
        await emulator.stop()
    assert not (tmp_path / "state").exists()
    url = f"sqlite:///{tmp_path}/named.sqlite3"
    emulator = Emulator(options(state=":memory:", store=url), announce=lambda _line: None)
    await emulator.start()
    try:
        assert emulator.sync is not None
        await until_idle(emulator)
    finally:
        await emulator.stop()
    assert (tmp_path / "named.sqlite3").is_file()


async def test_store_off_disables_sync(tmp_path: Path) -> None:
    emulator = Emulator(options(state=str(tmp_path / "d.sqlite3"), store="off"), announce=lambda _line: None)
    await emulator.start()
    try:
        assert emulator.sync is None
    finally:
        await emulator.stop()
    assert not (tmp_path / "management-store.sqlite3").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["store", "show", "--store", "sqlite:///{tmp}/missing.sqlite3"], "no management store at"),
        (["store", "show", "--store", "mysql://user:hunter2@host/db"], "unsupported store URL"),
        (["store", "status", "--state", "{tmp}/missing.sqlite3"], "no state file at"),
        (
            [*SERVE, "--state", "{tmp}/d.sqlite3", "--store", "mysql://u:hunter2@h/db"],
            "unsupported store URL",
        ),
    ],
)
def test_bad_store_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    captured = capsys.readouterr()
    assert code == 1
    assert message in captured.err and captured.err.count("\n") == 1
    assert "hunter2" not in captured.err
    assert not (tmp_path / "missing.sqlite3").exists()


def test_status_of_a_fleet_file_names_its_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fleet's state file holds many devices: `store status --device SERIAL` shows one device's backlog,
    without --device (or with a serial the file does not hold) it is a one-line error."""
    path = tmp_path / "fleet.sqlite3"
    fleet = StateFile(path, clock=time.time, owner=True)
    try:
        for serial, changes in (("EMU0000000001", 1), ("EMU0000000002", 3)):
            fleet.device(serial).commit_sync(
                InstanceWrite(
                    InstanceRow(1025, 7, version, False, {0: f"name {version}"}),
                    {"object_id": 1025, "instance_id": 7, "version": version},
                )
                for version in range(1, changes + 1)
            )
    finally:
        fleet.close()
    capsys.readouterr()
    assert main(["store", "status", "--state", str(path), "--device", "EMU0000000002", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["device"], status["pending"], status["pending_instances"]) == ("EMU0000000002", 3, 1)
    assert main(["store", "status", "--state", str(path), "--device", "EMU0000000001"]) == 0
    text = capsys.readouterr().out
    assert (
        f"state {path} device EMU0000000001" in text and "backlog: 1 pending change(s) of 1 group(s)" in text
    )
    assert main(["store", "status", "--state", str(path)]) == 1
    error = capsys.readouterr().err
    assert "holds a fleet of devices" in error and "--device SERIAL" in error and len(error.splitlines()) == 1
    assert main(["store", "status", "--state", str(path), "--device", "EMU0000000009"]) == 1
    assert "no device 'EMU0000000009'" in capsys.readouterr().err
