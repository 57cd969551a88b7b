"""Store URLs: which engine and path a URL names, which it refuses, and how it is shown in logs."""

from __future__ import annotations

import pytest

from tap_emulator.store import StoreError, open_store, redact_url
from tap_emulator.store.urls import sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///store.sqlite3", "store.sqlite3"),
        ("sqlite:///data/store.sqlite3", "data/store.sqlite3"),
        ("sqlite:////var/lib/tap/store.sqlite3", "/var/lib/tap/store.sqlite3"),
        ("SQLite:///store.sqlite3", "store.sqlite3"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_url_names_a_path(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/store.sqlite3", "sqlite:///store.sqlite3?mode=ro"]
)
def test_malformed_sqlite_url_is_refused(url: str) -> None:
    with pytest.raises(StoreError, match="bad SQLite store URL"):
        sqlite_path(url)


@pytest.mark.parametrize(
    "url", ["", "store.sqlite3", "mysql://root:pw@127.0.0.1/db", "file:///tmp/store.sqlite3", "sqlite:///"]
)
async def test_open_store_refuses_an_unusable_url_clearly(url: str) -> None:
    with pytest.raises(StoreError, match="URL"):
        await open_store(url)


async def test_refusal_of_an_unknown_scheme_hides_its_password() -> None:
    with pytest.raises(StoreError) as caught:
        await open_store("mysql://root:hunter2@127.0.0.1/db")
    assert "hunter2" not in str(caught.value)
    assert "mysql://root:***@127.0.0.1/db" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://tap:hunter2@db.example:5432/mgmt", "postgresql://tap:***@db.example:5432/mgmt"),
        ("postgres://tap:p%40ss@db/mgmt?sslmode=require", "postgres://tap:***@db/mgmt?sslmode=require"),
        ("postgresql://tap:a@b@db/mgmt", "postgresql://tap:***@db/mgmt"),
        ("postgresql://tap@db/mgmt", "postgresql://tap@db/mgmt"),
        (
            "postgresql://db/mgmt?user=tap&password=hunter2&sslmode=require",
            "postgresql://db/mgmt?user=tap&password=***&sslmode=require",
        ),
        ("postgresql://db/mgmt?application_name=a@b", "postgresql://db/mgmt?application_name=a@b"),
        ("host=db user=tap password=hunter2 dbname=mgmt", "host=db user=tap password=*** dbname=mgmt"),
        ("host=db password='hun ter2' dbname=mgmt", "host=db password=*** dbname=mgmt"),
        ("sqlite:////var/lib/tap/store.sqlite3", "sqlite:////var/lib/tap/store.sqlite3"),
    ],
)
def test_redact_url_hides_passwords_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
