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
    current = session.legs.get(key) if session else None
    if current is not None and (
        current.event_id == event.event_id
        or progress(event.final, event.status, event.occurred_at)
        <= progress(current.final, current.status, current.occurred_at)
    ):
        return None
    legs = dict(session.legs) if session else {}
    legs[key] = _leg(event, current)
    received = event.received_at if session is None else max(session.received, event.received_at)
    final_since = session.final_received if session is not None and session.final else None
    folded = _record(
        event, legs, (session.event_count if session else 0) + 1, received, final_since
    )
    if final_since is not None and not folded.final:
        return None  # a final session status is never replaced by a non-final one
    return folded


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
        call_id=event.call_id,
        status=event.status,
        final=event.final,
        from_number=event.from_number,
        to_number=event.to_number,
        cause=event.cause,
        hangup_by=event.hangup_by,
        initiated_at=event.initiated_at,
        ringing_at=event.ringing_at,
        answered_at=event.answered_at,
        ended_at=event.ended_at,
        duration_s=event.duration_s,
        billed_s=event.billed_s,
        occurred_at=event.occurred_at,
        event_id=event.event_id,
        to_country=event.to_country or (current.to_country if current else None),
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
    starts = [
        t for leg in legs.values() if (t := leg.initiated_at or leg.ringing_at or leg.answered_at)
    ]
    ends = [leg.ended_at for leg in legs.values() if leg.ended_at is not None]
    return SessionRecord(
        schema=SESSION_SCHEMA,
        session_key=event.session_key,
        provider=event.provider,
        account=event.account,
        session_id=event.session_id,
        status=deciding.status,
        final=deciding.final,
        legs=legs,
        started_at=min(starts) if starts else None,
        answered_at=deciding.answered_at,
        ended_at=max(ends) if ends else None,
        duration_s=deciding.duration_s,
        billed_s=deciding.billed_s,
        cause=deciding.cause,
        event_count=event_count,
        updated_at=max(leg.occurred_at for leg in legs.values()),
        received_at=received_at,
        final_received_at=final_since or (received_at if deciding.final else None),
    )
