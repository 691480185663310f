"""When to read which window of call start times: a first read, then re-reads on a schedule.

A window [start, end) is read once it is over (its first read) and again at each offset of the
schedule after its end. The API lists a call only once it has ended, so a window's last read,
`max_call_s` after its end, sees every call that started in it and lasted up to that long; the
re-reads before it publish the others soon after they end.

Each read of the schedule (the first, then one per offset) keeps a frontier: every window
ending by it has had that read. At a moment `now`, `plan` finds for each read the windows that
are due (those whose end plus the read's offset has passed) and reads the ranges that touch in
one go: at steady state, a window's first read and the previous window's first re-read are one
request. A read satisfies every read of the schedule it is late for (a range first read long
after it closed needs none of the re-reads whose time had passed), so no window is read more
than len(offsets) + 1 times. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

ZERO = timedelta(0)
MAX_READ_WINDOWS = 60
"""The longest range one read covers (catching up after a stop), in windows: a read that fails
is done again whole, so bounding it bounds what is fetched twice."""


@dataclass(frozen=True, slots=True)
class Read:
    """One range to read, and each frontier once it is read."""

    start: datetime
    end: datetime
    frontiers: tuple[datetime, ...]
    first: int
    """Windows of the range read for the first time."""
    again: int
    """Windows of the range read again (re-reads)."""


def offsets_of(rereads_s: Sequence[float], max_call_s: float) -> tuple[timedelta, ...]:
    """The re-read offsets: `rereads_s` below `max_call_s`, then `max_call_s` (none if 0)."""
    if max_call_s <= 0:
        return ()
    early = sorted({s for s in rereads_s if 0 < s < max_call_s})
    return tuple(timedelta(seconds=s) for s in (*early, max_call_s))


class Schedule:
    """One account's windows: how far each read of the schedule has come, and what is due."""

    def __init__(
        self,
        window: timedelta,
        offsets: Sequence[timedelta],
        until: datetime,
        rereads: Mapping[timedelta, datetime] | None = None,
    ) -> None:
        """Windows first read up to `until`, each re-read (by offset) up to `rereads`; a
        re-read not in `rereads` (a checkpoint from before it was scheduled) is taken to be on
        time: done for the windows whose time for it has passed, pending for the others."""
        if window <= ZERO:
            raise ValueError(f"a window lasts more than 0 s, not {window}")
        rereads = rereads or {}
        self.window = window
        self.offsets = (ZERO, *offsets)
        self.frontiers = [until] + [min(until, rereads.get(o, until - o)) for o in offsets]

    @classmethod
    def starting(cls, window: timedelta, offsets: Sequence[timedelta], at: datetime) -> Schedule:
        """Nothing read yet: windows from `at` on."""
        return cls(window, offsets, at, dict.fromkeys(offsets, at))

    @property
    def until(self) -> datetime:
        """Every window ending by then has had its first read."""
        return self.frontiers[0]

    @property
    def rereads(self) -> dict[timedelta, datetime]:
        """Offset → every window ending by then has had that re-read."""
        return dict(zip(self.offsets[1:], self.frontiers[1:], strict=True))

    def _due_until(self, read: int, now: datetime) -> datetime:
        """The end of the last window due for `read` at `now` (its frontier if none is)."""
        frontier = self.frontiers[read]
        windows = (now - self.offsets[read] - frontier) // self.window
        return frontier + max(0, windows) * self.window

    def plan(self, now: datetime) -> Read | None:
        """What to read now: the due ranges that touch the first read's (or else the oldest
        ones), at most MAX_READ_WINDOWS long; None when nothing is due."""
        first_due = self._due_until(0, now)
        due = [
            self._due_until(read, now) if read == 0 else min(self._due_until(read, now), first_due)
            for read in range(len(self.frontiers))
        ]  # a window is re-read only once it has had its first read
        ranges = sorted(
            (self.frontiers[read], due[read], read)
            for read in range(len(due))
            if due[read] > self.frontiers[read]
        )
        if not ranges:
            return None
        groups: list[tuple[datetime, datetime, list[int]]] = []
        for start, end, read in ranges:
            if groups and start <= groups[-1][1]:
                groups[-1] = (groups[-1][0], max(groups[-1][1], end), [*groups[-1][2], read])
            else:
                groups.append((start, end, [read]))
        start, end, reads = min(groups, key=lambda group: min(group[2]))
        end = min(end, start + MAX_READ_WINDOWS * self.window)
        frontiers = list(self.frontiers)
        for read in reads:
            if frontiers[read] < end:
                frontiers[read] = min(due[read], end)
        first = self._windows(frontiers[0] - self.frontiers[0])
        return Read(
            start,
            end,
            tuple(frontiers),
            first=first,
            again=max(0, self._windows(end - start) - first),
        )

    def done(self, read: Read) -> None:
        """`read` is published: move the frontiers on."""
        self.frontiers = list(read.frontiers)

    def next_due(self, now: datetime) -> datetime:
        """When something is next due, `plan(now)` being None."""
        first = self.frontiers[0] + self.window
        moments = [
            frontier + self.window + offset
            for frontier, offset in zip(self.frontiers, self.offsets, strict=True)
        ]  # a re-read waiting for a first read is due with it
        return min(moment if moment > now else first for moment in moments)

    def _windows(self, span: timedelta) -> int:
        return round(span / self.window)
