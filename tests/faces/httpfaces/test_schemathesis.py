"""Property-based fuzzing of every face's OpenAPI document with schemathesis, over real HTTP.

A ``tap-emulator serve`` subprocess (a real device syncing into a SQLite store) serves the faces; for
each operation of each face's ``/openapi/{face}.json``, schemathesis generates valid and invalid
requests (a bounded number of examples, no deadline) sent with that face's valid credentials. No answer
may be a 5xx except the one a seed prescribes (ROMA's 500 ``ROMA.00110002`` for a missing instance),
every answer must be JSON, and the server must survive it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from .conftest import APP_SERVICE, IOTIZE_ALICE, OC_APP_1, ROMA_TOKEN

REPO = Path(__file__).resolve().parents[3]
MAX_EXAMPLES = 25
pytestmark = pytest.mark.timeout(300)

CREDENTIALS: dict[str, dict[str, str]] = {
    "native": {},
    "iotize": IOTIZE_ALICE,
    "oceanconnect": OC_APP_1,
    "appservice": APP_SERVICE,
    "roma": ROMA_TOKEN,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("fuzz")
    # The fuzzer makes far more calls than OceanConnect's default throttle allows.
    config = workdir / "cloud.toml"
    defaults = REPO / "resources" / "cloud" / "default.toml"
    config.write_text(defaults.read_text().replace("throttle_per_minute = 100", "throttle_per_minute = 0"))
    args = [
        sys.executable, "-m", "tap_emulator", "serve", "--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off",
        "--http", "127.0.0.1:0", "--state", str(workdir / "device.sqlite3"), "--cloud-config", str(config),
    ]  # fmt: skip
    log = workdir / "server.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            args, cwd=workdir, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(2)]
        assert lines[1].startswith("listening http "), (lines, log.read_text())
        yield f"http://{lines[1].removeprefix('listening http ')}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "Traceback" not in log.read_text()


def prescribed(face: str, response: Any) -> bool:
    """A 5xx the seed itself documents."""
    if face != "roma" or response.status_code != 500:
        return False
    return bool(response.json().get("error_code") == "ROMA.00110002")


@pytest.mark.parametrize("face", list(CREDENTIALS))
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_unprescribed_5xx(server: str, face: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi/{face}.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert operations and len(operations) == len(results), f"the {face} face's document is broken"
    seen: list[int] = []
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=server, headers=dict(CREDENTIALS[face]), timeout=10)
            seen.append(response.status_code)
            assert response.status_code < 500 or prescribed(face, response), (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )
            if response.status_code != 204:
                response.json()  # every answer is JSON
            # Every answer matches the face's own document: a status it lists, with the body it describes.
            case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])

        run()
    assert seen
    assert httpx.get(f"{server}/api/v1/devices", timeout=10).status_code == 200  # still serving
