"""Ground truth: which canonical states the simulated calls must reach calls.events with.

An expectation is (provider, call_id, leg, status, final): one distinct state of one call leg,
whatever the account or the time it was received. Expectations are what the normalizer makes
of the bodies the simulator serves or sends, so reconciling them with calls.events checks
delivery (nothing lost on the way), not the mapping (the golden files pin that).

`reconcile` says what went wrong: calls missed (a leg of which nothing arrived), states missing,
and calls that did not end with their true final status (a leg whose final states delivered
are not exactly the one it ended with, as when a call read before its end were taken for
ended, or a late report of another outcome were kept).
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
    final: bool

    @property
    def call(self) -> Leg:
        return Leg(self.provider, self.call_id, self.leg)


class Leg(NamedTuple):
    provider: str
    call_id: str
    leg: str | None


class Reconciliation(NamedTuple):
    missed: set[Leg]
    """Legs expected of which no state arrived."""
    missing: set[Expected]
    """States expected that did not arrive (those of missed legs included)."""
    wrong_end: dict[Leg, tuple[str | None, set[str]]]
    """Legs whose final states delivered are not their true one: (true, delivered)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong_end)

    def __str__(self) -> str:
        return (
            f"{len(self.missed)} calls missed, e.g. {sorted(self.missed)[:3]}; "
            f"{len(self.missing)} states missing, e.g. {sorted(self.missing)[:3]}; "
            f"{len(self.wrong_end)} calls ending wrong, e.g. {sorted(self.wrong_end.items())[:3]}"
        )


class _Event(msgspec.Struct):
    provider: str
    call_id: str
    leg: str | None
    status: str
    final: bool


_event = msgspec.json.Decoder(_Event)


def expected(provider: str, body: bytes, context: Mapping[str, str] | None = None) -> set[Expected]:
    """The states `body` must reach calls.events with."""
    events = normalize(provider, body, received_at=_RECEIVED_AT, context=dict(context or {}))
    return {Expected(e.provider, e.call_id, e.leg, e.status.value, e.final) for e in events}


def delivered(values: Iterable[bytes | None]) -> set[Expected]:
    """The states that `values` (records of calls.events) hold."""
    found = set()
    for value in values:
        event = _event.decode(value or b"")
        found.add(Expected(event.provider, event.call_id, event.leg, event.status, event.final))
    return found


def reconcile(expected: set[Expected], delivered: set[Expected]) -> Reconciliation:
    """What of `expected` did not reach `delivered` (calls.events), and which expected calls
    ended there otherwise than they truly did (delivered states of other calls are ignored)."""
    arrived = {state.call for state in delivered}
    missing = expected - delivered
    true_end: dict[Leg, str | None] = {}
    for state in expected:
        true_end.setdefault(state.call, None)
        if state.final:
            true_end[state.call] = state.status
    ends: dict[Leg, set[str]] = {}
    for state in delivered:
        if state.final and state.call in true_end:
            ends.setdefault(state.call, set()).add(state.status)
    wrong_end = {
        leg: (status, ends.get(leg, set()))
        for leg, status in true_end.items()
        if leg in arrived and ends.get(leg, set()) != ({status} if status else set())
    }
    return Reconciliation({leg for leg in true_end if leg not in arrived}, missing, wrong_end)
