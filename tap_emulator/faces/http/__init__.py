"""The HTTP face: one uvicorn server in the device's loop carrying the native API and the seed clouds.

``server`` runs uvicorn embedded (bound socket, body limit, no signal handlers of its own); ``app``
composes one router per face; ``routing`` gives each face its own error vocabulary; the faces are
``native``, ``iotize``, ``oceanconnect``, ``appservice`` and ``roma``; ``cloud_config`` holds their
credentials. ``start_cloud`` opens the store, builds the core and serves it: ``serve --http`` and
``tap-emulator cloud`` both start the cloud through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tap_emulator.cloud import CloudService
from tap_emulator.state import DeviceState
from tap_emulator.store import ManagementStore, StoreError, open_store
from tap_emulator.store.cloud import CloudStore

from .app import CloudContext, build_app
from .cloud_config import CloudConfig, load_cloud_config
from .server import DEFAULT_MAX_CONNECTIONS, HttpServer, start_http_server

if TYPE_CHECKING:
    from tap_emulator.control import DeviceControl

__all__ = [
    "PRIVATE_STORE",
    "CloudContext",
    "CloudServer",
    "HttpServer",
    "build_app",
    "load_cloud_config",
    "open_cloud_service",
    "start_cloud",
    "start_http_server",
]

PRIVATE_STORE = "sqlite://:memory:"  # the cloud's store when the device syncs to none


class CloudServer:
    """A running cloud: the HTTP server and the store connection it owns."""

    def __init__(self, server: HttpServer, store: ManagementStore) -> None:
        self.server = server
        self.store = store
        self.address = server.address

    async def close(self) -> None:
        try:
            await self.server.close()
        finally:
            await self.store.close()


async def open_cloud_service(store: ManagementStore, config: CloudConfig) -> CloudService:
    """The core over an open store, with the configured accounts present (idempotent)."""
    from . import appservice, iotize

    if not isinstance(store, CloudStore):
        raise StoreError(f"{store!r} cannot hold device groups")
    service = CloudService(store)
    await iotize.seed_accounts(service, config)
    await appservice.seed_accounts(service, config)
    return service


async def start_cloud(
    store_url: str | None,
    host: str,
    port: int,
    config: CloudConfig,
    *,
    local_devices: Mapping[str, DeviceState] | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    control: DeviceControl | None = None,
    token_required: bool = False,
) -> CloudServer:
    """Open the store at ``store_url`` (a private in-memory one for None) and serve every HTTP face.

    Raises StoreError (store), OSError (the address, e.g. a busy port); nothing stays open on failure.
    """
    store = await open_store(store_url or PRIVATE_STORE)
    try:
        service = await open_cloud_service(store, config)
        app = build_app(
            CloudContext(
                service, config, dict(local_devices or {}), control=control, token_required=token_required
            )
        )
        server = await start_http_server(app, host, port, max_connections=max_connections)
    except BaseException:
        await store.close()
        raise
    return CloudServer(server, store)
