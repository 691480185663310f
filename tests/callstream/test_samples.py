"""The simulator's calls look like real traffic: `callstream stats` over them shows a believable
ASR, ACD and post-dial delay for each provider, and causes that match outcomes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callstream import samples
from normalize import normalize
from normalize.sessions import fold
from schemas import CallEvent, SessionRecord, Status
from sinks.sqlite import SqliteBackend

NOW = datetime(2026, 11, 2, tzinfo=UTC)
CALLS = 400


def _events() -> list[CallEvent]:
    events = []
    for provider in ("wavecell", "voice_messaging"):
        for body in samples.payloads(provider, CALLS):
            events += normalize(provider, body, received_at=NOW)
    rng = random.Random("vpbx")
    start = datetime(2026, 11, 1, 8, tzinfo=UTC)
    records = [samples.vpbx_call(rng, start + timedelta(seconds=i), 1001)[0] for i in range(CALLS)]
    page = samples.vpbx_page(records, 1, CALLS, "desc")
    events += normalize("vpbx", page, received_at=NOW, context={"client_id": "1001"})
    rng = random.Random("mobile_agent")
    for i in range(CALLS):
        body = samples.mobile_agent_answer(samples.mobile_agent_call(rng), 3, 1_790_000_000_000)
        events += normalize("mobile_agent", body, received_at=NOW, context={"callSerialNo": str(i)})
    return events


def _sessions(events: list[CallEvent]) -> list[SessionRecord]:
    live: dict[str, SessionRecord] = {}
    for event in events:
        folded = fold(live.get(event.session_key), event)
        if folded is not None:
            live[event.session_key] = folded
    return list(live.values())


@pytest.fixture(scope="module")
def events() -> list[CallEvent]:
    return _events()


async def test_stats_are_believable_for_every_provider(
    events: list[CallEvent], tmp_path: Path
) -> None:
    store = SqliteBackend(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.write(events, _sessions(events))
        rows = {row["group"]: row for row in await store.stats(by="provider")}
    finally:
        await store.close()
    for provider, row in rows.items():
        assert 0.45 <= row["asr"] <= 0.75, (provider, row)
    for provider in ("wavecell", "vpbx"):
        assert 60 <= rows[provider]["acd_s"] <= 240, rows[provider]
        assert 4 <= rows[provider]["pdd_s"] <= 15, rows[provider]
    assert 20 <= rows["voice_messaging"]["acd_s"] <= 90
    # queryCallState says when a call started and ended, never when it was answered
    assert rows["mobile_agent"]["acd_s"] is None


def test_delays_and_durations_vary_from_call_to_call(events: list[CallEvent]) -> None:
    for provider in ("wavecell", "vpbx"):
        answered = [
            e for e in events if e.provider == provider and e.answered_at and e.initiated_at
        ]
        delays = {(e.answered_at - e.initiated_at).total_seconds() for e in answered}
        durations = {e.duration_s for e in answered}
        assert len(delays) >= 8, (provider, delays)
        assert len(durations) >= 50, provider


def test_vpbx_causes_match_outcomes(events: list[CallEvent]) -> None:
    causes: dict[Status, set[str]] = {}
    for event in events:
        if event.provider == "vpbx" and event.cause is not None:
            causes.setdefault(event.status, set()).add(event.cause.label)
    assert causes[Status.BUSY] == {"USER_BUSY"}
    assert causes[Status.NO_ANSWER] == {"NO_ANSWER"}
    assert causes[Status.REJECTED] == {"CALL_REJECTED"}
    assert causes[Status.COMPLETED] == {"NORMAL_CLEARING"}
    assert "NORMAL_CLEARING" not in causes[Status.FAILED]
