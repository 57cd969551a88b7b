"""Durable device state: one SQLite file per emulated device, written by one thread, with an outbox.

Why a dedicated module: the tree must never acknowledge a write that a crash could lose. Every change is
committed here (``BEGIN IMMEDIATE``, WAL, ``synchronous=FULL``) before the tree answers, and every change
to an instance writes its outbox row in the same transaction, so the sync task can deliver it later
without a dual-write gap. Concurrent writers are committed together (group commit): the writer thread
drains everything queued while the previous transaction was being synced into the next one, so durable
writes cost one fsync per batch, not one per request.

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
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_emulator.logsafety import EpisodeLog

__all__ = [
    "DeviceState",
    "DeviceValueWrite",
    "InstanceRow",
    "InstanceWrite",
    "MemoryPageWrite",
    "OutboxRow",
    "Snapshot",
    "StateError",
]

log = logging.getLogger(__name__)

MEMORY = ":memory:"
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a statement waits for another connection's lock
# Problems `quick_check` reports before it stops; the message shows the first.
_QUICK_CHECK_LIMIT = 5

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
)


class StateError(Exception):
    """The state file cannot be opened, read or written.

    ``cause`` names what SQLite reported (``SQLITE_FULL``, ``SQLITE_CORRUPT``, ...) when it was SQLite.
    """

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


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


def _encode_value(value: Any) -> str:
    if isinstance(value, bytes):
        return json.dumps({"hex": value.hex()})
    return json.dumps(value)


def _decode_value(text: str) -> Any:
    value = json.loads(text)
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def _encode_values(values: Mapping[int, Any]) -> str:
    return json.dumps({str(k): json.loads(_encode_value(v)) for k, v in sorted(values.items())})


def _decode_values(text: str) -> dict[int, Any]:
    return {int(k): _decode_value(json.dumps(v)) for k, v in json.loads(text).items()}


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


class DeviceState:
    """The SQLite state file of one device, owned by one writer thread.

    All SQL runs on that thread (sqlite3 connections are not shared across threads). Coroutines submit
    work and await its future; writes queued together are committed in one transaction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float],
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        owner: bool = False,
    ) -> None:
        """``owner``: this process is the file's one writer (``serve``, ``reset``); it holds the file's
        lock (``tap_emulator.state.lock``) until ``close``, and a file another owner holds is refused."""
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
        # state file, and it catches the damaged page that would otherwise fail some later request.
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
                # Group commit: every write already waiting joins this transaction.
                batch = [job]
                while True:
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
        # back and fails alone, instead of failing the unrelated writes that share its transaction.
        # When SQLite has rolled the whole transaction back (a full disk, an I/O error), every write
        # of the batch fails with that error, never with the one a later ROLLBACK would raise.
        refused: dict[int, StateError] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, (_, changes, _fut) in enumerate(batch):
                    conn.execute("SAVEPOINT one_write")
                    try:
                        self._apply(conn, changes)
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise
                        conn.execute("ROLLBACK TO one_write")
                        refused[index] = _state_error(exc)
                    conn.execute("RELEASE one_write")
                conn.execute("COMMIT")
            except BaseException:
                rollback_open_transaction(conn)
                raise
        except BaseException as exc:
            error = _state_error(exc)
            self._log_failure(error)
            for _, _changes, fut in batch:
                _settle(fut, error=error)
            return
        for failure in refused.values():
            self._log_failure(failure)
        if not refused:
            self._write_failures.recovered("state writes to %s succeed again", self.path)
        for index, (_, _changes, fut) in enumerate(batch):
            _settle(fut, None, error=refused.get(index))

    def _log_failure(self, error: StateError) -> None:
        # One line per episode and cause: a full disk fails every write until space is back.
        self._write_failures.failed(error.cause, "%s: %s", self.path, error)

    def _apply(self, conn: sqlite3.Connection, changes: Iterable[Change]) -> None:
        now = self._clock()
        for change in changes:
            if isinstance(change, DeviceValueWrite):
                conn.execute(
                    "INSERT INTO device_value (object_id, resource_id, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (object_id, resource_id) DO UPDATE SET value = excluded.value",
                    (change.object_id, change.resource_id, _encode_value(change.value)),
                )
                continue
            if isinstance(change, MemoryPageWrite):
                conn.execute(
                    "INSERT INTO target_page (page, data) VALUES (?, ?) "
                    "ON CONFLICT (page) DO UPDATE SET data = excluded.data",
                    (change.page, change.data),
                )
                continue
            row = change.row
            conn.execute(
                "INSERT INTO instance (object_id, instance_id, version, deleted, resource_values, "
                "credential) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (object_id, instance_id) DO UPDATE SET "
                "version = excluded.version, deleted = excluded.deleted, "
                "resource_values = excluded.resource_values, credential = excluded.credential",
                (
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
                    "INSERT INTO outbox (object_id, instance_id, version, payload, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (row.object_id, row.instance_id, row.version, json.dumps(change.outbox_payload), now),
                )

    # ------------------------------------------------------------------ caller side

    def _submit(self, job: tuple[Any, ...]) -> Future[Any]:
        if self._closed:
            raise StateError("the state is closed")
        self._jobs.put(job)
        return job[-1]  # type: ignore[no-any-return]

    def call_sync(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` on the writer thread and wait (for start-up and the CLI)."""
        return self._submit(("call", fn, Future())).result()

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` on the writer thread (inside no transaction: fn opens its own)."""
        return await asyncio.wrap_future(self._submit(("call", fn, Future())))

    async def commit(self, changes: Iterable[Change]) -> None:
        """Durably apply ``changes`` (all or nothing); returns once they are on disk."""
        await asyncio.wrap_future(self._submit(("write", tuple(changes), Future())))

    def commit_sync(self, changes: Iterable[Change]) -> None:
        self._submit(("write", tuple(changes), Future())).result()

    def load(self) -> Snapshot:
        def read(conn: sqlite3.Connection) -> Snapshot:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            device_values = {
                (o, r): _decode_value(v)
                for o, r, v in conn.execute("SELECT object_id, resource_id, value FROM device_value")
            }
            instances = {
                (o, i): InstanceRow(o, i, ver, bool(d), _decode_values(vals), cred)
                for o, i, ver, d, vals, cred in conn.execute(
                    "SELECT object_id, instance_id, version, deleted, resource_values, credential "
                    "FROM instance"
                )
            }
            pages = {p: bytes(d) for p, d in conn.execute("SELECT page, data FROM target_page")}
            return Snapshot(meta, device_values, instances, pages)

        result: Snapshot = self.call_sync(read)
        return result

    def set_meta_sync(self, items: Mapping[str, str]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    list(items.items()),
                )

        self.call_sync(write)

    def reset_sync(self, changes: Iterable[Change], meta: Mapping[str, str]) -> None:
        """Factory reset: drop device values and the target memory, rewrite instances, in one transaction
        (outbox kept)."""
        changes = tuple(changes)

        def write(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                conn.execute("DELETE FROM device_value")
                conn.execute("DELETE FROM target_page")
                conn.execute("DELETE FROM meta")
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
                self._apply(conn, changes)

        self.call_sync(write)

    # outbox, for the sync task and `store status`

    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        def read(conn: sqlite3.Connection) -> list[OutboxRow]:
            return [
                OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8], r[9])
                for r in conn.execute(
                    "SELECT id, object_id, instance_id, version, payload, created_at, status, attempts, "
                    "next_attempt_at, last_error FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?",
                    (limit,),
                )
            ]

        rows: list[OutboxRow] = await self.call(read)
        return rows

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        self._thread.join(timeout=30)
        self._release_lock()


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
