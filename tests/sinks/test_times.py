"""Times in a store: of one fixed-width form whatever their year, and read back without failing.

A store may hold times the normalizer would refuse today (rows written by an older version, or
by hand): year 1 and year 9999 must still round-trip and sort, and a listing must show a stored
value that is not a time at all rather than fail on it.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from sink_helpers import make_session

from callstream import reports
from schemas import SessionRecord
from sinks.backend import Backend, stored_time, time_text
from sinks.stores import backend_for

YEAR_1 = datetime(1, 1, 1, tzinfo=UTC)
YEAR_9999 = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


def _at(session: SessionRecord, moment: datetime) -> SessionRecord:
    return msgspec.structs.replace(session, started_at=moment, ended_at=moment, updated_at=moment)


def test_the_text_of_a_time_has_one_width_whatever_its_year() -> None:
    assert time_text(YEAR_1) == "0001-01-01T00:00:00.000000Z"
    assert time_text(datetime(999, 5, 6, 7, 8, 9, tzinfo=UTC)) == "0999-05-06T07:08:09.000000Z"
    assert time_text(YEAR_9999) == "9999-12-31T23:59:59.999999Z"
    assert time_text(None) is None
    assert stored_time("0001-01-01T00:00:00.000000Z") == YEAR_1
    assert stored_time("1-01-01T00:00:00.000000Z") == "1-01-01T00:00:00.000000Z"  # as it is


ZONES = st.sampled_from([UTC, timezone(timedelta(hours=-11, minutes=-30))])


@given(st.datetimes(max_value=datetime(9999, 12, 31), timezones=ZONES))
def test_the_text_of_a_time_is_its_utc_isoformat_to_the_microsecond(moment: datetime) -> None:
    utc = moment.astimezone(UTC)  # (the last day of 9999 at UTC-11:30 is past it in UTC)
    assert time_text(moment) == utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


async def test_times_of_year_1_and_9999_round_trip_and_sort(store: Backend) -> None:
    """The first and the last datetime: PostgreSQL's driver stores them as -infinity and
    infinity, SQLite as text that must sort below and above every other."""
    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    sessions = [_at(make_session(0), moment) for moment in (YEAR_1, now, YEAR_9999)]
    await store.write([], sessions)

    rows = await store.calls(limit=10)  # newest started_at first, in SQL

    assert [(row["started_at"], row["ended_at"], row["updated_at"]) for row in rows] == [
        (moment, moment, moment) for moment in (YEAR_9999, now, YEAR_1)
    ]
    since_1000 = await store.calls(since=datetime(1000, 1, 1, tzinfo=UTC))
    assert [row["started_at"] for row in since_1000] == [YEAR_9999, now]


async def test_the_listing_shows_every_year_in_the_same_width(store_url: str) -> None:
    store = backend_for(store_url)
    await store.open()
    try:
        await store.write([], [_at(make_session(0), YEAR_1), _at(make_session(0), YEAR_9999)])
    finally:
        await store.close()

    listing = (await reports.calls(store_url)).splitlines()

    assert listing[1].startswith("9999-12-31T23:59:59.999999Z  wavecell")
    assert listing[2].startswith("0001-01-01T00:00:00.000000Z  wavecell")


async def test_a_stored_time_that_is_not_one_is_listed_as_it_is(tmp_path: Path) -> None:
    """SQLite keeps times as text, which anything may have written (PostgreSQL's timestamptz
    holds only times)."""
    path = tmp_path / "store.sqlite3"
    store = backend_for(f"sqlite:///{path}")
    await store.open()
    try:
        await store.write([], [make_session(0, key="odd"), make_session(60, key="fine")])
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(
                "UPDATE call_sessions SET started_at = 'last Tuesday', ended_at = '1-02-03'"
                " WHERE session_id = 'odd'"
            )
        rows = {row["session_id"]: row for row in await store.calls()}
    finally:
        await store.close()

    assert (rows["odd"]["started_at"], rows["odd"]["ended_at"]) == ("last Tuesday", "1-02-03")
    assert isinstance(rows["fine"]["started_at"], datetime)
    listing = await reports.calls(f"sqlite:///{path}")
    assert listing.splitlines()[1].startswith("last Tuesday ")
    assert "2026-11-01T11:59:30.000000Z  wavecell" in listing  # "fine" started 90 s before 12:01
