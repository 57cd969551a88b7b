"""The embedded management store: SQLite through the stdlib driver, one dedicated worker thread per store.

sqlite3 connections are blocking and tied to their thread, so every call runs on a single-thread executor
that owns the connection; the event loop never blocks and statements are serialised for free.
Writes use BEGIN IMMEDIATE: a deferred transaction that reads before it writes can fail at once with
"database is locked" whatever the busy timeout, while an immediate one waits for the writer lock.

The file is shared by every emulator process whose state lives beside it, and anything on the machine
can touch it, so it must not be able to crash them. WAL mode maps its -shm file into each process:
truncating that file killed the process with SIGBUS. The store therefore uses a rollback journal
(TRUNCATE: no shared memory, the file locks alone coordinate processes) with memory mapping off, so a
damaged or truncated file becomes an error, never a signal. The cost is fsyncs at each commit and
readers kept out while a commit holds the lock, which the busy timeout absorbs (README, Performance).
The file is checked when opened (quick_check) and its identity before each call: a file deleted or
replaced under the store is reported once and opened afresh on the next call, and any other driver
error also drops the connection, so the sync task's next attempt starts from what is on disk now.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from . import schema
from .cloud import CloudOperations, Transaction
from .records import DeviceRecord, GroupRecord, StoreError, StoreRejected, as_utc, check_device, check_group

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SqliteStore"]

DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for another connection's write lock
JOURNAL_MODE = "truncate"  # a rollback journal: no -shm file mapped into every process (see above)
_MEMORY = ":memory:"
_QUICK_CHECK_LIMIT = 5  # problems quick_check reports before it stops; the message shows the first

_T = TypeVar("_T")


def _encode_timestamp(moment: datetime) -> str:
    # Fixed width, always UTC with microseconds, so text comparison orders like time does.
    return as_utc(moment).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _decode_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


DIALECT = schema.Dialect(
    placeholder=":{}",
    timestamp_type="TEXT",
    encode_timestamp=_encode_timestamp,
    decode_timestamp=_decode_timestamp,
)


def _rejection_reason(error: sqlite3.IntegrityError) -> str:
    # SQLite names the violated constraint ("CHECK constraint failed: access_groups_name_length").
    return str(error)


class _SqliteTransaction:
    """The open BEGIN IMMEDIATE transaction of a SqliteStore; each statement runs on the store's thread."""

    dialect = DIALECT

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def rows(self, text: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        store = self._store
        return await store._on_thread(
            lambda: store._open_connection.execute(DIALECT.sql(text), params).fetchall()
        )


class SqliteStore(schema.StoreReads, CloudOperations):
    """A ManagementStore in one SQLite file (or in memory); open it with `SqliteStore.open`.

    One asyncio lock serialises the store's operations, since a cloud transaction (`atomic`) spans
    several trips to the thread and no other statement may run on the connection in between.
    """

    dialect = DIALECT

    def __init__(
        self, path: str, connection: sqlite3.Connection, worker: ThreadPoolExecutor, busy_timeout: float
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        # Owned by the worker thread: None after a failure, until the next call reconnects.
        self._connection: sqlite3.Connection | None = connection
        self._identity = _file_identity(path)
        self._worker = worker
        self._closed = False
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SqliteStore:
        """Open (creating if needed) the database at `path` (":memory:" for a private in-memory one)."""
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tap-store-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(worker, _connect, path, busy_timeout)
        except StoreError:
            worker.shutdown(wait=False)
            raise
        except (sqlite3.Error, OSError) as error:
            worker.shutdown(wait=False)
            raise StoreError(f"cannot open SQLite store {path!r}: {error}") from error
        store = cls(path, connection, worker, busy_timeout)
        try:
            await store._call(store._migrate)
        except BaseException:
            await store.close()
            raise
        return store

    async def _call(self, work: Callable[[], _T]) -> _T:
        """Run `work` on the store's thread, alone, turning driver errors into StoreError."""
        async with self._lock:
            return await self._on_thread(work)

    async def atomic(
        self,
        work: Callable[[Transaction], Awaitable[_T]],
        *,
        retry_unique_violation: bool = False,
        read_only: bool = False,
    ) -> _T:
        """Run `work` in one BEGIN IMMEDIATE transaction (writers are serialised: nothing to retry), or
        for `read_only` work a deferred one, which reads without taking the write lock."""
        del retry_unique_violation
        begin = "BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE"
        async with self._lock:
            try:
                await self._on_thread(lambda: self._open_connection.execute(begin))
                result = await work(_SqliteTransaction(self))
            except BaseException:
                # Also after a cancellation: the thread may still finish BEGIN or a statement first, so
                # the rollback is queued behind it and checks that a transaction is open. A connection
                # dropped meanwhile (a replaced file) took its transaction with it.
                await self._on_thread(self._rollback_open_transaction)
                raise
            await self._on_thread(lambda: self._open_connection.commit())
            return result

    def _rollback_open_transaction(self) -> None:
        connection = self._connection
        if connection is not None and connection.in_transaction:
            connection.rollback()

    async def _on_thread(self, work: Callable[[], _T]) -> _T:
        if self._closed:
            raise StoreError(f"SQLite store {self._path!r} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._worker, self._checked, work)
        except sqlite3.IntegrityError as error:
            raise StoreRejected(_rejection_reason(error)) from error
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"SQLite store {self._path!r}: {error}") from error

    def _checked(self, work: Callable[[], _T]) -> _T:
        """On the worker thread: run `work` on a connection to the file that is at the path now."""
        if self._connection is not None and _file_identity(self._path) != self._identity:
            self._disconnect()
            raise StoreError(
                f"SQLite store {self._path!r} was deleted or replaced while in use; opening it afresh"
            )
        if self._connection is None:
            self._connection = _connect(self._path, self._busy_timeout)
            self._identity = _file_identity(self._path)
            try:
                self._migrate()  # a file created afresh needs the schema
            except BaseException:
                self._disconnect()
                raise
        try:
            return work()
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error:
            self._disconnect()  # e.g. a truncated or rewritten file: the next call starts afresh
            raise

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    @property
    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"SQLite store {self._path!r} is not connected")
        return self._connection

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._open_connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already (a full disk)
                connection.rollback()
            raise
        connection.commit()

    def _query(self, text: str, params: dict[str, Any]) -> list[Any]:
        return self._open_connection.execute(DIALECT.sql(text), params).fetchall()

    def _migrate(self) -> None:
        with self._write_transaction() as connection:
            connection.execute(DIALECT.sql(schema.CREATE_MIGRATIONS_TABLE))
            (current,) = connection.execute(schema.SCHEMA_VERSION).fetchone()
        latest = schema.MIGRATIONS[-1].version
        if current > latest:
            raise StoreError(
                f"SQLite store {self._path!r} has schema version {current}, newer than this "
                f"tap-emulator knows ({latest}); upgrade tap-emulator"
            )
        for migration in schema.MIGRATIONS:
            with self._write_transaction() as connection:
                claim = {
                    "version": migration.version,
                    "name": migration.name,
                    "applied_at": _encode_timestamp(datetime.now(UTC)),
                }
                if connection.execute(DIALECT.sql(schema.CLAIM_MIGRATION), claim).fetchone() is None:
                    continue  # already applied
                for statement in migration.statements:
                    connection.execute(DIALECT.sql(statement))

    async def upsert_device(self, device: DeviceRecord) -> None:
        check_device(device)

        def work() -> None:
            with self._write_transaction() as connection:
                connection.execute(DIALECT.sql(schema.UPSERT_DEVICE), DIALECT.device_params(device))

        await self._call(work)

    async def upsert_devices(self, devices: Sequence[DeviceRecord]) -> None:
        for index, device in enumerate(devices):
            check_device(device, index)
        if not devices:
            return

        def work() -> None:
            with self._write_transaction() as connection:
                for index, device in enumerate(devices):
                    try:
                        connection.execute(DIALECT.sql(schema.UPSERT_DEVICE), DIALECT.device_params(device))
                    except sqlite3.IntegrityError as error:
                        raise StoreRejected(_rejection_reason(error), index) from error

        await self._call(work)

    async def upsert_groups(self, groups: Sequence[GroupRecord]) -> list[bool]:
        for index, group in enumerate(groups):
            check_group(group, index)
        if not groups:
            return []

        def work() -> list[bool]:
            applied: list[bool] = []
            known_devices: set[str] = set()
            with self._write_transaction() as connection:
                for index, group in enumerate(groups):
                    try:
                        if group.device_serial not in known_devices:
                            ensure = {
                                "serial": group.device_serial,
                                "last_seen": _encode_timestamp(schema.NEVER_SEEN),
                            }
                            connection.execute(DIALECT.sql(schema.ENSURE_DEVICE), ensure)
                            known_devices.add(group.device_serial)
                        cursor = connection.execute(
                            DIALECT.sql(schema.UPSERT_GROUP), DIALECT.group_params(group)
                        )
                    except sqlite3.IntegrityError as error:
                        raise StoreRejected(_rejection_reason(error), index) from error
                    applied.append(cursor.fetchone() is not None)
            return applied

        return await self._call(work)

    async def _rows(self, text: str, params: dict[str, Any]) -> list[Any]:
        return await self._call(lambda: self._query(text, params))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._worker, self._disconnect)
        finally:
            self._worker.shutdown(wait=False)


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write opens its own BEGIN IMMEDIATE.
    # timeout= is SQLite's busy timeout: how long a writer waits for another connection's lock.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        # No memory mapping of the file: a truncated file must read as an error, not fault (SIGBUS).
        connection.execute("PRAGMA mmap_size = 0")
        _set_journal_mode(connection, path, busy_timeout)
        if path != _MEMORY:
            _check_integrity(connection, path)
        # NORMAL: one fsync of the journal per commit fewer than FULL. The sync task replays what a power
        # loss rolls back; SQLite notes a very small chance of damage on old filesystems, which the
        # quick_check on open reports.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as error:
        connection.close()
        if error.sqlite_errorname.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            raise StoreError(f"SQLite store {path!r} is damaged ({error})") from error
        raise
    except BaseException:
        connection.close()
        raise
    return connection


def _set_journal_mode(connection: sqlite3.Connection, path: str, busy_timeout: float) -> None:
    # Leaving WAL (a file an older tap-emulator created) needs the file to itself, and reports
    # SQLITE_BUSY at once, without SQLite's busy handler, while another process has it open: wait here.
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = connection.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}").fetchone()[0]
            if mode.lower() not in (JOURNAL_MODE, "memory"):  # "memory" for an in-memory store
                raise StoreError(f"SQLite store {path!r}: cannot leave journal mode {mode}")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                if error.sqlite_errorcode == sqlite3.SQLITE_BUSY:  # e.g. an older version in WAL mode
                    locked = f"SQLite store {path!r} is locked by another process ({error})"
                    raise StoreError(locked) from error
                raise
        time.sleep(0.005)


def _check_integrity(connection: sqlite3.Connection, path: str) -> None:
    problems = [row[0] for row in connection.execute(f"PRAGMA quick_check({_QUICK_CHECK_LIMIT})")]
    if problems != ["ok"]:
        first = " ".join(problems[0].split())[:200]
        raise StoreError(f"SQLite store {path!r} is damaged ({first})")


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None for an in-memory store or a file that is gone."""
    if path == _MEMORY:
        return None
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino
