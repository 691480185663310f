"""The conformance suite every store backend passes, against the real SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from sink_helpers import Query, events_of, sessions_of

from callstream import samples
from foundation.settings import SettingsError
from schemas import CallEvent, SessionRecord, Status
from sinks.backend import Backend, StoreTaken, Written
from sinks.sqlite import CACHE_MIB, CHECKPOINT_PAGES, SqliteBackend
from sinks.stores import backend_for

_event = msgspec.json.Decoder(CallEvent)
_session = msgspec.json.Decoder(SessionRecord)


async def test_events_and_sessions_round_trip_into_the_canonical_structs(
    store: Backend, query: Query
) -> None:
    events = events_of(samples.payloads("wavecell", 50))
    sessions = sessions_of(events)
    latest = {session.session_key: session for session in sessions}

    assert await store.write(events, sessions) == Written(len(events), len(latest))

    stored = [_event.decode(record) for (record,) in await query("SELECT record FROM call_events")]
    assert sorted(stored, key=lambda e: e.event_id) == sorted(events, key=lambda e: e.event_id)
    rows = await query("SELECT record FROM call_sessions")
    assert {s.session_key: s for s in (_session.decode(r) for (r,) in rows)} == latest


async def test_duplicate_events_are_ignored(store: Backend, query: Query) -> None:
    events = events_of(samples.payloads("wavecell", 20))

    assert await store.write(events + events[:5], []) == Written(len(events), 0)
    assert await store.write(events[3:8], []) == Written(0, 0)
    assert await query("SELECT count(*), count(DISTINCT event_id) FROM call_events") == [
        (len(events), len(events))
    ]


async def test_an_older_or_equal_session_record_never_regresses_a_row(
    store: Backend, query: Query
) -> None:
    first, second = sessions_of(events_of(samples.payloads("wavecell", 1)))
    assert (first.event_count, second.event_count) == (1, 2)
    same_count = msgspec.structs.replace(second, status=Status.FAILED, close_reason="test")

    assert await store.write([], [second]) == Written(0, 1)
    assert await store.write([], [first]) == Written(0, 0)  # late
    assert await store.write([], [same_count]) == Written(0, 0)  # not newer
    assert await store.write([], [second, first]) == Written(0, 0)  # a replay, out of order
    rows = await query("SELECT event_count, status, close_reason, record FROM call_sessions")
    assert [(count, status, reason) for count, status, reason, _ in rows] == [
        (2, second.status.value, None)
    ]
    assert _session.decode(rows[0][3]) == second


async def test_a_newer_session_record_moves_the_row_forward(store: Backend, query: Query) -> None:
    first, second = sessions_of(events_of(samples.payloads("wavecell", 1)))

    assert await store.write([], [first]) == Written(0, 1)
    assert await store.write([], [second]) == Written(0, 1)
    assert await query("SELECT event_count FROM call_sessions") == [(2,)]


async def test_replaying_a_whole_batch_changes_nothing(store: Backend, query: Query) -> None:
    events = events_of(samples.payloads("wavecell", 100))
    sessions = sessions_of(events)
    await store.write(events, sessions)
    tables = (
        "SELECT * FROM call_events ORDER BY event_id",
        "SELECT * FROM call_sessions ORDER BY session_key",
    )
    before = [await query(sql) for sql in tables]

    assert await store.write(events, sessions) == Written(0, 0)
    assert [await query(sql) for sql in tables] == before


async def test_migrations_are_idempotent(store: Backend, store_url: str, query: Query) -> None:
    assert await store.migrate() == []
    again = backend_for(store_url)
    assert await again.open() == []
    await again.close()
    assert await query("SELECT version, name FROM schema_migrations") == [(1, "initial")]


async def test_a_fresh_store_applies_every_migration(store_url: str) -> None:
    fresh = backend_for(store_url)
    try:
        assert await fresh.open() == [1]
    finally:
        await fresh.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite://x", "sqlite:///", "mysql://db/x", "postgresql://", "callstream.sqlite3", ""],
)
def test_a_bad_url_names_the_setting(url: str) -> None:
    with pytest.raises(SettingsError, match="CALLSTREAM_STORE__URL"):
        backend_for(url)


def test_sqlite_urls_are_relative_or_absolute() -> None:
    assert backend_for("sqlite:///data/c.sqlite3").path == Path("data/c.sqlite3")  # type: ignore[attr-defined]
    assert backend_for("sqlite:////tmp/c.sqlite3").path == Path("/tmp/c.sqlite3")  # type: ignore[attr-defined]  # noqa: S108


async def test_the_sqlite_writer_caches_its_indexes_and_checkpoints_seldom(tmp_path: Path) -> None:
    store = SqliteBackend(tmp_path / "callstream.sqlite3")
    await store.open()
    try:
        assert await store.fetch("PRAGMA cache_size", []) == [(-CACHE_MIB * 1024,)]
        assert await store.fetch("PRAGMA wal_autocheckpoint", []) == [(CHECKPOINT_PAGES,)]
    finally:
        await store.close()


async def test_a_sqlite_file_has_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "callstream.sqlite3"
    first, second = SqliteBackend(path), SqliteBackend(path)
    await first.claim()
    try:
        with pytest.raises(StoreTaken, match="is written by another store"):
            await second.claim()
    finally:
        await first.close()
    await second.claim()  # the first's close released it
    await second.close()
