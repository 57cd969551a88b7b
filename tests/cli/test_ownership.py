"""One state file, one owner, and the CLI polish of issue 12: a second ``serve`` or a ``reset`` on the
state of a running device is refused naming its process; ``--version``; bad options are the subcommand's
own usage error; an unusable ``--state`` names its cause."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_serve import SERVE_WITHOUT_TAP, run_cli

from tap_emulator.state import StateError
from tap_emulator.state.lock import StateLock, StateLockError


def test_a_second_serve_on_the_same_state_exits_1_naming_the_running_process(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    state = str(tmp_path / "s.db")
    server = spawn_server("--state", state)
    second = run_cli(
        *SERVE_WITHOUT_TAP,
        "--coap",
        "127.0.0.1:0",
        "--state",
        state,
        cwd=tmp_path,
    )
    assert second.returncode == 1
    assert f"in use by process {server.process.pid}" in second.stderr
    assert "serve" in second.stderr and "Traceback" not in second.stderr
    reset = run_cli("reset", "--state", state, cwd=tmp_path)
    assert reset.returncode == 1
    assert f"in use by process {server.process.pid}" in reset.stderr
    assert server.stop(signal.SIGTERM) == 0
    # Once the owner is gone the state is free again.
    assert run_cli("reset", "--state", state, cwd=tmp_path).returncode == 0


def test_the_lock_is_released_on_close_and_refused_while_held(tmp_path: Path) -> None:
    lock = StateLock.acquire(tmp_path / "x.db")
    with pytest.raises(StateLockError, match="in use by process"):
        StateLock.acquire(tmp_path / "x.db")
    lock.release()
    StateLock.acquire(tmp_path / "x.db").release()
    assert issubclass(StateLockError, StateError)


def test_version(tmp_path: Path) -> None:
    from tap_emulator import __version__

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"tap-emulator {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--coap", "notaport"),
        ("serve", "--tcp", "127.0.0.1:99999"),
        ("serve", "--no-such-option"),
        ("serve", "--max-connections", "0"),
        ("serve", "--security", "sideways"),
    ],
)
def test_every_bad_serve_option_is_exit_2_with_serves_usage(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: tap-emulator serve ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("make_state", "cause"),
    [
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "s.db", "is not a directory"),
    ],
)
def test_an_unusable_state_names_its_cause(
    tmp_path: Path, make_state: Callable[[Path], Path], cause: str
) -> None:
    state = make_state(tmp_path)
    result = run_cli(
        *SERVE_WITHOUT_TAP,
        "--coap",
        "127.0.0.1:0",
        "--state",
        str(state),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert cause in result.stderr and str(state) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--faults", None, "not found"),
        ("--faults", "[[rules]]\ndrop = 3\n", "'drop'"),
        ("--trace", None, "--trace"),
    ],
)
def test_a_bad_faults_or_trace_file_is_exit_2_naming_it(
    tmp_path: Path, option: str, content: str | None, message: str
) -> None:
    target = tmp_path / "missing-dir" / "x" if content is None else tmp_path / "plan.toml"
    if content is not None:
        target.write_text(content)
    if option == "--trace":
        (tmp_path / "missing-dir").write_text("a file, so no directory can be made here")
    result = run_cli(
        "serve", "--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off", "--http", "off",
        "--state", ":memory:", option, str(target), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
