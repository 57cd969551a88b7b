"""A private ``mosquitto`` on a free loopback port, for tests that kill the broker and start it again.

Why it exists: Mosquitto on 127.0.0.1:1883 is a system service shared with other tests and engineers,
so a broker outage cannot be staged on it. The relay face's outage tests (tests/faces/mqtt) and the
fleet's (tests/fleet) run this one instead: SIGKILL mid-traffic, then a start on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

__all__ = ["HOST", "PrivateBroker", "free_port"]

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PrivateBroker:
    """``mosquitto`` with a config of its own in ``tmp_path``; `start` and `kill` may alternate."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("the mosquitto binary is missing (Debian package mosquitto; .ci/run installs it)")
        self.binary = binary
        self.port = free_port()
        self.config = tmp_path / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def wait_listening(self) -> None:
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(HOST, self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None
