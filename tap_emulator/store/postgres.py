"""The shared management store: PostgreSQL through psycopg 3 (async), for several emulator processes.

psycopg is the optional extra `tap-emulator[postgres]`, so it is imported only when a PostgreSQL store is
opened. Correctness across processes comes from the database alone: the version-guarded upsert makes
writes idempotent, records of a batch are written in key order so two batches cannot deadlock, and
migrations are claimed by inserting their row (a concurrent opener blocks on it, then skips).
Serialization failures and deadlocks (SQLSTATE 40001, 40P01) are retried, as CockroachDB requires.

One store object owns one connection, used by one operation at a time. A lost connection fails the
current operation with StoreError and is reopened by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from . import schema
from .cloud import CloudOperations, Transaction
from .records import DeviceRecord, GroupRecord, StoreError, StoreRejected, as_utc, check_device, check_group
from .urls import PASSWORD_PARAMETER as _PASSWORD_PARAMETER
from .urls import redact_url

if TYPE_CHECKING:
    import psycopg

__all__ = ["DEFAULT_OPERATION_TIMEOUT", "PostgresStore"]

DEFAULT_OPERATION_TIMEOUT = 30.0  # seconds for one whole operation, retries included
_RETRIED_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_ATTEMPTS = 5
_FIRST_BACKOFF = 0.02  # seconds, doubled after each retried attempt

_T = TypeVar("_T")

DIALECT = schema.Dialect(
    placeholder="%({})s",
    timestamp_type="TIMESTAMPTZ",
    encode_timestamp=as_utc,
    decode_timestamp=as_utc,
)


def _import_psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a PostgreSQL store needs psycopg: install the extra with pip install 'tap-emulator[postgres]'"
        ) from None
    return psycopg


def _url_secrets(url: str) -> list[str]:
    """Every form of the URL's password that a driver message might echo, longest first.

    Found without trusting the URL to parse: libpq quotes a malformed token whole
    ('invalid percent-encoded token: "<password>"'), so raw and decoded forms are both listed.
    """
    found = [match.group(2) for match in _PASSWORD_PARAMETER.finditer(url)]
    with contextlib.suppress(ValueError):
        found.append(urlsplit(url).password or "")
    with contextlib.suppress(Exception):
        from psycopg.conninfo import conninfo_to_dict

        found.append(str(conninfo_to_dict(url).get("password") or ""))
    secrets = {form for raw in found for form in (raw, raw.strip("'"), unquote(raw)) if form}
    return sorted(secrets, key=len, reverse=True)


def _rejection_reason(error: psycopg.Error) -> str:
    constraint = error.diag.constraint_name
    if constraint:
        return f"violates {constraint}"
    return error.diag.message_primary or f"SQLSTATE {error.sqlstate}"


class _PostgresTransaction:
    """The open transaction of a PostgresStore operation."""

    dialect = DIALECT

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def rows(self, text: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        cursor = await self._connection.execute(DIALECT.sql(text), params)
        return await cursor.fetchall() if cursor.description is not None else []


class PostgresStore(schema.StoreReads, CloudOperations):
    """A ManagementStore in a PostgreSQL database (tables in the connection's current schema)."""

    dialect = DIALECT

    def __init__(self, url: str, *, operation_timeout: float = DEFAULT_OPERATION_TIMEOUT) -> None:
        self._psycopg = _import_psycopg()
        self._url = url
        self._secrets = _url_secrets(url)
        self._label = self._scrub(redact_url(url))
        self._operation_timeout = operation_timeout
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore({self._label!r})"

    @classmethod
    async def open(cls, url: str, *, operation_timeout: float = DEFAULT_OPERATION_TIMEOUT) -> PostgresStore:
        """Connect to `url` (postgresql://...) and apply pending migrations."""
        store = cls(url, operation_timeout=operation_timeout)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is not None and not (self._connection.closed or self._connection.broken):
            return self._connection
        await self._drop_connection()
        try:
            # autocommit: transactions are explicit, one per operation. The operation timeout bounds
            # connecting too, so libpq's connect_timeout is only needed if the URL wants a shorter one.
            self._connection = await self._psycopg.AsyncConnection.connect(self._url, autocommit=True)
        except self._psycopg.Error as error:
            # from None: the driver's own exception may quote the URL, password included.
            message = self._scrub(str(error).strip())
            raise StoreError(f"cannot connect to PostgreSQL store {self._label}: {message}") from None
        return self._connection

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _run(
        self,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]],
        retried_sqlstates: Collection[str] = _RETRIED_SQLSTATES,
    ) -> _T:
        """Run `work` in one transaction, retrying transient conflicts; map driver errors to ours."""
        if self._closed:
            raise StoreError(f"PostgreSQL store {self._label} is closed")
        errors = self._psycopg.errors
        async with self._lock:
            try:
                async with asyncio.timeout(self._operation_timeout):
                    backoff = _FIRST_BACKOFF
                    for attempt in range(1, _ATTEMPTS + 1):
                        connection = await self._connect()
                        try:
                            async with connection.transaction():
                                return await work(connection)
                        except self._psycopg.Error as error:
                            if error.sqlstate not in retried_sqlstates or attempt == _ATTEMPTS:
                                raise
                        await asyncio.sleep(backoff)
                        backoff *= 2
                    raise AssertionError("unreachable: the last attempt returns or raises")
            except TimeoutError:
                await self._drop_connection()  # the connection may be mid-query
                raise StoreError(
                    f"PostgreSQL store {self._label}: no answer within {self._operation_timeout} s"
                ) from None
            except (errors.IntegrityError, errors.DataError) as error:
                raise StoreRejected(_rejection_reason(error)) from error
            except self._psycopg.Error as error:
                if isinstance(error, self._psycopg.OperationalError):
                    await self._drop_connection()
                message = self._scrub(str(error).strip())
                raise StoreError(f"PostgreSQL store {self._label}: {message}") from error

    async def _migrate(self) -> None:
        async def create_table(connection: psycopg.AsyncConnection[Any]) -> int:
            await connection.execute(DIALECT.sql(schema.CREATE_MIGRATIONS_TABLE))
            cursor = await connection.execute(schema.SCHEMA_VERSION)
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        # Two openers creating the table at once collide in the catalog ("duplicate key", "type ...
        # already exists" or "relation ... already exists"); the loser's retry then finds the table.
        current = await self._run(create_table, _RETRIED_SQLSTATES | {"23505", "42710", "42P07"})
        latest = schema.MIGRATIONS[-1].version
        if current > latest:
            raise StoreError(
                f"PostgreSQL store {self._label} has schema version {current}, newer than this "
                f"tap-emulator knows ({latest}); upgrade tap-emulator"
            )
        for migration in schema.MIGRATIONS:

            async def apply(
                connection: psycopg.AsyncConnection[Any], migration: schema.Migration = migration
            ) -> None:
                claim = {
                    "version": migration.version,
                    "name": migration.name,
                    "applied_at": datetime.now(UTC),
                }
                cursor = await connection.execute(DIALECT.sql(schema.CLAIM_MIGRATION), claim)
                if await cursor.fetchone() is None:
                    return  # applied by this or another opener
                for statement in migration.statements:
                    await connection.execute(DIALECT.sql(statement))

            await self._run(apply)

    async def _query(self, text: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async def work(connection: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await connection.execute(DIALECT.sql(text), params)
            return await cursor.fetchall()

        return await self._run(work)

    async def upsert_device(self, device: DeviceRecord) -> None:
        check_device(device)

        async def work(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(DIALECT.sql(schema.UPSERT_DEVICE), DIALECT.device_params(device))

        await self._run(work)

    # Batches go in one pipeline (psycopg's executemany: statements sent without waiting for each answer),
    # so a batch costs about one network round trip instead of one per record. A refused batch is run
    # again one statement at a time, only to name the refused record (the pipelined run cannot).

    async def upsert_devices(self, devices: Sequence[DeviceRecord]) -> None:
        for index, device in enumerate(devices):
            check_device(device, index)
        if not devices:
            return
        # Key order, as in upsert_groups: two batches never wait on each other in a cycle.
        order = sorted(range(len(devices)), key=lambda index: devices[index].serial)
        rejected = (self._psycopg.errors.IntegrityError, self._psycopg.errors.DataError)

        async def pipelined(connection: psycopg.AsyncConnection[Any]) -> None:
            async with connection.cursor() as cursor:
                params = [DIALECT.device_params(devices[index]) for index in order]
                await cursor.executemany(DIALECT.sql(schema.UPSERT_DEVICE), params)

        async def one_by_one(connection: psycopg.AsyncConnection[Any]) -> None:
            for index in order:
                try:
                    await connection.execute(
                        DIALECT.sql(schema.UPSERT_DEVICE), DIALECT.device_params(devices[index])
                    )
                except rejected as error:
                    raise StoreRejected(_rejection_reason(error), index) from error

        try:
            await self._run(pipelined)
        except StoreRejected:
            await self._run(one_by_one)

    async def upsert_groups(self, groups: Sequence[GroupRecord]) -> list[bool]:
        for index, group in enumerate(groups):
            check_group(group, index)
        if not groups:
            return []
        # Key order (stable, so records of one key keep theirs) means two batches never wait on each other
        # in a cycle; results are put back in the caller's order.
        order = sorted(
            range(len(groups)), key=lambda index: (groups[index].device_serial, groups[index].group_id)
        )
        rejected = (self._psycopg.errors.IntegrityError, self._psycopg.errors.DataError)

        async def pipelined(connection: psycopg.AsyncConnection[Any]) -> list[bool]:
            serials = sorted({group.device_serial for group in groups})
            applied = [False] * len(groups)
            async with connection.cursor() as cursor:
                ensure = [{"serial": serial, "last_seen": schema.NEVER_SEEN} for serial in serials]
                await cursor.executemany(DIALECT.sql(schema.ENSURE_DEVICE), ensure)
                params = [DIALECT.group_params(groups[index]) for index in order]
                await cursor.executemany(DIALECT.sql(schema.UPSERT_GROUP), params, returning=True)
                for position, index in enumerate(order):
                    if position:
                        cursor.nextset()
                    applied[index] = await cursor.fetchone() is not None
            return applied

        async def one_by_one(connection: psycopg.AsyncConnection[Any]) -> list[bool]:
            applied = [False] * len(groups)
            known_devices: set[str] = set()
            for index in order:
                group = groups[index]
                try:
                    if group.device_serial not in known_devices:
                        ensure = {"serial": group.device_serial, "last_seen": schema.NEVER_SEEN}
                        await connection.execute(DIALECT.sql(schema.ENSURE_DEVICE), ensure)
                        known_devices.add(group.device_serial)
                    cursor = await connection.execute(
                        DIALECT.sql(schema.UPSERT_GROUP), DIALECT.group_params(group)
                    )
                except rejected as error:
                    raise StoreRejected(_rejection_reason(error), index) from error
                applied[index] = await cursor.fetchone() is not None
            return applied

        try:
            return await self._run(pipelined)
        except StoreRejected:
            return await self._run(one_by_one)

    async def _rows(self, text: str, params: dict[str, Any]) -> list[Any]:
        return await self._query(text, params)

    async def atomic(
        self,
        work: Callable[[Transaction], Awaitable[_T]],
        *,
        retry_unique_violation: bool = False,
        read_only: bool = False,
    ) -> _T:
        """Run `work` in one transaction, again from the start after a serialization failure or deadlock,
        and after a unique violation if asked (see CloudStore.atomic). Reads need nothing special here."""
        del read_only
        retried = _RETRIED_SQLSTATES | {"23505"} if retry_unique_violation else _RETRIED_SQLSTATES
        return await self._run(lambda connection: work(_PostgresTransaction(connection)), retried)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            await self._drop_connection()
