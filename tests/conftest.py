"""Shared fixtures: a running emulator on 127.0.0.1 port 0, an aiocoap client, and emulator subprocesses.

Every fixture stops what it starts, and every network wait is bounded, so a hung server fails a test
instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUEST_TIMEOUT = 5.0
# Serve only CoAP on a free port, so tests never collide with the fixed default ports of the other faces.
ONLY_COAP = ("--coap", "127.0.0.1:0", "--tcp", "off", "--ws", "off", "--http", "off")


@dataclass
class CoapCall:
    """A client bound to one server: ``await coap.request("GET", "/1025/0/0", accept=42)``."""

    context: object
    host: str
    port: int

    async def request(
        self,
        method: str,
        path: str,
        payload: bytes = b"",
        *,
        content_format: int | None = None,
        accept: int | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> object:
        import aiocoap

        message = aiocoap.Message(
            code=getattr(aiocoap, method), uri=f"coap://{self.host}:{self.port}{path}", payload=payload
        )
        if content_format is not None:
            message.opt.content_format = content_format
        if accept is not None:
            message.opt.accept = accept
        return await asyncio.wait_for(self.context.request(message).response, timeout)  # type: ignore[attr-defined]


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[object]:
    """An in-process emulator (default profile) with a state file in tmp_path, CoAP on 127.0.0.1:0."""
    from tap_emulator.app import Emulator, Endpoint, ServeOptions

    emu = Emulator(
        ServeOptions(
            state=str(tmp_path / "device.sqlite3"),
            coap=Endpoint("127.0.0.1", 0),
            tcp=None,
            ws=None,
            http=None,
            store="off",
        ),
        announce=lambda _line: None,
    )
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def coap_client() -> AsyncIterator[object]:
    import aiocoap

    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


@pytest.fixture
def coap(emulator: object, coap_client: object) -> CoapCall:
    """An aiocoap client aimed at the ``emulator`` fixture."""
    address = emulator.coap_address  # type: ignore[attr-defined]
    assert address is not None
    return CoapCall(coap_client, "127.0.0.1", address[1])


@dataclass
class ServerProcess:
    """A ``tap-emulator serve`` subprocess and the CoAP port it announced."""

    process: subprocess.Popen[str]
    port: int
    log: Path  # the server's stderr (a file, so a chatty server never blocks on a full pipe)

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def emulator_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tap_emulator", *args]


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``tap-emulator serve`` (CoAP only, port 0) with ARGS and wait for its ``listening`` line."""
    started: list[subprocess.Popen[str]] = []

    def spawn(*args: str, cwd: Path | None = None, timeout: float = 20.0) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.stderr"
        with log.open("w") as log_file:
            process = subprocess.Popen(
                emulator_command("serve", *ONLY_COAP, *args),
                cwd=cwd or tmp_path,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        started.append(process)
        assert process.stdout is not None
        line = _readline_with_timeout(process, timeout)
        prefix = "listening coap udp "
        if not line.startswith(prefix):
            process.kill()
            process.communicate(timeout=5)
            raise AssertionError(f"server did not start: {line!r} {log.read_text()!r}")
        return ServerProcess(process, int(line.rsplit(":", 1)[1]), log)

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _readline_with_timeout(process: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            process.kill()
            raise AssertionError("server printed nothing in time")
    return process.stdout.readline().strip()


# ---------------------------------------------------------------------------------------------- PostgreSQL

DEFAULT_TEST_PG = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The base URL of a reachable PostgreSQL server (TAP_EMULATOR_TEST_PG, default the local ``test``
    database), or a visible skip; under CI=true a missing server fails instead."""
    from tap_emulator.store import redact_url

    url = os.environ.get("TAP_EMULATOR_TEST_PG", DEFAULT_TEST_PG)
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3, autocommit=True) as connection:
            connection.execute("SELECT 1")
    except Exception as error:
        reason = f"PostgreSQL not reachable at {redact_url(url)} (set TAP_EMULATOR_TEST_PG): {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture
def pg_schema(pg_server: str) -> Iterator[str]:
    """The name of a fresh schema of the test's own, dropped afterwards (tests never share tables)."""
    import uuid

    import psycopg

    schema = f"tap_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


# ---------------------------------------------------------------- the CoAP fast path, on and off

COAP_TESTS = REPO / "tests" / "faces" / "coap"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every CoAP face test runs twice: with the fast path in front of aiocoap, and with aiocoap alone.

    The ``coap_fast_path`` fixture is added to each test under tests/faces/coap (requested or not) and
    parametrized at session scope, so pytest groups the tests by its value; module fixtures that start
    a server request it, so each value gets its own server.
    """
    if COAP_TESTS not in metafunc.definition.path.parents:
        return
    if "coap_fast_path" not in metafunc.fixturenames:
        metafunc.fixturenames.append("coap_fast_path")
    metafunc.parametrize(
        "coap_fast_path", [True, False], indirect=True, scope="session", ids=["fast-path", "aiocoap-only"]
    )


@pytest.fixture(scope="session")
def coap_fast_path(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Sets the environment variable the CoAP server reads when it binds (TAP_EMULATOR_COAP_FAST_PATH), so
    in-process servers (``start_coap_server``, ``Emulator``) and ``tap-emulator serve`` subprocesses
    alike follow it."""
    from tap_emulator.faces.coap.fast_path import FAST_PATH_ENV

    enabled = bool(getattr(request, "param", True))
    previous = os.environ.get(FAST_PATH_ENV)
    os.environ[FAST_PATH_ENV] = "on" if enabled else "off"
    try:
        yield enabled
    finally:
        if previous is None:
            del os.environ[FAST_PATH_ENV]
        else:
            os.environ[FAST_PATH_ENV] = previous
