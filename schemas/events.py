"""Canonical call event and session record, as msgspec Structs.

Wire evolution rule: add fields with defaults, never change a field's type or meaning. Records are
read by other services, so unknown fields are accepted on decode.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal

import msgspec

EVENT_SCHEMA = "call_event/1"
SESSION_SCHEMA = "call_session/1"

UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
"""An aware datetime; encoded as RFC 3339 with `Z` when it is UTC, as the contract requires."""

Leg = Literal["a", "b"]
Direction = Literal["inbound", "outbound"]
Network = Literal["pstn", "voip"]
HangupBy = Literal["caller", "callee", "system"]
Source = Literal["webhook", "poll"]


class Status(enum.StrEnum):
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


FINAL_STATUSES = frozenset(
    {
        Status.COMPLETED,
        Status.BUSY,
        Status.NO_ANSWER,
        Status.FAILED,
        Status.CANCELED,
        Status.REJECTED,
    }
)
"""Statuses that always end a call; `unknown` is final only when reported as an outcome."""


class Cause(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Why a call ended: a Q.850 cause where known, else the provider's own code and label."""

    q850: int | None = None
    label: str | None = None
    provider_code: str | None = None
    sip: int | None = None


class RawRef(msgspec.Struct, frozen=True, gc=False):
    """Where in `calls.raw` the report an event came from is stored."""

    topic: str
    partition: int
    offset: int


class CallEvent(msgspec.Struct, frozen=True, gc=False):
    """One leg of one provider report, in the canonical vocabulary (`calls.events`).

    Fields are positional, in contract order: building one this way is ~10x faster than by
    keyword, and normalize.report.call_event is the one place that builds them.
    """

    schema: Literal["call_event/1"]
    event_id: str
    provider: str
    account: str | None
    session_id: str
    session_key: str
    call_id: str
    leg: Leg | None
    direction: Direction | None
    network: Network | None
    from_number: str | None
    to_number: str | None
    from_country: str | None
    to_country: str | None
    status: Status
    final: bool
    cause: Cause | None
    hangup_by: HangupBy | None
    initiated_at: UtcTime | None
    ringing_at: UtcTime | None
    answered_at: UtcTime | None
    ended_at: UtcTime | None
    duration_s: int | None
    billed_s: int | None
    occurred_at: UtcTime
    received_at: UtcTime
    source: Source
    raw: RawRef | None
    bridged_s: int | None = None
    """vpbx: seconds the two parties were bridged (`bridged_duration`)."""
    job_id: str | None = None
    """voice_messaging: the job the call belongs to (`api_job_id`)."""


# SessionLeg and SessionRecord are built positionally, in contract order, by normalize.sessions
# (one of each per event folded): by keyword, past 30 argument slots, CPython builds and unpacks
# a dict of them, and a SessionRecord costs ~7 times as much to make.
class SessionLeg(msgspec.Struct, frozen=True, gc=False):
    """The latest known state of one leg inside a session record."""

    call_id: str
    status: Status
    final: bool
    from_number: str | None
    to_number: str | None
    cause: Cause | None
    hangup_by: HangupBy | None
    initiated_at: UtcTime | None
    ringing_at: UtcTime | None
    answered_at: UtcTime | None
    ended_at: UtcTime | None
    duration_s: int | None
    billed_s: int | None
    occurred_at: UtcTime
    event_id: str
    to_country: str | None = None
    """(1.2) The destination country (ISO 3166 alpha-2) of the leg's latest report that gave
    one: what the alert rules' country scope counts by."""


class SessionRecord(msgspec.Struct, frozen=True, gc=False):
    """All legs of one call folded into one record (`calls.sessions`, compacted by session_key)."""

    schema: Literal["call_session/1"]
    session_key: str
    provider: str
    account: str | None
    session_id: str
    status: Status
    final: bool
    legs: dict[str, SessionLeg]
    started_at: UtcTime | None
    answered_at: UtcTime | None
    ended_at: UtcTime | None
    duration_s: int | None
    billed_s: int | None
    cause: Cause | None
    event_count: int
    updated_at: UtcTime
    close_reason: str | None = None
    """Why the aggregator closed the session itself (e.g. no final status within the timeout)."""
    received_at: UtcTime | None = None
    """When the newest report folded into it was received (its raw record's `cs-received-at`),
    or, for a session the aggregator closed, the received time at which it timed out: the clock
    of every timeout and window downstream (contract 1.1). Null only in records written before
    1.1, whose `updated_at` stands in for it."""
    final_received_at: UtcTime | None = None
    """(1.2) The `received_at` of the session's first final version, kept by every later one: the
    received time at which the session is counted by the alert rules, once. Null while the
    session is open, and in records written before 1.2."""

    @property
    def received(self) -> datetime:
        """`received_at`, or `updated_at` for a record written before contract 1.1."""
        return self.received_at or self.updated_at

    @property
    def final_received(self) -> datetime:
        """When a final session became final in received time: `final_received_at`, or for a
        record written before 1.2 its own `received`."""
        return self.final_received_at or self.received


CALL_LEG = "call"
"""The legs key of a session of a provider without legs (its one entry)."""
DECIDING_LEGS = ("b", "a", CALL_LEG)
"""Legs keys by precedence: a session's status, answer, duration and cause are those of the first
of these it has (contract: the b leg when there is one, else the single leg)."""


def deciding_leg(legs: Mapping[str, object]) -> str:
    """The key in `legs` of the leg that decides the session (see DECIDING_LEGS)."""
    for key in DECIDING_LEGS:
        if key in legs:
            return key
    raise ValueError(f"no leg of {sorted(legs)} decides a session")


def session_key(provider: str, account: str | None, session_id: str) -> str:
    """`provider:account:session_id`, the Kafka key of events and sessions (empty account → '').

    Each segment has `%` written `%25` and `:` written `%3A`, so that no two (account,
    session_id) pairs share a key (`acc` + `coll:x` is not `acc:coll` + `x`); a segment without
    either character is as it was, and so are the keys (and event ids) of ordinary ids.
    """
    account = account or ""
    if (
        ":" in session_id or "%" in session_id or ":" in account or "%" in account
        or ":" in provider or "%" in provider
    ):  # fmt: skip
        provider, account, session_id = _escaped(provider), _escaped(account), _escaped(session_id)
    return f"{provider}:{account}:{session_id}"


def _escaped(segment: str) -> str:
    return segment.replace("%", "%25").replace(":", "%3A")
