"""What only the PostgreSQL engine promises: retried conflicts, recovery from lost connections, bounded
waits, scrubbed secrets, and a package that works without the optional psycopg extra."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tap_emulator.store import StoreError, open_store
from tap_emulator.store.postgres import PostgresStore

from .conftest import raw_rows, with_parameters
from .samples import group

pytestmark = pytest.mark.timeout(30)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _inject_failures(url: str, sqlstate: str, count: int) -> None:
    """Make the next `count` inserts into access_groups fail with `sqlstate`, like CockroachDB's
    inject_retry_errors; a sequence counts attempts because it is not rolled back with them."""
    raw_rows(url, "CREATE SEQUENCE attempts")
    raw_rows(
        url,
        f"""CREATE FUNCTION fail_first_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('attempts') <= {count} THEN
                RAISE EXCEPTION 'injected failure' USING ERRCODE = '{sqlstate}';
            END IF;
            RETURN NEW;
        END $$""",
    )
    raw_rows(
        url,
        "CREATE TRIGGER flaky BEFORE INSERT ON access_groups"
        " FOR EACH ROW EXECUTE FUNCTION fail_first_attempts()",
    )


def _attempts(url: str) -> int:
    return int(raw_rows(url, "SELECT last_value FROM attempts")[0][0])


@pytest.mark.postgres
@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_serialization_failures_and_deadlocks_are_retried(pg_url: str, sqlstate: str) -> None:
    store = await open_store(pg_url)
    try:
        _inject_failures(pg_url, sqlstate, 2)
        assert await store.upsert_groups([group()]) == [True]
        assert _attempts(pg_url) == 3
        assert await store.group_versions("EMU0000000001") == {5: 1}
    finally:
        await store.close()


@pytest.mark.postgres
async def test_retries_are_bounded_and_end_in_a_transient_error(pg_url: str) -> None:
    store = await open_store(pg_url)
    try:
        _inject_failures(pg_url, "40001", 1000)
        with pytest.raises(StoreError, match="injected failure") as caught:
            await store.upsert_groups([group()])
        assert type(caught.value) is StoreError
        assert _attempts(pg_url) == 5
    finally:
        await store.close()


@pytest.mark.postgres
async def test_other_database_errors_are_not_retried(pg_url: str) -> None:
    store = await open_store(pg_url)
    try:
        _inject_failures(pg_url, "XX000", 1000)
        with pytest.raises(StoreError):
            await store.upsert_groups([group()])
        assert _attempts(pg_url) == 1
    finally:
        await store.close()


@pytest.mark.postgres
async def test_lost_connection_fails_one_call_then_reconnects(pg_url: str) -> None:
    name = f"tap-store-test-{uuid.uuid4().hex[:8]}"
    store = await open_store(with_parameters(pg_url, application_name=name))
    try:
        await store.upsert_groups([group(version=1)])
        terminated = raw_rows(
            pg_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'",
        )
        assert terminated == [(True,)]
        with pytest.raises(StoreError):
            await store.upsert_groups([group(version=2)])
        assert await store.upsert_groups([group(version=2)]) == [True]
    finally:
        await store.close()


@pytest.mark.postgres
async def test_operation_blocked_by_a_lock_times_out_and_the_store_recovers(pg_url: str) -> None:
    import psycopg

    store = await PostgresStore.open(pg_url, operation_timeout=0.5)
    try:
        await store.upsert_groups([group(version=1)])
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("SELECT * FROM access_groups FOR UPDATE")
            with pytest.raises(StoreError, match=r"no answer within 0\.5 s"):
                await store.upsert_groups([group(version=2)])
            blocker.rollback()
        assert await store.upsert_groups([group(version=2)]) == [True]
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_scheme_alias_is_accepted(pg_url: str) -> None:
    store = await open_store(pg_url.replace("postgresql://", "postgres://", 1))
    try:
        assert await store.list_devices() == []
    finally:
        await store.close()


@pytest.mark.postgres
async def test_password_never_shows_in_repr_or_errors(pg_url: str) -> None:
    # Trust authentication ignores the password, so the store opens and can be inspected.
    name = f"tap-store-test-{uuid.uuid4().hex[:8]}"
    store = await open_store(with_parameters(pg_url, password="hunter2-secret", application_name=name))
    try:
        assert "hunter2-secret" not in repr(store)
        raw_rows(
            pg_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'",
        )
        with pytest.raises(StoreError) as caught:
            await store.list_devices()
        assert "hunter2-secret" not in str(caught.value)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://tap:hunter2-secret@127.0.0.1:1/test",
        "postgresql://tap:hunter2-secret@127.0.0.1:notaport/test",
        "postgresql://127.0.0.1:1/test?password=hunter2-secret",
        # libpq quotes a malformed token whole in its message
        "postgresql://tap:hunter2-secret%zz@127.0.0.1:1/test",
        "postgresql://127.0.0.1:1/test?password=hunter2-secret%zz",
        "postgresql://tap:hunter2-secret@127.0.0.1:1/test?sslmode=hunter2-secret",
    ],
)
async def test_unreachable_server_is_a_store_error_without_the_password(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        await open_store(url)
    assert "cannot connect" in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_package_works_without_psycopg_and_says_which_extra_to_install() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["psycopg"] = None  # as if the postgres extra were not installed
        from tap_emulator.store import StoreError, open_store

        async def main():
            store = await open_store("sqlite://:memory:")
            await store.close()
            try:
                await open_store("postgresql://127.0.0.1:5432/test")
            except StoreError as error:
                print(error)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=_PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert "tap-emulator[postgres]" in done.stdout


@pytest.mark.postgres
async def test_cancelled_operation_leaves_no_transaction_behind(pg_url: str) -> None:
    import psycopg

    store = await open_store(pg_url)
    try:
        await store.upsert_groups([group(version=1)])
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("SELECT * FROM access_groups FOR UPDATE")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.upsert_groups([group(version=2)]), 0.3)
            blocker.rollback()
        assert await store.upsert_groups([group(version=3)]) == [True]
        # Committed, hence visible to another connection.
        assert raw_rows(pg_url, "SELECT version FROM access_groups") == [(3,)]
    finally:
        await store.close()
