"""The query helpers behind `callstream calls` and `callstream stats`, on every backend."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from statistics import mean

import msgspec
import pytest
from sink_helpers import events_of, sessions_of

from callstream import samples
from schemas import CallEvent, SessionRecord, Status
from sinks.backend import CALL_COLUMNS, Backend


@pytest.fixture
def events() -> list[CallEvent]:
    return events_of(samples.payloads("wavecell", 200))


def _latest(events: list[CallEvent]) -> list[SessionRecord]:
    return list({s.session_key: s for s in sessions_of(events)}.values())


async def _stored(store: Backend, events: list[CallEvent]) -> list[SessionRecord]:
    sessions = _latest(events)
    ringing = msgspec.structs.replace(
        sessions[0], session_key="wavecell:x:open", session_id="open", status=Status.RINGING,
        final=False,
    )  # fmt: skip
    await store.write(events, [*sessions, ringing])
    return sessions


async def test_calls_lists_the_newest_sessions_with_their_numbers(
    store: Backend, events: list[CallEvent]
) -> None:
    sessions = await _stored(store, events)
    rows = await store.calls(limit=10)

    assert len(rows) == 10
    assert all(tuple(row) == CALL_COLUMNS for row in rows)
    starts = [row["started_at"] for row in rows]
    assert starts == sorted(starts, reverse=True)
    newest = min(sessions, key=lambda s: (-s.started_at.timestamp(), s.session_key))
    b_leg = next(e for e in events if e.session_key == newest.session_key and e.leg == "b")
    a_leg = next(e for e in events if e.session_key == newest.session_key and e.leg == "a")
    assert rows[0]["started_at"] == newest.started_at
    assert (rows[0]["from_number"], rows[0]["to_number"]) == (a_leg.from_number, b_leg.to_number)
    assert rows[0]["final"] is True


async def test_calls_filters(store: Backend, events: list[CallEvent]) -> None:
    sessions = await _stored(store, events)
    busy = {s.session_key for s in sessions if s.status == Status.BUSY}
    rows = await store.calls(provider="wavecell", status=Status.BUSY, limit=1_000)
    assert {row["session_key"] for row in rows} == busy

    since = sorted(s.started_at for s in sessions)[-20]
    expected = {s.session_key for s in sessions if s.started_at >= since}
    if sessions[0].started_at >= since:  # the open session is a copy of the first
        expected.add("wavecell:x:open")
    rows = await store.calls(since=since, limit=1_000)
    assert {row["session_key"] for row in rows} == expected

    callee = events[1].to_number
    assert callee is not None
    rows = await store.calls(number=callee)
    assert [row["session_key"] for row in rows] == [events[1].session_key]
    assert await store.calls(provider="vpbx") == []


def _expected(sessions: list[SessionRecord], group: dict[str, str | None]) -> list[dict]:
    by_group: dict[str | None, list[SessionRecord]] = defaultdict(list)
    for session in sessions:
        by_group[group[session.session_key]].append(session)
    result = []
    for name, members in by_group.items():
        statuses = Counter(s.status.value for s in members)
        durations = [
            s.duration_s
            for s in members
            if s.status == Status.COMPLETED and s.duration_s is not None
        ]
        delays = []
        for s in members:
            rings = [leg.ringing_at for leg in s.legs.values() if leg.ringing_at is not None]
            placed = [leg.initiated_at for leg in s.legs.values() if leg.initiated_at is not None]
            reached = min(rings) if rings else s.answered_at
            if reached is not None and placed:  # a call with no initiation time has no PDD
                delays.append((reached - min(placed)).total_seconds())
        result.append(
            {
                "group": name,
                "attempts": len(members),
                "statuses": dict(sorted(statuses.items())),
                "asr": round(statuses["completed"] / len(members), 4),
                "acd_s": round(mean(durations), 3) if durations else None,
                "pdd_s": round(mean(delays), 3) if delays else None,
            }
        )
    return sorted(result, key=lambda row: (-row["attempts"], str(row["group"])))


@pytest.mark.parametrize("by", [None, "provider", "account", "country"])
async def test_stats_of_final_sessions(
    store: Backend, events: list[CallEvent], by: str | None
) -> None:
    sessions = await _stored(store, events)
    country = {e.session_key: e.to_country for e in events if e.leg == "b"}
    group = {
        s.session_key: {
            None: None, "provider": s.provider, "account": s.account,
            "country": country.get(s.session_key),
        }[by]
        for s in sessions
    }  # fmt: skip

    stats = await store.stats(by=by)  # type: ignore[arg-type]

    assert _round(stats) == _round(_expected(sessions, group))
    assert sum(row["attempts"] for row in stats) == len(sessions)  # the open one is not final


async def test_stats_since(store: Backend, events: list[CallEvent]) -> None:
    sessions = await _stored(store, events)
    since = datetime(2026, 11, 1, 20, 0, tzinfo=UTC)
    [row] = await store.stats(since=since)
    assert row["attempts"] == sum(1 for s in sessions if s.started_at and s.started_at >= since)


def _round(rows: list[dict]) -> list[dict]:
    """SQLite's julianday() keeps milliseconds: compare delays to 0.01 s."""
    return [
        row | {"pdd_s": None if row["pdd_s"] is None else round(row["pdd_s"], 2)} for row in rows
    ]


async def test_a_call_with_no_initiation_time_has_no_post_dial_delay(store: Backend) -> None:
    # voice_messaging reports when a call rang, never when it was placed: its started_at is the
    # ringing time, and "ringing - started" would be a false 0 s.
    events = events_of(samples.payloads("voice_messaging", 50), "voice_messaging")
    assert all(e.initiated_at is None for e in events)
    await store.write(events, _latest(events))
    [row] = await store.stats(by="provider")
    assert (row["group"], row["pdd_s"]) == ("voice_messaging", None)
