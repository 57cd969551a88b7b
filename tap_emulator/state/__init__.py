"""Durable device state: one SQLite file holds one device or a whole fleet, written by one thread,
with an outbox.

Why a dedicated module: the tree must never acknowledge a write that a crash could lose. Every change is
committed here (``BEGIN IMMEDIATE``, WAL, ``synchronous=FULL``) before the tree answers, and every change
to an instance writes its outbox row in the same transaction, so the sync task can deliver it later
without a dual-write gap. Concurrent writers are committed together (group commit): the writer thread
drains everything queued while the previous transaction was being synced into the next one, so durable
writes cost one fsync per batch, not one per request.

A fleet of devices shares one file, so that ten thousand devices cost one writer thread, one connection
and one fsync per batch instead of ten thousand of each. ``StateFile`` is the file (its lock, its writer
thread, its connection, migrations, the integrity check, group commit); ``DeviceState`` is one device's
view of it, and every statement of a view names the device's key (the first column of every primary
key). Writes of many devices queued together commit in one transaction, each in its own savepoint, so a
device whose write is refused fails alone. A one-device file is a fleet of one whose key is ``''``; a
fleet file uses serial numbers as keys.

A damaged file is refused when it is opened (``PRAGMA quick_check``), instead of being served until a
read trips over the bad page. A failing disk (SQLITE_FULL, I/O errors) fails the writes it hits with
their cause kept, and is logged once per episode, not once per write.

The module knows nothing of CoAP, Tap frames or SCRAM: credentials arrive as opaque bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tap_emulator.logsafety import EpisodeLog

__all__ = [
    "ONE_DEVICE",
    "DeviceSeed",
    "DeviceState",
    "DeviceValueWrite",
    "FleetFileError",
    "InstanceRow",
    "InstanceWrite",
    "MemoryPageWrite",
    "OutboxRow",
    "Snapshot",
    "StateError",
    "StateFile",
]

log = logging.getLogger(__name__)

MEMORY = ":memory:"
ONE_DEVICE = ""  # the device key of a one-device state file
MAX_KEY_LENGTH = 128  # characters of a device key (a serial number)
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a statement waits for another connection's lock
# Problems `quick_check` reports before it stops; the message shows the first.
_QUICK_CHECK_LIMIT = 5
# Writes committed in one transaction at most: a queue of many devices' writes is drained in batches
# this size, so one transaction (and the WAL it grows) stays bounded.
_MAX_BATCH = 10_000

T = TypeVar("T")

_SCHEMA = (
    # version 1
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE device_value (
        object_id INTEGER NOT NULL, resource_id INTEGER NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (object_id, resource_id));
    CREATE TABLE instance (
        object_id INTEGER NOT NULL, instance_id INTEGER NOT NULL,
        version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
        resource_values TEXT NOT NULL, credential BLOB,
        PRIMARY KEY (object_id, instance_id));
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id INTEGER NOT NULL, instance_id INTEGER NOT NULL, version INTEGER NOT NULL,
        payload TEXT NOT NULL, created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'rejected')),
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT, settled_at REAL);
    CREATE INDEX outbox_pending ON outbox (status, id);
    """,
    # version 2: delivered rows are pruned (the newest of each instance is kept); this counts the others
    """
    CREATE TABLE outbox_pruned (
        id INTEGER PRIMARY KEY CHECK (id = 1), delivered INTEGER NOT NULL DEFAULT 0);
    INSERT INTO outbox_pruned (id, delivered) VALUES (1, 0);
    """,
    # version 3: the emulated target's memory, in fixed-size pages (tap_emulator.target.memory)
    """
    CREATE TABLE target_page (page INTEGER PRIMARY KEY, data BLOB NOT NULL);
    """,
    # version 4: a file holds many devices; every table is keyed by the device first (SQLite cannot alter
    # a primary key, so each table is rebuilt), and the rows of a one-device file get its key ''. The
    # outbox keeps its ids and its AUTOINCREMENT high-water mark (sqlite_sequence moves with a rename).
    """
    ALTER TABLE meta RENAME TO meta_v3;
    CREATE TABLE meta (
        device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (device, key)) WITHOUT ROWID;
    INSERT INTO meta (device, key, value) SELECT '', key, value FROM meta_v3;
    DROP TABLE meta_v3;

    ALTER TABLE device_value RENAME TO device_value_v3;
    CREATE TABLE device_value (
        device TEXT NOT NULL, object_id INTEGER NOT NULL, resource_id INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (device, object_id, resource_id)) WITHOUT ROWID;
    INSERT INTO device_value (device, object_id, resource_id, value)
        SELECT '', object_id, resource_id, value FROM device_value_v3;
    DROP TABLE device_value_v3;

    ALTER TABLE instance RENAME TO instance_v3;
    CREATE TABLE instance (
        device TEXT NOT NULL, object_id INTEGER NOT NULL, instance_id INTEGER NOT NULL,
        version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
        resource_values TEXT NOT NULL, credential BLOB,
        PRIMARY KEY (device, object_id, instance_id));
    INSERT INTO instance (device, object_id, instance_id, version, deleted, resource_values, credential)
        SELECT '', object_id, instance_id, version, deleted, resource_values, credential FROM instance_v3;
    DROP TABLE instance_v3;

    DROP INDEX outbox_pending;
    ALTER TABLE outbox RENAME TO outbox_v3;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
        object_id INTEGER NOT NULL, instance_id INTEGER NOT NULL, version INTEGER NOT NULL,
        payload TEXT NOT NULL, created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'rejected')),
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT, settled_at REAL);
    INSERT INTO outbox (id, device, object_id, instance_id, version, payload, created_at, status,
            attempts, next_attempt_at, last_error, settled_at)
        SELECT id, '', object_id, instance_id, version, payload, created_at, status,
            attempts, next_attempt_at, last_error, settled_at FROM outbox_v3;
    DELETE FROM sqlite_sequence WHERE name = 'outbox';
    UPDATE sqlite_sequence SET name = 'outbox' WHERE name = 'outbox_v3';
    DROP TABLE outbox_v3;
    CREATE INDEX outbox_pending ON outbox (device, id) WHERE status = 'pending';
    CREATE INDEX outbox_instance ON outbox (device, object_id, instance_id, version);

    ALTER TABLE outbox_pruned RENAME TO outbox_pruned_v3;
    CREATE TABLE outbox_pruned (
        device TEXT NOT NULL PRIMARY KEY, delivered INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
    INSERT INTO outbox_pruned (device, delivered) SELECT '', delivered FROM outbox_pruned_v3;
    DROP TABLE outbox_pruned_v3;

    ALTER TABLE target_page RENAME TO target_page_v3;
    CREATE TABLE target_page (
        device TEXT NOT NULL, page INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (device, page));
    INSERT INTO target_page (device, page, data) SELECT '', page, data FROM target_page_v3;
    DROP TABLE target_page_v3;
    """,
)


