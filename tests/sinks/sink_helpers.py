"""What the sink tests share beyond fixtures: canonical events and sessions, direct SQL."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from normalize import normalize
from normalize.sessions import fold
from schemas import SESSION_SCHEMA, CallEvent, Cause, SessionLeg, SessionRecord, Status

RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

Query = Callable[[str], Awaitable[list[tuple[Any, ...]]]]
"""Runs SQL on a test's store directly, around the backend under test (the `query` fixture)."""


def events_of(bodies: list[bytes], provider: str = "wavecell") -> list[CallEvent]:
    return [e for body in bodies for e in normalize(provider, body, received_at=RECEIVED_AT)]


def sessions_of(events: list[CallEvent]) -> list[SessionRecord]:
    """Every version of every session, in the order the aggregator would produce them."""
    live: dict[str, SessionRecord] = {}
    versions = []
    for event in events:
        folded = fold(live.get(event.session_key), event)
        if folded is not None:
            live[event.session_key] = folded
            versions.append(folded)
    return versions


_ids = itertools.count()


def make_session(
    at_s: float,
    status: Status = Status.COMPLETED,
    *,
    key: str | None = None,
    account: str | None = "acc1",
    duration_s: int | None = 60,
    pdd_s: float | None = None,
    cause: str | None = None,
    final: bool = True,
) -> SessionRecord:
    at = RECEIVED_AT + timedelta(seconds=at_s)
    initiated = at - timedelta(seconds=90)
    leg = SessionLeg(
        call_id="c",
        status=status,
        final=final,
        from_number=None,
        to_number=None,
        cause=None,
        hangup_by=None,
        initiated_at=initiated,
        ringing_at=initiated + timedelta(seconds=pdd_s) if pdd_s is not None else None,
        answered_at=None,
        ended_at=at,
        duration_s=duration_s,
        billed_s=None,
        occurred_at=at,
        event_id="e",
    )
    session_id = key or f"s{next(_ids)}"
    return SessionRecord(
        schema=SESSION_SCHEMA,
        session_key=f"wavecell:{account or ''}:{session_id}",
        provider="wavecell",
        account=account,
        session_id=session_id,
        status=status,
        final=final,
        legs={"call": leg},
        started_at=initiated,
        answered_at=None,
        ended_at=at,
        duration_s=duration_s,
        billed_s=None,
        cause=Cause(label=cause) if cause else None,
        event_count=1,
        updated_at=at,
    )
