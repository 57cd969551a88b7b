"""One state file, one owner: an exclusive lock beside the state file while a process writes it.

Without it two ``serve`` processes could write one file, and a ``reset`` on the state of a running device
would change the file under it while the device kept serving its old values and mixed later writes into
the reset state. The lock is ``flock`` on ``STATE.lock`` (a sidecar, since SQLite's own POSIX locks on the
state file are dropped whenever any descriptor of that file closes); the kernel releases it when the
owner exits, so a killed process leaves no stale lock. The owner writes its pid and command line into
the file so the one refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path

from tap_emulator.state import StateError

__all__ = ["StateLock", "StateLockError", "lock_path"]


class StateLockError(StateError):
    """The state file is owned by another running process (named in the message), or cannot be locked."""


def lock_path(state_path: str | Path) -> Path:
    return Path(f"{state_path}.lock")


def _describe_owner(text: str) -> str:
    pid, _, command = text.strip().partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"process {pid}" + (f" ({command[:200]})" if command else "")


class StateLock:
    """The exclusive lock of one state file, held from ``acquire`` until ``release`` (or exit)."""

    def __init__(self, state_path: str | Path) -> None:
        self.path = lock_path(state_path)
        self._fd: int | None = None

    @classmethod
    def acquire(cls, state_path: str | Path) -> StateLock:
        """Lock ``state_path`` or raise StateLockError naming the process that holds it."""
        lock = cls(state_path)
        lock.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateLockError(f"cannot lock the state {state_path}: {lock.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe_owner(os.pread(fd, 512, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise StateLockError(
                f"the state {state_path} is in use by {owner}: stop it, or reset it through its control API "
                "(tap-emulator ctl reset)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateLockError(f"cannot lock the state {state_path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv)}\n".encode(), 0)
        lock._fd = fd
        return lock

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock
