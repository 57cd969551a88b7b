"""Fixtures for the cloud core tests: a store of each engine (the store tests' fixtures), a fixed clock and
counted ids, and a service over them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from store.conftest import pg_url, store_url  # noqa: F401 - the engines' fixtures, shared

from tap_emulator.cloud import CloudService
from tap_emulator.store import DeviceRecord, ManagementStore, open_store
from tap_emulator.store.cloud import CloudStore

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


@dataclass
class Clock:
    """A clock tests move by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Ids:
    """Ids "id-1", "id-2", ... so a test can name what it creates."""

    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __call__(self) -> str:
        return f"id-{next(self.counter)}"


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[ManagementStore]:  # noqa: F811 - the shared fixture
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(engine: ManagementStore, clock: Clock) -> CloudService:
    assert isinstance(engine, CloudStore)
    return CloudService(engine, clock=clock, new_id=Ids())


@pytest.fixture
def add_device(engine: ManagementStore) -> Callable[..., Any]:
    """Put a device in the store the way the sync task does."""

    async def add(serial: str, model: str = "TAP 1.10 EMU") -> None:
        await engine.upsert_device(DeviceRecord(serial, model, "1.118.0", T0))

    return add
