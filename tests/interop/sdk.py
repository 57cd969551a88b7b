"""Run scenarios through the real IoTize Tap SDK (npm @iotize/tap) from pytest.

The emulator's promise is that apps built on the vendor SDK work against it unchanged, so the interop
tests drive that SDK itself rather than a Python imitation of it. The SDK is JavaScript: this module runs
`node/driver.js` with a JSON scenario on stdin and returns the per-step results it prints (see the
driver's header for the step and result formats). Node and the npm packages are optional on a developer
machine: `require_sdk()` skips the calling test when they are missing, and fails it when CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
DRIVER = NODE_DIR / "driver.js"
INSTALL_COMMAND = "npm ci --prefix tests/interop/node"
DEFAULT_SEND_TIMEOUT_MS = 3000
# The driver's own watchdog fires first; the subprocess deadline only catches a driver that is stuck.
_KILL_GRACE_SECONDS = 5.0

Step = dict[str, Any]
StepResult = dict[str, Any]


class SdkHarnessError(RuntimeError):
    """The driver could not run the scenario to the end (bad input, no connection, watchdog, crash).

    Failed SDK calls are not errors: they come back as results with "ok": false.
    """

    def __init__(self, message: str, *, partial_results: list[StepResult], stderr: str) -> None:
        super().__init__(message)
        self.partial_results = partial_results
        self.stderr = stderr


def missing_sdk_reason(node_dir: Path = NODE_DIR) -> str | None:
    """Why the SDK cannot run here, or None when node and the installed packages are present."""
    if shutil.which("node") is None:
        return "node is not on PATH (the SDK interop tests need Node.js 20)"
    if not (node_dir / "node_modules" / "@iotize" / "tap" / "package.json").is_file():
        return f"the Tap SDK is not installed in {node_dir}/node_modules: run `{INSTALL_COMMAND}`"
    return None


def node_available(node_dir: Path = NODE_DIR) -> bool:
    """True when `node` is on PATH and the SDK's npm packages are installed."""
    return missing_sdk_reason(node_dir) is None


def require_sdk(node_dir: Path = NODE_DIR) -> None:
    """Skip the calling test when the SDK cannot run; under CI=true fail it instead, so CI cannot go
    green by skipping every interop test."""
    reason = missing_sdk_reason(node_dir)
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def hex_arg(data: bytes) -> dict[str, str]:
    """A bytes argument for a step: the driver turns it into the Uint8Array the SDK expects."""
    return {"hex": data.hex()}


def _scenario(
    steps: Sequence[Step],
    transport: str,
    host: str,
    port: int,
    timeout: float,
    send_timeout_ms: int,
    options: Mapping[str, Any] | None,
) -> tuple[list[str], bytes]:
    document: dict[str, Any] = {
        "transport": transport,
        "host": host,
        "port": port,
        "sendTimeoutMs": send_timeout_ms,
        **(options or {}),
        "steps": list(steps),
    }
    command = [_node(), str(DRIVER), "--watchdog-ms", str(max(1, int(timeout * 1000)))]
    return command, json.dumps(document).encode()


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise SdkHarnessError("node is not on PATH", partial_results=[], stderr="")
    return node


def _parse_output(returncode: int, stdout: bytes, stderr: bytes) -> list[StepResult]:
    err_text = stderr.decode(errors="replace")
    try:
        document = json.loads(stdout)
        results: list[StepResult] = document["results"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SdkHarnessError(
            f"SDK driver exited with {returncode} without a result document ({exc});\n"
            f"stdout: {stdout[-2000:]!r}\nstderr:\n{err_text[-4000:]}",
            partial_results=[],
            stderr=err_text,
        ) from None
    if returncode != 0:
        fatal = document.get("fatal")
        raise SdkHarnessError(
            f"SDK driver exited with {returncode}: {fatal}; {len(results)} step(s) done;\n"
            f"stderr:\n{err_text[-4000:]}",
            partial_results=results,
            stderr=err_text,
        )
    return results


def run_sdk(
    steps: Sequence[Step],
    *,
    transport: str,
    host: str,
    port: int,
    timeout: float = 60,
    send_timeout_ms: int = DEFAULT_SEND_TIMEOUT_MS,
    options: Mapping[str, Any] | None = None,
) -> list[StepResult]:
    """Run `steps` through the SDK against host:port and return one result per step.

    Blocks the calling thread: a server living in this thread's event loop must use `run_sdk_async`.
    `options` adds driver settings such as {"autoConnect": False} or {"connectTimeoutMs": 2000}.
    Raises SdkHarnessError when the scenario does not run to the end within `timeout` seconds.
    """
    command, stdin = _scenario(steps, transport, host, port, timeout, send_timeout_ms, options)
    try:
        completed = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            cwd=NODE_DIR,
            timeout=timeout + _KILL_GRACE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        raise SdkHarnessError(
            f"SDK driver killed after {timeout + _KILL_GRACE_SECONDS:.0f} s;\nstderr:\n{stderr[-4000:]}",
            partial_results=[],
            stderr=stderr,
        ) from None
    return _parse_output(completed.returncode, completed.stdout, completed.stderr)


async def run_sdk_async(
    steps: Sequence[Step],
    *,
    transport: str,
    host: str,
    port: int,
    timeout: float = 60,
    send_timeout_ms: int = DEFAULT_SEND_TIMEOUT_MS,
    options: Mapping[str, Any] | None = None,
) -> list[StepResult]:
    """`run_sdk` for async tests: the event loop keeps serving (an in-process Tap) while node runs."""
    command, stdin = _scenario(steps, transport, host, port, timeout, send_timeout_ms, options)
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(stdin), timeout=timeout + _KILL_GRACE_SECONDS
        )
    except TimeoutError:
        process.kill()
        _, stderr = await process.communicate()
        text = stderr.decode(errors="replace")
        raise SdkHarnessError(
            f"SDK driver killed after {timeout + _KILL_GRACE_SECONDS:.0f} s;\nstderr:\n{text[-4000:]}",
            partial_results=[],
            stderr=text,
        ) from None
    assert process.returncode is not None
    return _parse_output(process.returncode, stdout, stderr)
