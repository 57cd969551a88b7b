"""A clock for the value-source tests: time moves only when the test says, so nothing sleeps."""

from __future__ import annotations

import asyncio

from tap_emulator.sources import SourceRunner

ORIGIN = 1000.0


class ManualClock:
    """Time moves only when the test says; ``sleep_until`` parks on a future the test resolves."""

    def __init__(self, now: float = ORIGIN) -> None:
        self.time = now
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.time:
            return
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((deadline, future))
        await future

    @property
    def next_wake(self) -> float | None:
        return min((d for d, f in self.sleepers if not f.done()), default=None)

    async def settle(self, runner: SourceRunner) -> None:
        """Let the runner work until it sleeps on this clock (or has nothing left)."""
        while runner.running and not self.sleepers:
            await asyncio.sleep(0)

    async def advance_to(self, runner: SourceRunner, when: float) -> None:
        """Set the time and let the runner work until it sleeps again (or has nothing left)."""
        await self.settle(runner)
        self.time = when
        for deadline, future in self.sleepers:
            if deadline <= when and not future.done():
                future.set_result(None)
        self.sleepers = [(d, f) for d, f in self.sleepers if not f.done()]
        await self.settle(runner)
