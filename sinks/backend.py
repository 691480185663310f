"""The store backend contract, and what every backend shares: rows, migrations, queries.

A backend writes canonical events and session records to one database. It never touches Kafka
offsets: `sinks.store` commits a batch only after `Backend.write` has returned, so a backend
guarantees that a write is durable when it returns, and idempotent, so that the batches the
service redoes after a crash change nothing (at-least-once delivery, effectively-once rows).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, overload

import msgspec

from foundation.errors import Unavailable
from schemas import DECIDING_LEGS, CallEvent, SessionRecord, Status

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"(\d{3})_(\w+)\.sql")
_encoder = msgspec.json.Encoder()

GroupBy = Literal["provider", "account", "country"]
Row = dict[str, Any]

EVENT_COLUMNS = (
    "event_id", "provider", "account", "session_key", "session_id", "call_id", "leg",
    "direction", "status", "final", "from_number", "to_number", "from_country", "to_country",
    "initiated_at", "ringing_at", "answered_at", "ended_at", "occurred_at", "received_at",
    "duration_s", "billed_s", "cause_q850", "cause_label", "cause_sip", "record",
)  # fmt: skip
SESSION_COLUMNS = (
    "session_key", "provider", "account", "session_id", "status", "final", "started_at",
    "initiated_at", "ringing_at", "answered_at", "ended_at", "duration_s", "billed_s", "cause_q850",
    "cause_label", "event_count", "updated_at", "close_reason", "record",
)  # fmt: skip
CALL_COLUMNS = (*SESSION_COLUMNS[:-1], "from_number", "to_number")
"""What `Backend.calls` returns for each session: its columns but the record, and its numbers."""
TIME_COLUMNS = frozenset(
    name for name in (*EVENT_COLUMNS, *SESSION_COLUMNS) if name.endswith("_at")
)


class Written(NamedTuple):
    """Rows a write changed: new events, and sessions inserted or moved forward."""

    events: int
    sessions: int


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


class StoreTaken(Unavailable):
    """The store is written by another store process, and its backend allows one writer."""


class Backend(abc.ABC):
    """One store. `open` before anything else and `close` at the end; not safe to share
    between event loops. Methods raise the driver's errors (a write that raises wrote nothing)."""

    transient: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    """The driver's errors that pass by themselves (a database restarting or busy): a write
    that raises one is tried again, never blamed on a record."""

    @abc.abstractmethod
    async def open(self) -> list[int]:
        """Connect and migrate; return the migration versions applied now (see `migrate`)."""

    @abc.abstractmethod
    async def claim(self) -> None:
        """Become a writer of the store, until `close`; raises StoreTaken when the backend
        allows one writer and another process is it."""

    @abc.abstractmethod
    async def migrate(self) -> list[int]:
        """Apply the missing migrations of this backend in order, in one transaction, recording
        each in `schema_migrations`; return their versions (none when the schema is current)."""

    @abc.abstractmethod
    async def write(
        self, events: Sequence[CallEvent], sessions: Sequence[SessionRecord]
    ) -> Written:
        """Write a batch in one transaction, durable on return.

        An event whose event_id is stored is ignored; a session record replaces the stored one
        only if its event_count is higher, so replays and late records never regress a row.
        """

    dialect: ClassVar[Dialect]

    async def calls(
        self,
        *,
        provider: str | None = None,
        status: Status | str | None = None,
        since: datetime | None = None,
        number: str | None = None,
        limit: int = 50,
    ) -> list[Row]:
        """The latest sessions, newest `started_at` first: `CALL_COLUMNS` per row.

        `since` bounds started_at; `number` matches the from or to number of any of its events.
        from_number is the a leg's (the caller), to_number the b leg's (the called party).
        """
        sql, args = calls_query(
            self.dialect, provider=provider, status=status, since=since, number=number, limit=limit
        )
        return [
            self.typed(dict(zip(CALL_COLUMNS, row, strict=True)))
            for row in await self.fetch(sql, args)
        ]

    async def stats(self, *, since: datetime | None = None, by: GroupBy | None = None) -> list[Row]:
        """Outcomes of final sessions (started at `since` or later), one row per group; see
        `summarize` for the row."""
        sql, args = stats_query(self.dialect, since=since, by=by)
        return summarize(await self.fetch(sql, args))

    @abc.abstractmethod
    async def fetch(self, sql: str, args: list[Any]) -> Sequence[Sequence[Any]]:
        """The rows of one query in this backend's dialect."""

    def typed(self, row: Row) -> Row:
        """`row` with the types PostgreSQL returns (aware datetimes, booleans)."""
        return row

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; idempotent."""


def migrations(backend: str) -> list[Migration]:
    """The migrations of `backend`, `sinks/migrations/<backend>/NNN_name.sql`, in order."""
    found: dict[int, Migration] = {}
    for path in (MIGRATIONS / backend).glob("*.sql"):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path}: a migration is named NNN_name.sql")
        version = int(match[1])
        if version in found:
            raise ValueError(f"{path}: version {version} is also {found[version].name}")
        found[version] = Migration(version, match[2], path.read_text())
    return [found[version] for version in sorted(found)]


def latest(sessions: Iterable[SessionRecord]) -> list[SessionRecord]:
    """The newest record of each session in a batch: one upsert statement may touch a row once."""
    newest: dict[str, SessionRecord] = {}
    for session in sessions:
        seen = newest.get(session.session_key)
        if seen is None or session.event_count > seen.event_count:
            newest[session.session_key] = session
    return list(newest.values())


Time = Callable[[datetime | None], Any]
"""How a backend stores a time: the datetime itself (PostgreSQL) or `time_text` (SQLite)."""


@overload
def time_text(moment: datetime) -> str: ...
@overload
def time_text(moment: None) -> None: ...
def time_text(moment: datetime | None) -> str | None:
    """A time as the text a store holds and a listing shows: `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC,
    of one width whatever the year (0001 to 9999, zero-padded), so that text order is time
    order. (strftime's `%Y` does not pad: year 1 was `1-01-01…`, which sorted after 2026.)"""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # msgspec writes a UTC time as RFC 3339 with a `Z`, the fraction only when it is not zero,
    # 0.36 µs against isoformat's 3.7 here (the store writes some 14 times a callback).
    text = _encoder.encode(moment).decode()
    return text[1:-1] if moment.microsecond else text[1:-2] + ".000000Z"


def stored_time(value: str | None) -> datetime | str | None:
    """A time read back from its text; text that is not one (written by hand, or by another
    version) is returned as it is, for a listing to show rather than fail on."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return value


def event_row(event: CallEvent, time: Time) -> tuple[Any, ...]:
    """`event`'s values in `EVENT_COLUMNS` order; the hot path of a write."""
    cause = event.cause
    return (
        event.event_id, event.provider, event.account, event.session_key, event.session_id,
        event.call_id, event.leg, event.direction, event.status.value, event.final,
        event.from_number, event.to_number, event.from_country, event.to_country,
        time(event.initiated_at), time(event.ringing_at), time(event.answered_at),
        time(event.ended_at), time(event.occurred_at), time(event.received_at),
        event.duration_s, event.billed_s,
        None if cause is None else cause.q850,
        None if cause is None else cause.label,
        None if cause is None else cause.sip,
        _encoder.encode(event).decode(),
    )  # fmt: skip


def session_row(session: SessionRecord, time: Time) -> tuple[Any, ...]:
    """`session`'s values in `SESSION_COLUMNS` order. initiated_at and ringing_at are its legs'
    earliest (the record has neither: started_at may be a ringing time when nothing says when
    the call was placed); together they give the post-dial delay."""
    cause = session.cause
    legs = session.legs.values()
    initiated = [leg.initiated_at for leg in legs if leg.initiated_at is not None]
    ringing = [leg.ringing_at for leg in legs if leg.ringing_at is not None]
    return (
        session.session_key, session.provider, session.account, session.session_id,
        session.status.value, session.final, time(session.started_at),
        time(min(initiated, default=None)), time(min(ringing, default=None)),
        time(session.answered_at), time(session.ended_at),
        session.duration_s, session.billed_s,
        None if cause is None else cause.q850,
        None if cause is None else cause.label,
        session.event_count, time(session.updated_at), session.close_reason,
        _encoder.encode(session).decode(),
    )  # fmt: skip


class Dialect(NamedTuple):
    """What the shared queries need to know of a backend's SQL."""

    param: Callable[[int], str]
    """The placeholder of the n-th (1-based) argument."""
    seconds: Callable[[str, str], str]
    """SQL for the seconds from one time expression to another, as a float."""
    time: Time


def calls_query(
    dialect: Dialect,
    *,
    provider: str | None,
    status: str | None,
    since: datetime | None,
    number: str | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """SQL and arguments of `Backend.calls`; the filters use the indexes of migration 001."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return dialect.param(len(args))

    where = ["TRUE"]
    if provider is not None:
        where.append(f"s.provider = {arg(provider)}")
    if status is not None:
        where.append(f"s.status = {arg(str(status))}")
    if since is not None:
        where.append(f"s.started_at >= {arg(dialect.time(since))}")
    if number is not None:
        where.append(
            "s.session_key IN (SELECT session_key FROM call_events"  # noqa: S608 - identifiers are ours; values are bound
            f" WHERE from_number = {arg(number)} UNION"
            f" SELECT session_key FROM call_events WHERE to_number = {arg(number)})"
        )
    columns = ", ".join(f"s.{name}" for name in SESSION_COLUMNS[:-1])
    sql = (
        f"SELECT {columns},"  # noqa: S608 - identifiers are ours; values are bound
        " (SELECT e.from_number FROM call_events e WHERE e.session_key = s.session_key"
        "  ORDER BY e.leg NULLS LAST LIMIT 1) AS from_number,"
        " (SELECT e.to_number FROM call_events e WHERE e.session_key = s.session_key"
        "  ORDER BY e.leg DESC NULLS LAST LIMIT 1) AS to_number"
        f" FROM call_sessions s WHERE {' AND '.join(where)}"
        f" ORDER BY s.started_at DESC NULLS LAST, s.session_key LIMIT {arg(limit)}"
    )
    return sql, args


_DECIDING_FIRST = "CASE {column} {whens} ELSE {last} END".format(
    column="e.leg",
    whens=" ".join(f"WHEN '{leg}' THEN {rank}" for rank, leg in enumerate(DECIDING_LEGS[:-1])),
    last=len(DECIDING_LEGS) - 1,
)
"""An ORDER BY key of call_events rows: the deciding leg's first (DECIDING_LEGS; the single leg
of a provider without legs has a null `leg`)."""

_GROUPS = {
    None: "NULL",
    "provider": "s.provider",
    "account": "s.account",
    # The called party's country: the deciding leg's (sessions do not carry countries).
    "country": "(SELECT e.to_country FROM call_events e WHERE e.session_key = s.session_key"  # noqa: S608 - identifiers are ours
    f" AND e.to_country IS NOT NULL ORDER BY {_DECIDING_FIRST} LIMIT 1)",
}


def stats_query(
    dialect: Dialect, *, since: datetime | None, by: GroupBy | None
) -> tuple[str, list[Any]]:
    """SQL and arguments of the per group and status sums that `summarize` turns into stats."""
    if by not in _GROUPS:
        raise ValueError(f"stats by {by!r}: expected one of provider, account, country")
    args: list[Any] = []
    where = "s.final"
    if since is not None:
        args.append(dialect.time(since))
        where += f" AND s.started_at >= {dialect.param(1)}"
    pdd = dialect.seconds("s.initiated_at", "coalesce(s.ringing_at, s.answered_at)")
    sql = (
        "SELECT grp, status, count(*), sum(duration_s), count(duration_s),"  # noqa: S608 - identifiers are ours; values are bound
        " sum(pdd), count(pdd)"
        f" FROM (SELECT {_GROUPS[by]} AS grp, s.status, s.duration_s, {pdd} AS pdd"
        f" FROM call_sessions s WHERE {where}) AS t GROUP BY grp, status"
    )
    return sql, args


def summarize(rows: Iterable[Sequence[Any]]) -> list[Row]:
    """Rows of `stats_query` as one dict per group, most attempts first:

    `group` (None when not grouped), `attempts` (final sessions), `statuses` ({status: count}),
    `asr` (completed ÷ attempts), `acd_s` (mean duration_s of completed sessions that report
    one), `pdd_s` (mean seconds from initiated_at to the first ringing, else to the answer, where
    both are known). A mean over nothing is None.
    """
    groups: dict[Any, dict[str, Any]] = {}
    for group, status, count, duration_sum, duration_n, pdd_sum, pdd_n in rows:
        totals = groups.setdefault(
            group, {"statuses": {}, "acd": (0, 0), "pdd_sum": 0.0, "pdd_n": 0}
        )
        totals["statuses"][status] = count
        if status == Status.COMPLETED:
            totals["acd"] = (duration_sum or 0, duration_n)
        totals["pdd_sum"] += pdd_sum or 0.0
        totals["pdd_n"] += pdd_n
    result = []
    for group, totals in groups.items():
        attempts = sum(totals["statuses"].values())
        completed = totals["statuses"].get(Status.COMPLETED, 0)
        result.append(
            {
                "group": group,
                "attempts": attempts,
                "statuses": dict(sorted(totals["statuses"].items())),
                "asr": round(completed / attempts, 4),
                "acd_s": _mean(*totals["acd"]),
                "pdd_s": _mean(totals["pdd_sum"], totals["pdd_n"]),
            }
        )
    return sorted(result, key=lambda row: (-row["attempts"], str(row["group"])))


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 3) if count else None
