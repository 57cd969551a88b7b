"""The management service's store operations: transactions over either engine, and the SQL they run.

The cloud core (tap_emulator.cloud) needs several statements in one transaction with decisions between
them (a capacity check, a parent walk), so each engine offers `atomic(work)`: `work` gets a Transaction
whose `rows` runs one shared SQL text (schema.Dialect placeholders) inside the engine's write transaction
(SQLite BEGIN IMMEDIATE on the store's thread; PostgreSQL with its conflict retries, so `work` must be
safe to run again). A refused request raises before commit, so nothing is half-written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from .schema import Dialect

__all__ = ["CloudStore", "Transaction"]

_T = TypeVar("_T")


class Transaction(Protocol):
    """One open write transaction of an engine."""

    async def rows(self, text: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Run one shared SQL text; its rows (empty for a statement without RETURNING)."""
        ...


@runtime_checkable
class CloudStore(Protocol):
    """What the cloud core needs of an engine, on top of the ManagementStore the sync task uses."""

    dialect: Dialect

    async def atomic(
        self, work: Callable[[Transaction], Awaitable[_T]], *, retry_unique_violation: bool = False
    ) -> _T:
        """Run `work` in one write transaction and commit it; roll back if it raises.

        `retry_unique_violation`: on PostgreSQL a unique violation raised by a concurrent transaction
        that committed first is retried (the new attempt's own check then sees that row and refuses
        cleanly); SQLite serialises writers, so it never needs this.
        """
        ...
