"""Fixtures for the HTTP faces: a running emulator (real device, real store, real HTTP on 127.0.0.1).

``cloud`` starts ``Emulator`` in-process with CoAP and HTTP on port 0 and the device syncing into the
store named by ``store_url`` (SQLite in tmp_path, or PostgreSQL in a private schema), waits until the
device is visible through the native API, and gives an httpx client aimed at it. Everything started is
stopped; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tap_emulator.app import Emulator, Endpoint, ServeOptions
from tap_emulator.sync import SyncSettings

FAST_SYNC = SyncSettings(backoff_base=0.05, backoff_cap=0.5, heartbeat=60.0)
SYNC_TIMEOUT = 10.0

IOTIZE_ALICE = {"Authorization": "iotize-alice"}
IOTIZE_BOB = {"Authorization": "iotize-bob"}
OC_APP_1 = {"app_key": "oc-app-1", "Authorization": "Bearer oc-token-1"}
OC_APP_2 = {"app_key": "oc-app-2", "Authorization": "Bearer oc-token-2"}
APP_SERVICE = {"app_id": "app-1", "app_key": "app-key-1"}
ROMA_TOKEN = {"X-Auth-Token": "roma-token-1"}
ROMA_BASE = "/v2/proj-1/link/instances/inst-1/device-groups"
OC_BASE = "/iocm/app/devgroup/v1.3.0/devGroups"


def with_parameters(url: str, **parameters: str) -> str:
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in parameters.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty management store, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    server: str = request.getfixturevalue("pg_server")
    schema: str = request.getfixturevalue("pg_schema")
    return with_parameters(server, options=f"-c search_path={schema}")


@dataclass
class Cloud:
    emulator: Emulator
    http: httpx.AsyncClient
    serial: str
    base_url: str

    async def coap_put_name(self, group: int, name: str) -> None:
        """Rename an access group of the device over CoAP (a real client), as a user of the device would."""
        import aiocoap

        address = self.emulator.coap_address
        assert address is not None
        context = await aiocoap.Context.create_client_context()
        try:
            message = aiocoap.Message(
                code=aiocoap.PUT, uri=f"coap://127.0.0.1:{address[1]}/1025/{group}/0", payload=name.encode()
            )
            response = await asyncio.wait_for(context.request(message).response, 5)
            assert response.code == aiocoap.CHANGED
        finally:
            await context.shutdown()


async def wait_for(
    client: httpx.AsyncClient, path: str, ready: Callable[[Any], bool] | None = None
) -> httpx.Response:
    """GET ``path`` until it answers 200 (and ``ready(json)`` holds, when given), within SYNC_TIMEOUT."""
    deadline = asyncio.get_running_loop().time() + SYNC_TIMEOUT
    while True:
        response = await client.get(path)
        if response.status_code == 200 and (ready is None or ready(response.json())):
            return response
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path} not ready in time: {response.status_code} {response.text[:200]}")
        await asyncio.sleep(0.05)


async def start_cloud_emulator(tmp_path: Path, store_url: str, **overrides: object) -> Emulator:
    options = ServeOptions(
        state=str(tmp_path / "device.sqlite3"),
        coap=Endpoint("127.0.0.1", 0),
        tcp=None,
        ws=None,
        store=store_url,
        sync=FAST_SYNC,
        http=Endpoint("127.0.0.1", 0),
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    emulator = Emulator(options, announce=lambda _line: None)
    await emulator.start()
    return emulator


@pytest.fixture
async def cloud(tmp_path: Path, store_url: str) -> AsyncIterator[Cloud]:
    emulator = await start_cloud_emulator(tmp_path, store_url)
    try:
        assert emulator.http_address is not None and emulator.tree is not None
        base_url = f"http://127.0.0.1:{emulator.http_address[1]}"
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
            serial = emulator.tree.serial_number
            await wait_for(client, f"/api/v1/devices/{serial}")
            yield Cloud(emulator, client, serial, base_url)
    finally:
        await emulator.stop()
