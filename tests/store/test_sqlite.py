"""What only the SQLite engine promises: a durable file in WAL mode, waiting writers, in-memory stores."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from tap_emulator.cloud import NATIVE, CloudService, GroupDraft, Tenant
from tap_emulator.store import StoreError, open_store
from tap_emulator.store.sqlite import SqliteStore

from .samples import device, group, profile

pytestmark = pytest.mark.timeout(30)


async def test_data_survives_closing_and_reopening_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    first = await open_store(url)
    await first.upsert_device(device())
    await first.upsert_groups([profile(0xFFFF, 4), group(5, 2, deleted=True)])
    await first.close()

    second = await open_store(url)
    try:
        assert await second.list_devices() == [device()]
        assert await second.list_groups("EMU0000000001") == [group(5, 2, deleted=True), profile(0xFFFF, 4)]
        assert await second.upsert_groups([profile(0xFFFF, 4)]) == [False]
    finally:
        await second.close()


async def test_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///nested.sqlite3")
    await store.close()
    assert (tmp_path / "nested.sqlite3").is_file()


async def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    await store.close()
    with closing(sqlite3.connect(tmp_path / "store.sqlite3")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
async def test_memory_store_is_private_to_its_object(url: str) -> None:
    first, second = await open_store(url), await open_store(url)
    try:
        await first.upsert_groups([group()])
        assert await first.group_versions("EMU0000000001") == {5: 1}
        assert await second.group_versions("EMU0000000001") == {}
    finally:
        await first.close()
        await second.close()


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        locked.set()
        threading.Event().wait(seconds)
        connection.execute("COMMIT")


async def test_writer_waits_for_another_connections_lock(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(str(path), busy_timeout=10)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.3, locked))
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5)
        assert await store.upsert_groups([group()]) == [True]
    finally:
        holder.join()
        await store.close()


async def test_writer_gives_up_after_its_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(str(path), busy_timeout=0.1)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 1.0, locked))
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5)
        with pytest.raises(StoreError, match="locked") as caught:
            await store.upsert_groups([group()])
        assert type(caught.value) is StoreError  # transient: to be retried, not parked
    finally:
        holder.join()
    assert await store.upsert_groups([group()]) == [True]
    await store.close()


async def test_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        await open_store(f"sqlite:///{tmp_path}/missing-directory/store.sqlite3")


async def test_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not an SQLite database, just text long enough to have a header" * 10)
    with pytest.raises(StoreError):
        await open_store(f"sqlite:///{path}")


async def test_every_write_takes_the_writer_lock_up_front(tmp_path: Path) -> None:
    # A deferred transaction that reads before it writes fails at once with "database is locked" when
    # another connection wrote meanwhile, whatever the busy timeout; BEGIN IMMEDIATE waits instead.
    store = await SqliteStore.open(str(tmp_path / "store.sqlite3"))
    statements: list[str] = []
    connection = store._connection
    await store._call(lambda: connection.set_trace_callback(statements.append))
    try:
        await store.upsert_device(device())
        await store.upsert_groups([group(1), group(2)])
        await store.list_groups("EMU0000000001")
    finally:
        await store._call(lambda: connection.set_trace_callback(None))
        await store.close()
    shapes = [
        statement if statement.startswith("BEGIN") else statement.split()[0] for statement in statements
    ]
    assert shapes == [
        *("BEGIN IMMEDIATE", "INSERT", "COMMIT"),
        *("BEGIN IMMEDIATE", "INSERT", "INSERT", "INSERT", "COMMIT"),
        "SELECT",
    ]


async def test_cloud_reads_do_not_wait_for_another_connections_writer(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(str(path), busy_timeout=2.0)
    try:
        service = CloudService(store)
        await service.create_group(Tenant("native", NATIVE), "lab", GroupDraft("g"), "u")
        with closing(sqlite3.connect(path, isolation_level=None)) as writer:
            writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
            assert [g.name for g in (await service.list_groups(None)).items] == ["g"]
            assert (await service.list_devices()).items == ()
            with pytest.raises(StoreError, match="locked"):  # a write still waits, then says why
                await service.create_group(Tenant("native", NATIVE), "lab", GroupDraft("h"), "u")
            writer.execute("ROLLBACK")
    finally:
        await store.close()
