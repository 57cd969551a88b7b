"""Store URLs: choosing the engine from `--store URL`, and hiding passwords before a URL reaches a log.

Accepted forms (the SQLite ones follow the SQLAlchemy convention: the path is what follows `sqlite:///`,
so an absolute path gives four slashes):
    sqlite:///relative/path.sqlite3     sqlite:////absolute/path.sqlite3
    sqlite://:memory:  (or sqlite:///:memory:)   a private in-memory store, for tests
    postgresql://user:password@host:port/database?options   (postgres:// too; any libpq URL parameter)
"""

from __future__ import annotations

import re

from .records import ManagementStore, StoreError

__all__ = ["open_store", "redact_url", "sqlite_path"]

_SUPPORTED = "sqlite:///PATH, sqlite://:memory: or postgresql://..."

# password=... as a URL query parameter or in a libpq key=value string (quoted or not).
PASSWORD_PARAMETER = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s#]+)")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to log or print."""
    scheme, separator, rest = url.partition("://")
    if separator:
        # user:password@host — the userinfo ends at the last "@" before the query string.
        before_query, question, query = rest.partition("?")
        userinfo, at, host_and_path = before_query.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            before_query = f"{user}:***@{host_and_path}"
        url = f"{scheme}{separator}{before_query}{question}{query}"
    return PASSWORD_PARAMETER.sub(r"\g<1>***", url)


def sqlite_path(url: str) -> str:
    """The file path (or ":memory:") named by a sqlite:// URL; StoreError if the URL is not one."""
    rest = url[len("sqlite://") :] if url.lower().startswith("sqlite://") else None
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if rest is None or not rest.startswith("/") or len(rest) == 1:
        raise StoreError(
            f"bad SQLite store URL {redact_url(url)!r}: use sqlite:///PATH (sqlite:////PATH when absolute)"
        )
    if "?" in rest or "#" in rest:
        raise StoreError(f"bad SQLite store URL {redact_url(url)!r}: query parameters are not supported")
    return rest[1:]


async def open_store(url: str) -> ManagementStore:
    """Open the store named by `url` and bring its schema up to date (pending migrations applied).

    Raises StoreError for an unsupported or malformed URL, an unreachable store, or a missing driver.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return await SqliteStore.open(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return await PostgresStore.open(url)
    raise StoreError(f"unsupported store URL {redact_url(url)!r}: use {_SUPPORTED}")
