"""What the sink tests share beyond fixtures: canonical events and sessions, direct SQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from normalize import normalize
from normalize.sessions import fold
from schemas import CallEvent, SessionRecord

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
