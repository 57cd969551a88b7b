"""Fixtures running the store tests against both engines: SQLite in tmp_path, PostgreSQL in a private schema.

PostgreSQL comes from TAP_EMULATOR_TEST_PG (default postgresql://127.0.0.1:5432/test). Without a server
the PostgreSQL cases are skipped with the reason shown, except under CI=true, where they fail.
Every PostgreSQL test gets its own schema (search_path set through the URL) and drops it afterwards.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from typing import Any
from urllib.parse import quote

import pytest

from tap_emulator.store import ManagementStore, open_store
from tap_emulator.store.urls import sqlite_path


def with_parameters(url: str, **parameters: str) -> str:
    """`url` with extra libpq URL parameters appended."""
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in parameters.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def pg_url(pg_server: str, pg_schema: str) -> str:
    """A URL whose tables live in a fresh schema of their own (``pg_server`` and ``pg_schema`` come from
    tests/conftest.py)."""
    return with_parameters(pg_server, options=f"-c search_path={pg_schema}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty store URL, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ManagementStore]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def raw_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a separate, plain driver connection (what another tool would see)."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url), isolation_level=None)) as connection:
            return connection.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql)
        return cursor.fetchall() if cursor.description else []
