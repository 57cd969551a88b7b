"""pytest plugin (entry point ``pytest11``: loaded wherever tap-emulator is installed, or with
``-p tap_emulator.pytest_plugin``): fixtures that give a test an emulated Tap.

- ``tap_emulator``: a running ``ThreadedTap`` (default profile, every face on 127.0.0.1 port 0, state
  in the test's ``tmp_path``), stopped after the test. It runs in its own thread and event loop, so
  synchronous tests and async tests on any plugin use it alike.
- ``tap_emulator_factory``: ``tap_emulator_factory(profile=..., faces=..., faults=..., ...)`` starts
  one more (each with its own state file); all are stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.testing import ThreadedTap

__all__ = ["tap_emulator", "tap_emulator_factory"]


@pytest.fixture
def tap_emulator_factory(tmp_path: Path) -> Iterator[Callable[..., ThreadedTap]]:
    started: list[ThreadedTap] = []

    def start(profile: str = "default", **options: Any) -> ThreadedTap:
        options.setdefault("state", tmp_path / f"tap-emulator-{len(started)}.sqlite3")
        tap = ThreadedTap(profile, **options)
        tap.start()
        started.append(tap)
        return tap

    try:
        yield start
    finally:
        for tap in reversed(started):
            tap.stop()


@pytest.fixture
def tap_emulator(tap_emulator_factory: Callable[..., ThreadedTap]) -> ThreadedTap:
    return tap_emulator_factory()
