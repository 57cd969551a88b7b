"""What only the SQLite engine promises: a durable file shared without shared memory, files deleted,
replaced, truncated or damaged under it, waiting writers, in-memory stores."""

from __future__ import annotations

import asyncio
import os
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


async def test_file_uses_a_rollback_journal_and_no_shared_memory(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(str(path))
    try:
        await store.upsert_groups([group()])
        modes = await store._call(
            lambda: [
                store._open_connection.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "mmap_size", "synchronous")
            ]
        )
        assert modes == ["truncate", 0, 1]
        # No -shm (the file a truncation turned into SIGBUS) and no -wal, even with the store open.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite3", "store.sqlite3-journal"]
    finally:
        await store.close()


async def test_a_wal_file_from_an_older_version_leaves_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
        connection.execute("CREATE TABLE before_upgrade (x)")
    store = await SqliteStore.open(str(path))
    try:
        await store.upsert_groups([group()])
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # WAL no longer sticks
    assert not Path(f"{path}-shm").exists() and not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("change", ["delete", "replace"])
async def test_a_file_deleted_or_replaced_under_the_store_is_reported_then_opened_afresh(
    tmp_path: Path, change: str
) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(str(path))
    try:
        await store.upsert_groups([group(5, 1)])
        if change == "delete":
            path.unlink()
        else:
            other = tmp_path / "other.sqlite3"
            seeded = await SqliteStore.open(str(other))
            await seeded.upsert_groups([group(9, 3)])
            await seeded.close()
            other.replace(path)
        # Without the check the write would land in the unlinked (or the old) file and be lost.
        with pytest.raises(StoreError, match="deleted or replaced"):
            await store.upsert_groups([group(5, 2)])
        assert await store.upsert_groups([group(5, 2)]) == [True]
        expected = {5: 2} if change == "delete" else {5: 2, 9: 3}
        assert await store.group_versions("EMU0000000001") == expected
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as connection:  # what is on disk now, seen by anyone
        assert dict(connection.execute("SELECT group_id, version FROM access_groups")) == expected


async def test_a_truncated_file_is_an_error_then_a_fresh_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(str(path))
    try:
        await store.upsert_groups([group(5, 1)])
        os.truncate(path, 0)
        with pytest.raises(StoreError):
            await store.upsert_groups([group(5, 2)])
        assert await store.upsert_groups([group(5, 3)]) == [True]
        assert await store.group_versions("EMU0000000001") == {5: 3}
    finally:
        await store.close()


async def test_a_damaged_file_is_refused_on_open(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)
    with pytest.raises(StoreError, match="is damaged"):
        await SqliteStore.open(str(path))


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
    connection = store._open_connection
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
