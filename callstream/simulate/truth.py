"""Ground truth: which canonical states the simulated calls must reach calls.events with.

An expectation is (provider, call_id, leg, status): one distinct state of one call leg, whatever
the account or the time it was received. Expectations are what the normalizer makes of the
bodies the simulator serves or sends, so reconciling them with calls.events checks delivery
(nothing lost on the way), not the mapping (the golden files pin that).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

from normalize import normalize

_RECEIVED_AT = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)
"""When the expectations take a report to be received: no time of a simulated call is past it
(+ 24 h, contract 1.1), so they hold whenever it is received; no event id depends on it."""


class Expected(NamedTuple):
    provider: str
    call_id: str
    leg: str | None
    status: str


class _Event(msgspec.Struct):
    provider: str
    call_id: str
    leg: str | None
    status: str


_event = msgspec.json.Decoder(_Event)


def expected(provider: str, body: bytes, context: Mapping[str, str] | None = None) -> set[Expected]:
    """The states `body` must reach calls.events with."""
    events = normalize(provider, body, received_at=_RECEIVED_AT, context=dict(context or {}))
    return {Expected(e.provider, e.call_id, e.leg, e.status.value) for e in events}


def delivered(values: Iterable[bytes | None]) -> set[Expected]:
    """The states that `values` (records of calls.events) hold."""
    found = set()
    for value in values:
        event = _event.decode(value or b"")
        found.add(Expected(event.provider, event.call_id, event.leg, event.status))
    return found
