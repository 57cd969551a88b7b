"""Damaged, missing and locked files, as a user meets them: `serve` refuses a damaged state file at start,
and `store status` / `store show` answer one line (exit 1) instead of a traceback.

Everything runs as subprocesses on real files; a damaged file is made the way a disk damages one, by
overwriting one page in the middle with random bytes.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
SERVE = ("serve", "--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off", "--http", "off")
EXIT_RUNTIME = 1


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 1, nothing on stdout, exactly one line on stderr that names the problem, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_RUNTIME, done.stderr
    assert len(lines) == 1 and lines[0].startswith("tap-emulator: "), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def fill_with_rows(path: Path, rows: int = 400) -> None:
    """Make the file a few dozen pages long, so it has a middle (outbox rows a store once refused)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO outbox (device, object_id, instance_id, version, payload, created_at, status) "
            "VALUES ('', 1025, 56, ?, ?, 0, 'rejected')",
            [(version, "x" * 300) for version in range(1, rows + 1)],
        )
        conn.execute("COMMIT")


def corrupt_middle_page(path: Path, seed: int = 9) -> None:
    """Overwrite the middle page of a (checkpointed) SQLite file with random bytes."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages >= 10, "the file is too small to have a middle"
    with path.open("r+b") as file:
        file.seek((pages // 2) * page_size)
        file.write(random.Random(seed).randbytes(page_size))
    with contextlib.closing(sqlite3.connect(path)) as conn:  # the damage is real
        try:
            assert conn.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        except sqlite3.DatabaseError as error:
            assert "malformed" in str(error)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite file, as a crashed-but-alive tool or a backup might."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.close()


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    """A real state file of the default device (made by `reset`), with a store beside it."""
    path = tmp_path / "state" / "device.sqlite3"
    done = run_cli("reset", "--state", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return path


def test_serve_refuses_a_state_file_with_a_corrupted_middle_page(tmp_path: Path, state_file: Path) -> None:
    fill_with_rows(state_file)
    corrupt_middle_page(state_file)
    done = run_cli(*SERVE, "--state", str(state_file), "--store", "off", cwd=tmp_path)
    line = assert_one_line_error(done, str(state_file), "is damaged")
    assert "listening" not in done.stdout
    assert len(line) < 400


def test_serve_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    path.write_bytes(random.Random(3).randbytes(8192))
    done = run_cli(*SERVE, "--state", str(path), "--store", "off", cwd=tmp_path)
    assert_one_line_error(done, str(path), "is damaged")


def test_store_status_on_a_damaged_state_is_one_line(tmp_path: Path, state_file: Path) -> None:
    fill_with_rows(state_file)
    corrupt_middle_page(state_file)
    assert_one_line_error(run_cli("store", "status", "--state", str(state_file), cwd=tmp_path), "is damaged")


def test_store_status_on_a_missing_state_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    assert_one_line_error(run_cli("store", "status", "--state", str(missing), cwd=tmp_path), "no state file")


def test_store_status_on_a_locked_state_is_one_line(tmp_path: Path, state_file: Path) -> None:
    with locked(state_file):
        done = run_cli("store", "status", "--state", str(state_file), cwd=tmp_path)
    assert_one_line_error(done, str(state_file), "locked")


def store_file(tmp_path: Path, state_file: Path) -> Path:
    """A management store that a short `serve` filled (its default one, beside the state)."""
    store = state_file.parent / "management-store.sqlite3"
    with contextlib.closing(sqlite3.connect(state_file)) as conn:  # a device with a long history
        conn.execute("UPDATE outbox SET status = 'pending'")
    process = subprocess.Popen(
        [sys.executable, "-m", "tap_emulator", *SERVE, "--state", str(state_file)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("listening coap udp ")
        for _ in range(500):  # the first sync settles in well under a second
            with contextlib.closing(sqlite3.connect(store)) as conn:
                tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'access_groups'")
                if tables.fetchone() and conn.execute("SELECT COUNT(*) FROM access_groups").fetchone()[0]:
                    break
            time.sleep(0.02)
    finally:
        process.terminate()
        process.communicate(timeout=20)
    return store


def test_store_show_on_a_damaged_store_is_one_line(tmp_path: Path, state_file: Path) -> None:
    store = store_file(tmp_path, state_file)
    with contextlib.closing(sqlite3.connect(store, isolation_level=None)) as conn:  # pad it to some pages
        conn.execute("CREATE TABLE padding (filler TEXT)")
        conn.executemany("INSERT INTO padding VALUES (?)", [("p" * 500,)] * 200)
        conn.execute("DELETE FROM padding WHERE rowid % 2 = 0")
    corrupt_middle_page(store)
    done = run_cli("store", "show", "--store", f"sqlite:///{store}", cwd=tmp_path)
    assert_one_line_error(done, str(store))


def test_store_show_on_a_missing_or_locked_store_is_one_line(tmp_path: Path, state_file: Path) -> None:
    missing = tmp_path / "none.sqlite3"
    done = run_cli("store", "show", "--store", f"sqlite:///{missing}", cwd=tmp_path)
    assert_one_line_error(done, "no management store")
    store = store_file(tmp_path, state_file)
    with locked(store):
        done = run_cli("store", "show", "--store", f"sqlite:///{store}", cwd=tmp_path)
    assert_one_line_error(done, str(store), "locked")
