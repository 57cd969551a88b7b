"""Fixtures for the sync tests: real stores (SQLite and PostgreSQL), emulators, profiles and a cuttable proxy.

PostgreSQL comes from TAP_EMULATOR_TEST_PG (default postgresql://127.0.0.1:5432/test); without a server
the PostgreSQL cases skip with the reason shown, except under CI=true, where they fail. Each PostgreSQL
test gets a private schema (search_path in the URL), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.config import PROFILES_DIR
from tap_emulator.store import ManagementStore, open_store
from tap_emulator.sync import SyncSettings
from tap_emulator.tree import DeviceTree

FAST_SYNC = SyncSettings(backoff_base=0.05, backoff_cap=0.5, heartbeat=60.0)
GROUP_OBJECT = 1025


def with_parameters(url: str, **parameters: str) -> str:
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in parameters.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def pg_url(pg_server: str, pg_schema: str) -> str:
    return with_parameters(pg_server, options=f"-c search_path={pg_schema}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ManagementStore]:
    """A second connection to the test's store, to look at what the sync task wrote."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def write_profile(directory: Path, serial: str) -> Path:
    """The default profile under another serial number, as a TOML file in `directory`."""
    text = (PROFILES_DIR / "default.toml").read_text(encoding="utf-8")
    text, count = re.subn(r'(?m)^serial_number = ".*"$', f'serial_number = "{serial}"', text)
    assert count == 1
    path = directory / f"{serial}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running_emulator(
    state: Path | str, store_url: str, *, profile: str = "default", sync: SyncSettings = FAST_SYNC
) -> AsyncIterator[Emulator]:
    options = ServeOptions(
        profile=profile,
        state=str(state),
        coap=Endpoint("127.0.0.1", 0),
        tcp=None,  # the Tap-frame faces are not needed here
        ws=None,
        http=None,
        store=store_url,
        sync=sync,
    )
    emulator = Emulator(options, announce=lambda _line: None)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def tree_of(emulator: Emulator) -> DeviceTree:
    assert emulator.tree is not None
    return emulator.tree


def device_versions(tree: DeviceTree) -> dict[int, int]:
    """group id -> version on the device, tombstones included (what the store must end up holding)."""
    instances = tree.state.load().instances
    return {
        group_id: row.version for (object_id, group_id), row in instances.items() if object_id == GROUP_OBJECT
    }


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.02) -> float:
    """Poll `check` until it holds; the seconds it took. AssertionError after `timeout`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        if await check():
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def store_matches_device(store: ManagementStore, tree: DeviceTree) -> bool:
    return await store.group_versions(tree.serial_number) == device_versions(tree)


@pytest.fixture
async def coap_client() -> AsyncIterator[aiocoap.Context]:
    context = await aiocoap.Context.create_client_context()
    try:
        yield context
    finally:
        await context.shutdown()


async def coap_request(
    client: aiocoap.Context, method: Code, uri: str, payload: bytes = b"", content_format: int | None = None
) -> aiocoap.Message:
    message = aiocoap.Message(code=method, uri=uri, payload=payload)
    if content_format is not None:
        message.opt.content_format = content_format
    return await asyncio.wait_for(client.request(message).response, 10)


class TcpProxy:
    """A loopback TCP proxy in front of a server, which the test can cut (all links dropped, no new ones)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and reset every open link (what an unreachable store looks like)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.transport.abort()
            self._links.discard(sink)