class StateError(Exception):
    """The state file cannot be opened, read or written.

    ``cause`` names what SQLite reported (``SQLITE_FULL``, ``SQLITE_CORRUPT``, ...) when it was SQLite.
    """

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class FleetFileError(StateError):
    """A fleet's state file opened as the file of one device (a fleet file names its devices by serial)."""


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One stored instance: public resource values, an opaque credential and a version."""

    object_id: int
    instance_id: int
    version: int
    deleted: bool
    values: Mapping[int, Any]
    credential: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class InstanceWrite:
    """Replace an instance row; ``outbox_payload`` (public data only) is queued for the sync task."""

    row: InstanceRow
    outbox_payload: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class DeviceValueWrite:
    object_id: int
    resource_id: int
    value: Any


@dataclass(frozen=True, slots=True)
class MemoryPageWrite:
    """Replace one page of the target memory (its full contents)."""

    page: int
    data: bytes = field(repr=False)


Change = InstanceWrite | DeviceValueWrite | MemoryPageWrite


@dataclass(frozen=True, slots=True)
class DeviceSeed:
    """One device's factory state for ``StateFile.seed_many_sync``: its key, its writes, its meta values."""

    key: str
    changes: Sequence[Change]
    meta: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the tree needs at start-up."""

    meta: Mapping[str, str]
    device_values: Mapping[tuple[int, int], Any]
    instances: Mapping[tuple[int, int], InstanceRow]
    memory_pages: Mapping[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    object_id: int
    instance_id: int
    version: int
    payload: Mapping[str, Any]
    created_at: float
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None


# Values are stored as JSON; bytes (which JSON lacks) as {"hex": ...}. Each value is converted once, in
# the document it is part of: a fleet's start-up decodes tens of thousands of them.


def _to_plain(value: Any) -> Any:
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def _encode_value(value: Any) -> str:
    return json.dumps(_to_plain(value))


def _decode_value(text: str) -> Any:
    return _from_plain(json.loads(text))


def _encode_values(values: Mapping[int, Any]) -> str:
    return json.dumps({str(k): _to_plain(v) for k, v in sorted(values.items())})


def _decode_values(text: str) -> dict[int, Any]:
    return {int(k): _from_plain(v) for k, v in json.loads(text).items()}


_STOP = object()


def _settle(fut: Future[Any], result: Any = None, *, error: BaseException | None = None) -> None:
    """Resolve a caller's future unless the caller gave up (its task was cancelled, e.g. because the
    client vanished): the write itself is still committed, and the writer thread must not die of it."""
    try:
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)
    except InvalidStateError:
        pass


def _cause(exc: BaseException) -> str:
    """SQLite's name for the error (SQLITE_FULL, SQLITE_IOERR_WRITE, ...), else the exception's type."""
    name = getattr(exc, "sqlite_errorname", None)
    return name if isinstance(name, str) else type(exc).__name__


def _state_error(exc: BaseException, what: str = "state write failed") -> StateError:
    if isinstance(exc, StateError):
        return exc
    return StateError(f"{what}: {exc} ({_cause(exc)})", _cause(exc))


def rollback_open_transaction(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite rolls back by itself after some errors
    (SQLITE_FULL, SQLITE_IOERR); a ROLLBACK then would fail and hide the error that caused it."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def check_key(key: object) -> str:
    """A device key (a serial number, or '' for a one-device file), or a StateError saying why not."""
    if not isinstance(key, str):
        raise StateError(f"a device key is a string, not {type(key).__name__}")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise StateError(
            f"the device key {key[:40]!r} is not a printable string of at most {MAX_KEY_LENGTH} characters"
        )
    return key


# A write job's work: it gets the connection and its device's key, inside the shared group-commit
# transaction (a call job's function gets the connection alone, and opens its own transaction if any).
Write = Callable[[sqlite3.Connection, str], Any]


class StateFile:
    """One SQLite state file (one device's or a fleet's), owned by one writer thread.

    All SQL runs on that thread (sqlite3 connections are not shared across threads). Coroutines submit
    work and await its future. Writes of every device of the file share one queue: the writes waiting
    when a transaction starts are committed in it together (one fsync), each in its own savepoint.
    ``device(key)`` gives one device's view (``DeviceState``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float],
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        owner: bool = False,
    ) -> None:
        """``owner``: this process is the file's one writer (``serve``, ``reset``, ``fleet``); it holds the
        file's lock (``tap_emulator.state.lock``) until ``close``, and a file another owner holds is
        refused."""
        self.path = str(path)
        self._lock: Any = None
        if owner and self.path != MEMORY:
            from tap_emulator.state.lock import StateLock

            self._check_usable_path()
            self._lock = StateLock.acquire(self.path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._write_failures = EpisodeLog(log)  # used on the writer thread only
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held while a job is queued or the file closes: no job can be queued behind the stop marker,
        # where it would never be run and its caller would wait for ever.
        self._submitting = threading.Lock()
        self._opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name=f"state:{Path(self.path).name}", daemon=True)
        self._closed = False
        self._thread.start()
        try:
            self._opened.result()
        except BaseException:
            self._release_lock()
            raise

    def _check_usable_path(self) -> None:
        """A state path that cannot be a file is refused with its cause, before anything is created."""
        path = Path(self.path)
        if path.is_dir():
            raise StateError(f"the state {self.path} is a directory, not a file")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise StateError(f"the state {self.path} cannot be created: {parent} is not a directory")
                if not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
                    raise StateError(f"the state {self.path} cannot be created: {parent} is not writable")
                break

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # ------------------------------------------------------------------ thread side

    def _connect(self) -> sqlite3.Connection:
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            if self.path != MEMORY:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StateError(f"{self.path}: cannot switch to WAL journal mode")
                self._check_integrity(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        # quick_check reads every page and checks the b-trees (not the index contents): a few ms for a
        # device's file, about 50 ms for a 10,000-device fleet's (23 MB), and it catches the damaged page
        # that would otherwise fail some later request.
        problems = [row[0] for row in conn.execute(f"PRAGMA quick_check({_QUICK_CHECK_LIMIT})")]
        if problems != ["ok"]:
            raise StateError(f"{self.path} is damaged ({_damage(problems)})", "SQLITE_CORRUPT")

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > len(_SCHEMA):
                raise StateError(f"state schema version {current} is newer than this emulator knows")
            for version in range(current, len(_SCHEMA)):
                for statement in _SCHEMA[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            rollback_open_transaction(conn)
            raise

    def _open_error(self, exc: BaseException) -> StateError:
        if isinstance(exc, StateError):
            return exc
        cause = _cause(exc)
        if cause.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StateError(f"{self.path} is damaged ({exc})", cause)
        return StateError(f"{self.path}: {exc}", cause)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError, StateError) as exc:
            self._opened.set_exception(self._open_error(exc))
            return
        self._opened.set_result(None)
        carried: Any = None
        try:
            while True:
                job = carried if carried is not None else self._jobs.get()
                carried = None
                if job is _STOP:
                    return
                if job[0] != "write":
                    _, fn, fut = job
                    try:
                        _settle(fut, fn(conn))
                    except sqlite3.Error as exc:  # the caller reports it (the CLI, the sync task)
                        rollback_open_transaction(conn)
                        _settle(fut, error=_state_error(exc, "state access failed"))
                    except BaseException as exc:
                        rollback_open_transaction(conn)
                        _settle(fut, error=exc)
                    continue
                # Group commit: every write already waiting, of any device, joins this transaction.
                batch = [job]
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP or nxt[0] != "write":
                        carried = nxt
                        break
                    batch.append(nxt)
                self._commit_batch(conn, batch)
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        # Each write of the batch runs in its own savepoint: a write that cannot be applied is rolled
        # back and fails alone, instead of failing the unrelated writes (of its own device or of others)
        # that share its transaction. When SQLite has rolled the whole transaction back (a full disk, an
        # I/O error), every write of the batch fails with that error, never with the one a later
        # ROLLBACK would raise.
        refused: dict[int, tuple[str, StateError]] = {}
        results: list[Any] = [None] * len(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, (_, device, work, _fut) in enumerate(batch):
                    conn.execute("SAVEPOINT one_write")
                    try:
                        results[index] = work(conn, device)
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise
                        conn.execute("ROLLBACK TO one_write")
                        refused[index] = (device, _state_error(exc))
                    conn.execute("RELEASE one_write")
                conn.execute("COMMIT")
            except BaseException:
                rollback_open_transaction(conn)
                raise
        except BaseException as exc:
            error = _state_error(exc)
            self._log_failure(error)
            for _, _device, _work, fut in batch:
                _settle(fut, error=error)
            return
        for device, failure in refused.values():
            self._log_failure(failure, device)
        if not refused:
            self._write_failures.recovered("state writes to %s succeed again", self.path)
        for index, (_, _device, _work, fut) in enumerate(batch):
            failed = refused.get(index)
            _settle(fut, results[index], error=None if failed is None else failed[1])

    def _log_failure(self, error: StateError, device: str = ONE_DEVICE) -> None:
        # One line per episode and cause: a full disk fails every write until space is back.
        where = self.path if device == ONE_DEVICE else f"{self.path} (device {device})"
        self._write_failures.failed(error.cause, "%s: %s", where, error)

    def _apply(self, conn: sqlite3.Connection, device: str, changes: Iterable[Change]) -> None:
        """Write one device's changes (inside the caller's transaction), each instance change with its
        outbox row."""
        now = self._clock()
        for change in changes:
            if isinstance(change, DeviceValueWrite):
                conn.execute(
                    "INSERT INTO device_value (device, object_id, resource_id, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (device, object_id, resource_id) DO UPDATE SET value = excluded.value",
                    (device, change.object_id, change.resource_id, _encode_value(change.value)),
                )
                continue
            if isinstance(change, MemoryPageWrite):
                conn.execute(
                    "INSERT INTO target_page (device, page, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (device, page) DO UPDATE SET data = excluded.data",
                    (device, change.page, change.data),
                )
                continue
            row = change.row
            conn.execute(
                "INSERT INTO instance (device, object_id, instance_id, version, deleted, resource_values, "
                "credential) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device, object_id, instance_id) DO UPDATE SET "
                "version = excluded.version, deleted = excluded.deleted, "
                "resource_values = excluded.resource_values, credential = excluded.credential",
                (
                    device,
                    row.object_id,
                    row.instance_id,
                    row.version,
                    int(row.deleted),
                    _encode_values(row.values),
                    row.credential,
                ),
            )
            if change.outbox_payload is not None:
                conn.execute(
                    "INSERT INTO outbox (device, object_id, instance_id, version, payload, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        device,
                        row.object_id,
                        row.instance_id,
                        row.version,
                        json.dumps(change.outbox_payload),
                        now,
                    ),
                )

    @staticmethod
    def _upsert_meta(conn: sqlite3.Connection, device: str, items: Mapping[str, str]) -> None:
        conn.executemany(
            "INSERT INTO meta (device, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (device, key) DO UPDATE SET value = excluded.value",
            [(device, key, value) for key, value in items.items()],
        )

    # ------------------------------------------------------------------ caller side

    @property
    def closed(self) -> bool:
        return self._closed

    def _submit(self, job: tuple[Any, ...]) -> Future[Any]:
        with self._submitting:
            if self._closed:
                raise StateError(f"the state {self.path} is closed")
            self._jobs.put(job)
        return job[-1]  # type: ignore[no-any-return]

    def _submit_write(self, device: str, work: Write) -> Future[Any]:
        return self._submit(("write", device, work, Future()))

    def call_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread and wait (file-wide work: start-up, the CLI)."""
        result: T = self._submit(("call", fn, Future())).result()
        return result

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread (inside no transaction: fn opens its own)."""
        result: T = await asyncio.wrap_future(self._submit(("call", fn, Future())))
        return result

    def device(self, key: str) -> DeviceState:
        """The view of one device's rows (``key``: its serial number; '' in a one-device file). Closing
        the view leaves the file open for the other devices."""
        if self._closed:
            raise StateError(f"the state {self.path} is closed")
        return DeviceState._view(self, check_key(key))

    def devices(self) -> list[str]:
        """The keys of every device that has rows in the file, sorted."""
        tables = ("meta", "device_value", "instance", "target_page", "outbox")
        sql = " UNION ".join(f"SELECT DISTINCT device FROM {table}" for table in tables)
        return self.call_sync(lambda conn: [key for (key,) in conn.execute(f"{sql} ORDER BY 1")])

    def seed_many_sync(
        self, items: Iterable[DeviceSeed | tuple[str, Sequence[Change], Mapping[str, str]]]
    ) -> None:
        """Write many devices' factory state in one transaction (a fleet's batched start-up): each item's
        changes (instance changes with their outbox rows) and meta values, as a fresh device's seed
        writes them. An item is a DeviceSeed or a (key, changes, meta) tuple. All or nothing: an item
        that cannot be written fails the call, naming its device."""
        seeds = tuple(item if isinstance(item, DeviceSeed) else DeviceSeed(*item) for item in items)
        for seed in seeds:
            check_key(seed.key)

        def write(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                for seed in seeds:
                    try:
                        self._apply(conn, seed.key, seed.changes)
                        self._upsert_meta(conn, seed.key, seed.meta)
                    except Exception as exc:
                        if not conn.in_transaction:  # SQLite gave the transaction up: not this item's fault
                            raise
                        raise _state_error(exc, f"seeding device {seed.key!r} failed") from exc

        self.call_sync(write)

    async def pending_devices(self) -> list[str]:
        """The devices that have pending outbox rows (sorted), for the one sync task of a fleet."""

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT DISTINCT device FROM outbox WHERE status = 'pending' ORDER BY device")
            return [key for (key,) in rows]

        return await self.call(read)

    def meta_of_all_sync(self, key: str) -> dict[str, str]:
        """device key -> its meta value of ``key``, for every device that has one (start-up without one
        query per device)."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(conn.execute("SELECT device, value FROM meta WHERE key = ?", (key,)).fetchall())

        return self.call_sync(read)

    def close(self) -> None:
        """Stop the writer thread once the work already queued is done, and release the lock; later
        calls of the file and of every view fail with StateError."""
        with self._submitting:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(_STOP)
        self._thread.join(timeout=30)
        self._release_lock()


def _a_fleet_device(conn: sqlite3.Connection) -> str | None:
    """The key of a device of a fleet in the file (one with a key other than ''), if there is one."""
    for table in ("meta", "instance", "device_value"):
        row = conn.execute(f"SELECT device FROM {table} WHERE device > '' LIMIT 1").fetchone()
        if row is not None:
            return str(row[0])
    return None


class DeviceState:
    """One device's durable state: its view of a ``StateFile``.

    Every statement a view runs names its key, so the rows of two devices of one file never mix.
    ``DeviceState(path, ...)`` opens a one-device file of its own (key ''), and closes it on ``close``;
    ``StateFile.device(key)`` gives a view of a fleet file, whose ``close`` leaves the file open.
    """

    file: StateFile
    key: str
    path: str

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float],
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        owner: bool = False,
    ) -> None:
        """``owner``: this process is the file's one writer (``serve``, ``reset``); it holds the file's
        lock (``tap_emulator.state.lock``) until ``close``, and a file another owner holds is refused.

        A fleet's file is refused: served as one device it would gain a device '' beside the fleet's."""
        file = StateFile(path, clock=clock, busy_timeout=busy_timeout, owner=owner)
        try:
            fleet_device = file.call_sync(_a_fleet_device)
        except BaseException:
            file.close()
            raise
        if fleet_device is not None:
            file.close()
            raise FleetFileError(
                f"the state {file.path} holds a fleet of devices (such as {fleet_device!r}), not one device"
            )
        self._bind(file, ONE_DEVICE, True)

    @classmethod
    def _view(cls, file: StateFile, key: str) -> DeviceState:
        view = cls.__new__(cls)
        view._bind(file, key, False)
        return view

    def _bind(self, file: StateFile, key: str, owns_file: bool) -> None:
        self.file = file
        self.key = key
        self.path = file.path
        self._owns_file = owns_file
        self._closed = False

    def __repr__(self) -> str:
        return f"DeviceState({self.path!r}, key={self.key!r})"

    @property
    def closed(self) -> bool:
        return self._closed or self.file.closed

    def _check_open(self) -> None:
        if self._closed:
            what = "the state" if self.key == ONE_DEVICE else f"the state of device {self.key!r}"
            raise StateError(f"{what} is closed")

    def _submit_call(self, fn: Callable[[sqlite3.Connection, str], T]) -> Future[T]:
        self._check_open()
        key = self.key
        return self.file._submit(("call", lambda conn: fn(conn, key), Future()))

    def _submit_write(self, work: Callable[[sqlite3.Connection, str], T]) -> Future[T]:
        self._check_open()
        return self.file._submit_write(self.key, work)

    def call_sync(self, fn: Callable[[sqlite3.Connection, str], T]) -> T:
        """Run ``fn(connection, key)`` on the writer thread and wait (for start-up and the CLI); fn must
        filter and write by the device ``key`` it is given."""
        return self._submit_call(fn).result()

    async def call(self, fn: Callable[[sqlite3.Connection, str], T]) -> T:
        """Run ``fn(connection, key)`` on the writer thread (inside no transaction: fn opens its own)."""
        return await asyncio.wrap_future(self._submit_call(fn))

    async def transact(self, fn: Callable[[sqlite3.Connection, str], T]) -> T:
        """Run ``fn(connection, key)`` inside the group-commit transaction, in its own savepoint (fn opens
        no transaction); returns fn's result once it is on disk. An exception of fn rolls back only fn's
        work, and is raised here as a StateError."""
        return await asyncio.wrap_future(self._submit_write(fn))

    def transact_sync(self, fn: Callable[[sqlite3.Connection, str], T]) -> T:
        return self._submit_write(fn).result()

    def _changes(self, changes: Iterable[Change]) -> Callable[[sqlite3.Connection, str], None]:
        changes = tuple(changes)
        apply = self.file._apply
        return lambda conn, key: apply(conn, key, changes)

    async def commit(self, changes: Iterable[Change]) -> None:
        """Durably apply ``changes`` (all or nothing); returns once they are on disk."""
        await self.transact(self._changes(changes))

    def commit_sync(self, changes: Iterable[Change]) -> None:
        self.transact_sync(self._changes(changes))

    def load(self) -> Snapshot:
        def read(conn: sqlite3.Connection, key: str) -> Snapshot:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE device = ?", (key,)).fetchall())
            device_values = {
                (o, r): _decode_value(v)
                for o, r, v in conn.execute(
                    "SELECT object_id, resource_id, value FROM device_value WHERE device = ?", (key,)
                )
            }
            instances = {
                (o, i): InstanceRow(o, i, ver, bool(d), _decode_values(vals), cred)
                for o, i, ver, d, vals, cred in conn.execute(
                    "SELECT object_id, instance_id, version, deleted, resource_values, credential "
                    "FROM instance WHERE device = ?",
                    (key,),
                )
            }
            pages = {
                p: bytes(d)
                for p, d in conn.execute("SELECT page, data FROM target_page WHERE device = ?", (key,))
            }
            return Snapshot(meta, device_values, instances, pages)

        return self.call_sync(read)

    def set_meta_sync(self, items: Mapping[str, str]) -> None:
        items = dict(items)
        self.transact_sync(lambda conn, key: StateFile._upsert_meta(conn, key, items))

    def reset_sync(self, changes: Iterable[Change], meta: Mapping[str, str]) -> None:
        """Factory reset: drop device values and the target memory, rewrite instances, in one transaction
        (outbox kept)."""
        changes = tuple(changes)
        meta = dict(meta)
        apply = self.file._apply

        def write(conn: sqlite3.Connection, key: str) -> None:
            conn.execute("DELETE FROM device_value WHERE device = ?", (key,))
            conn.execute("DELETE FROM target_page WHERE device = ?", (key,))
            conn.execute("DELETE FROM meta WHERE device = ?", (key,))
            StateFile._upsert_meta(conn, key, meta)
            apply(conn, key, changes)

        self.transact_sync(write)

    # outbox, for the sync task and `store status`

    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        def read(conn: sqlite3.Connection, key: str) -> list[OutboxRow]:
            return [
                OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8], r[9])
                for r in conn.execute(
                    "SELECT id, object_id, instance_id, version, payload, created_at, status, attempts, "
                    "next_attempt_at, last_error FROM outbox WHERE device = ? AND status = 'pending' "
                    "ORDER BY id LIMIT ?",
                    (key, limit),
                )
            ]

        return await self.call(read)

    def close(self) -> None:
        """Close this view (and the file, when the view opened it); the work already queued still runs."""
        if self._closed:
            return
        self._closed = True
        if self._owns_file:
            self.file.close()


def _damage(problems: list[str]) -> str:
    """The first problem quick_check reported, on one line, and how many more there were."""
    first = " ".join(problems[0].split())[:200]
    more = len(problems) - 1
    return first if not more else f"{first}; and {more} more problem(s)"


class _immediate:
    """``with _immediate(conn):`` runs the block in a BEGIN IMMEDIATE transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            rollback_open_transaction(self.conn)
