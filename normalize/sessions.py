"""Folding call events into session records (contract: "Session record"). Pure: no I/O.

Per leg, an event applies only if it moves the leg forward: a non-final state by its progress
(queued < ringing < in_progress, then time); any final state beats a non-final one; among final
states the later report wins. A duplicate (same event_id) or an older report changes nothing.
The session takes its status from the b leg when there is one, else from its single leg, and
a final session never becomes non-final again.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas import (
    CALL_LEG,
    SESSION_SCHEMA,
    CallEvent,
    SessionLeg,
    SessionRecord,
    Status,
    deciding_leg,
)

_RANK = {Status.QUEUED: 0, Status.RINGING: 1, Status.IN_PROGRESS: 2}

Progress = tuple[bool, int, datetime]


def progress(final: bool, status: Status, occurred_at: datetime) -> Progress:
    """Sort key of a leg's states: a later key is further along and replaces an earlier one."""
    return (final, 0 if final else _RANK.get(status, 0), occurred_at)


def fold(session: SessionRecord | None, event: CallEvent) -> SessionRecord | None:
    """The session after `event`, or None when the event changes nothing."""
    key = event.leg or CALL_LEG
    if session is None:
        return _record(event, {key: _leg(event, None)}, 1, event.received_at, None)
    current = session.legs.get(key)
    if current is not None and (
        current.event_id == event.event_id
        or progress(event.final, event.status, event.occurred_at)
        <= progress(current.final, current.status, current.occurred_at)
    ):
        return None
    legs = dict(session.legs)
    legs[key] = _leg(event, current)
    final_since = session.final_received if session.final else None
    if final_since is not None and not legs[deciding_leg(legs)].final:
        return None  # a final session status is never replaced by a non-final one
    received = max(session.received, event.received_at)
    return _record(event, legs, session.event_count + 1, received, final_since)


def close(session: SessionRecord, at: datetime, reason: str) -> SessionRecord:
    """`session` closed by the aggregator itself as final `unknown`, because of `reason`.

    Only session-level fields change and the legs stay as reported, so a real final report that
    comes later still moves its leg forward and `fold` replaces this guess with it. The close is
    stamped in received time (`received_at` = `final_received_at` = `at`, when it timed out);
    the provider's times, `updated_at` included, stay as reported.
    """
    return msgspec.structs.replace(
        session,
        status=Status.UNKNOWN,
        final=True,
        close_reason=reason,
        event_count=session.event_count + 1,
        received_at=at,
        final_received_at=at,
    )


def _leg(event: CallEvent, current: SessionLeg | None) -> SessionLeg:
    """The leg as `event` reports it; its country stays the one reported before when the event
    gives none."""
    return SessionLeg(
        event.call_id,
        event.status,
        event.final,
        event.from_number,
        event.to_number,
        event.cause,
        event.hangup_by,
        event.initiated_at,
        event.ringing_at,
        event.answered_at,
        event.ended_at,
        event.duration_s,
        event.billed_s,
        event.occurred_at,
        event.event_id,
        event.to_country or (current.to_country if current else None),
    )


def _record(
    event: CallEvent,
    legs: dict[str, SessionLeg],
    event_count: int,
    received_at: datetime,
    final_since: datetime | None,
) -> SessionRecord:
    """The session of `legs`; `final_since`: when it became final, if it was already."""
    deciding = legs[deciding_leg(legs)]
    started_at = ended_at = updated_at = None
    for leg in legs.values():  # the earliest start, the latest end and report (first of equals)
        start = leg.initiated_at or leg.ringing_at or leg.answered_at
        if start is not None and (started_at is None or start < started_at):
            started_at = start
        if leg.ended_at is not None and (ended_at is None or leg.ended_at > ended_at):
            ended_at = leg.ended_at
        if updated_at is None or leg.occurred_at > updated_at:
            updated_at = leg.occurred_at
    assert updated_at is not None  # noqa: S101 - legs is never empty
    return SessionRecord(
        SESSION_SCHEMA,
        event.session_key,
        event.provider,
        event.account,
        event.session_id,
        deciding.status,
        deciding.final,
        legs,
        started_at,
        deciding.answered_at,
        ended_at,
        deciding.duration_s,
        deciding.billed_s,
        deciding.cause,
        event_count,
        updated_at,
        None,
        received_at,
        final_since or (received_at if deciding.final else None),
    )
