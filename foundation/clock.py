"""Clocks: what "now" is, and how to wait for a moment, for code whose schedule is in time.

Code that decides by time (the vpbx poller's re-read schedule, the mobile_agent deadline, the
simulated providers) takes a Clock instead of calling datetime.now() and asyncio.sleep():
`SystemClock` in service, `ManualClock` in tests and simulations, where hours pass at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, UTC."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once `now()` is `when` or later (at once if it already is)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""
        ...


class SystemClock:
    """The wall clock, waited on with the event loop."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        await asyncio.sleep(max(0.0, (when - self.now()).total_seconds()))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves only when told to (`advance`): tests and simulations run hours of
    schedule in moments. `sleeping` and `next_wake` say who waits and until when, so that a
    driver can move the clock from one wake-up to the next once everyone has done what was due."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._order), future))
        await future

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + timedelta(seconds=seconds))

    def _waiting(self) -> list[tuple[datetime, int, asyncio.Future[None]]]:
        self._sleepers = [sleeper for sleeper in self._sleepers if not sleeper[2].done()]
        heapq.heapify(self._sleepers)
        return self._sleepers

    @property
    def sleeping(self) -> int:
        """How many tasks wait on this clock."""
        return len(self._waiting())

    def next_wake(self) -> datetime | None:
        """When the first of them wakes (None: nobody waits)."""
        waiting = self._waiting()
        return waiting[0][0] if waiting else None

    def advance(self, to: datetime | timedelta) -> None:
        """Move to `to` (a moment, or this much later; never back) and wake whoever's time
        has come; they run once the caller next awaits."""
        self._now = max(self._now, self._now + to if isinstance(to, timedelta) else to)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
