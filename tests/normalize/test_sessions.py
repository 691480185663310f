"""Folding events into sessions by the contract's rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from normalize import normalize
from normalize.sessions import close, fold
from schemas import CallEvent, SessionRecord, Status

GOLDEN = Path(__file__).parent.parent / "golden"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _events(provider: str, case: str, context: dict[str, str] | None = None) -> list[CallEvent]:
    return normalize(
        provider, (GOLDEN / provider / f"{case}.json").read_bytes(), received_at=T0, context=context
    )


def _fold_all(events: list[CallEvent]) -> SessionRecord | None:
    session = None
    for event in events:
        session = fold(session, event) or session
    return session


def _poll(state: int, at: datetime, reason: int | None = None) -> CallEvent:
    result = {"state": state} | ({"reasonCode": reason} if reason is not None else {})
    body = msgspec.json.encode({"retCode": "0", "result": result})
    (event,) = normalize("mobile_agent", body, received_at=at, context={"callSerialNo": "42"})
    return event


def test_the_b_leg_decides_the_status_of_a_two_leg_session() -> None:
    session = _fold_all(_events("wavecell", "table_completed_no_answer"))
    assert session is not None
    assert (session.status, session.final, session.event_count) == (Status.NO_ANSWER, True, 2)
    assert set(session.legs) == {"a", "b"}
    assert session.legs["a"].status is Status.COMPLETED


def test_a_session_without_b_leg_takes_the_a_leg_status() -> None:
    session = _fold_all(_events("wavecell", "table_completed_null_leg_missing"))
    assert session is not None
    assert (session.status, session.final, list(session.legs)) == (Status.COMPLETED, True, ["a"])


def test_legs_in_any_order_give_the_same_session() -> None:
    events = _events("wavecell", "table_completed_busy")
    assert _fold_all(events) == _fold_all(list(reversed(events)))


def test_a_duplicate_changes_nothing() -> None:
    events = _events("wavecell", "table_completed_busy")
    session = _fold_all(events)
    assert fold(session, events[1]) is None


def test_states_of_a_polled_call_progress_and_a_late_older_state_does_not_regress() -> None:
    ringing, talking, ended = (
        _poll(1, T0),
        _poll(2, T0 + timedelta(seconds=5)),
        _poll(3, T0 + timedelta(seconds=9), 0),
    )
    session = _fold_all([ringing, talking, ended])
    assert session is not None
    assert (session.status, session.final, session.event_count) == (Status.COMPLETED, True, 3)
    assert fold(session, talking) is None  # late non-final after final
    assert fold(session, _poll(2, T0 + timedelta(seconds=60))) is None  # even if received later
    out_of_order = _fold_all([talking, ringing])
    assert out_of_order is not None
    assert (out_of_order.status, out_of_order.event_count) == (Status.IN_PROGRESS, 1)


def test_a_later_final_report_replaces_an_earlier_one_but_not_the_reverse() -> None:
    unknown, completed = _poll(3, T0), _poll(3, T0 + timedelta(seconds=30), 0)
    assert _fold_all([unknown, completed]).status is Status.COMPLETED  # type: ignore[union-attr]
    assert _fold_all([completed, unknown]).status is Status.COMPLETED  # type: ignore[union-attr]


def test_a_final_session_is_not_reopened_by_a_late_non_final_leg() -> None:
    (leg_a,) = _events("wavecell", "table_completed_null_leg_missing")
    session = fold(None, leg_a)
    ringing_b = msgspec.structs.replace(
        leg_a, leg="b", call_id="b-1", event_id="b-ringing", status=Status.RINGING, final=False
    )
    assert session is not None
    assert session.final
    assert fold(session, ringing_b) is None
    busy_b = msgspec.structs.replace(ringing_b, event_id="b-busy", status=Status.BUSY, final=True)
    assert fold(session, busy_b).status is Status.BUSY  # type: ignore[union-attr]


def test_session_times_come_from_all_legs() -> None:
    session = _fold_all(_events("wavecell", "doc_sample"))
    assert session is not None
    assert session.started_at == datetime(2020, 6, 17, 4, 8, 37, tzinfo=UTC)
    assert session.ended_at == datetime(2020, 6, 17, 4, 9, 37, tzinfo=UTC)
    assert session.answered_at == session.legs["b"].answered_at
    encoded = msgspec.json.encode(session)
    assert msgspec.json.decode(encoded, type=SessionRecord) == session


def test_a_timeout_close_is_final_unknown_and_keeps_the_legs() -> None:
    ringing = _poll(1, T0)
    session = fold(None, ringing)
    assert session is not None
    later = T0 + timedelta(hours=2)
    closed = close(session, later, "no final status within 7200 s")
    assert (closed.status, closed.final, closed.event_count) == (Status.UNKNOWN, True, 2)
    assert closed.close_reason == "no final status within 7200 s"
    assert (closed.received_at, closed.updated_at) == (later, session.updated_at)  # ours, theirs
    assert closed.legs == session.legs
    assert fold(closed, ringing) is None  # a duplicate
    assert fold(closed, _poll(2, T0 + timedelta(seconds=5))) is None  # no reopening


def test_a_real_final_report_replaces_the_timeout_guess() -> None:
    session = fold(None, _poll(1, T0))
    assert session is not None
    closed = close(session, T0 + timedelta(hours=2), "no final status within 7200 s")
    ended = fold(closed, _poll(3, T0 + timedelta(seconds=60), 0))
    assert ended is not None
    assert (ended.status, ended.final, ended.close_reason) == (Status.COMPLETED, True, None)
    assert ended.event_count == 3


def test_a_session_keeps_the_received_time_it_became_final_at() -> None:
    """(1.2) What the alert windows count a session at, once: its first final version's
    received time, kept by every later version, a close's too."""
    ringing = fold(None, _poll(1, T0))
    assert ringing is not None
    assert ringing.final_received_at is None
    ended = fold(ringing, _poll(3, T0 + timedelta(seconds=60), 0))
    assert ended is not None
    assert ended.final_received_at == T0 + timedelta(seconds=60)
    later = fold(ended, _poll(3, T0 + timedelta(seconds=90), 17))  # a later final report
    assert later is not None
    assert (later.status, later.received_at) == (Status.BUSY, T0 + timedelta(seconds=90))
    assert later.final_received_at == T0 + timedelta(seconds=60)
    closed = close(ringing, T0 + timedelta(hours=2), "no final status within 7200 s")
    assert closed.final_received_at == T0 + timedelta(hours=2)
    real = fold(closed, _poll(3, T0 + timedelta(hours=3), 0))
    assert real is not None
    assert real.final_received_at == T0 + timedelta(hours=2)


def test_a_leg_keeps_its_destination_country_when_a_later_report_gives_none() -> None:
    (event,) = _events("voice_messaging", "acceptd_ringing")[:1]
    with_country = msgspec.structs.replace(event, to_country="MT")
    without = msgspec.structs.replace(
        event, event_id="later", status=Status.COMPLETED, final=True, to_country=None
    )
    session = fold(None, with_country)
    assert session is not None
    later = fold(session, without)
    assert later is not None
    assert later.legs[event.leg or "call"].to_country == "MT"
