"""The README's SDK snippet runs as pasted (issue 12): only its port is changed, to the test's own."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from sdk import NODE_DIR, require_sdk
from test_sdk_emulator import running_emulator

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.interop


def readme_snippet() -> str:
    blocks = re.findall(r"```js\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    snippet: str | None = next((block for block in blocks if "first-tap.js" in block), None)
    assert snippet is not None, "the README has no first-tap.js snippet"
    return snippet


async def test_the_readme_sdk_snippet_runs_as_pasted(tmp_path: Path) -> None:
    require_sdk()
    snippet = readme_snippet()
    assert "ws://127.0.0.1:2001" in snippet
    async with running_emulator(tmp_path) as emulator:
        assert emulator.ws_address is not None
        script = tmp_path / "first-tap.js"
        script.write_text(snippet.replace(":2001", f":{emulator.ws_address[1]}"), encoding="utf-8")
        node = shutil.which("node")
        assert node is not None
        process = await asyncio.create_subprocess_exec(
            node,
            str(script),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode(errors="replace")
    # It printed the name and exited by itself: the disconnect let node's loop end.
    assert stdout.decode().strip() == "supervisor"
