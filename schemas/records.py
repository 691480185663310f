"""The wire records of callstream's own topics besides events and sessions: alerts (calls.alerts),
the alert sink's samples and state (calls.alerts.samples, calls.alerts.state), and the pollers'
state (calls.track, calls.checkpoints)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.events import Status, UtcTime

ALERT_SCHEMA = "alert/1"
ScopeKind = Literal["provider", "account", "country"]


class Scope(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a window counts: one provider, or one of its accounts or destination countries."""

    provider: str
    account: str | None = None
    country: str | None = None

    def __str__(self) -> str:
        return ",".join(
            f"{name}={value}"
            for name, value in msgspec.structs.asdict(self).items()
            if value is not None
        )

    @property
    def kind(self) -> ScopeKind:
        """Which of a rule's `scopes` this is."""
        if self.account is not None:
            return "account"
        return "provider" if self.country is None else "country"


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """A transition of one (rule, scope) (`calls.alerts`, key `rule:scope`)."""

    schema: Literal["alert/1"] = ALERT_SCHEMA
    alert_id: str
    rule: str
    kind: str
    scope: Scope
    state: Literal["firing", "resolved"]
    value: float | None
    """The measured value (ratio, seconds, or count of sessions); null when the window is
    empty (resolved after a quiet period)."""
    threshold: float
    window_s: float
    attempts: int
    at: UtcTime
    since: UtcTime
    """When the episode started (the firing alert's `at`)."""

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.scope}"


class AlertSample(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="schema", tag="alert_sample/1"
):
    """A final session as one scope's windows count it (`calls.alerts.samples`, key: the scope):
    what the rules measure, and when it counts."""

    scope: Scope
    session_key: str
    """A session is counted once per scope: later samples of the same key are duplicates."""
    at: UtcTime
    """The session's `final_received_at`: the received time at which it became final."""
    status: Status
    duration_s: int | None
    pdd_s: float | None
    """The deciding leg's ringing_at - initiated_at, where both are known and in that order."""
    cause: str | None
    """The session's cause label."""


class AlertWatermark(msgspec.Struct, frozen=True, tag_field="schema", tag="alert_watermark/1"):
    """How far the samples of some calls.sessions partitions are written (`calls.alerts.samples`,
    one to every partition, no key): each partition's received-time clock when they were."""

    sessions: dict[int, UtcTime]
    """calls.sessions partition → its clock (the newest received time read there, the wall
    clock while read to its end)."""


class Episode(msgspec.Struct, frozen=True):
    """A (rule, scope) firing: since when, and the received time of its latest sample."""

    rule: str
    scope: Scope
    since: UtcTime
    last: UtcTime


class AlertState(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="schema", tag="alert_state/1"
):
    """Where the alert windows of one `calls.alerts.samples` partition stand
    (`calls.alerts.state`, the same partition number, key: that number, compacted)."""

    offset: int
    """The next offset of the samples partition: every record before it is reflected."""
    restore_from: int
    """The offset from which the samples partition is read again to refill the windows."""
    decided: UtcTime | None
    """The received time up to which samples were counted (null: none yet)."""
    watermarks: dict[int, UtcTime]
    """The latest clock of each calls.sessions partition (AlertWatermark)."""
    firing: list[Episode]


class Track(msgspec.Struct, frozen=True):
    """A record of calls.track: a call to poll, and the last state published for it."""

    call_serial_no: str = msgspec.field(name="callSerialNo")
    registered_at: datetime
    """The deadline counts from here."""
    state: int | None = None
    """The last state the poller published (None: none yet)."""


class Reread(msgspec.Struct, frozen=True):
    """How far one re-read of a poller's schedule has come: the windows are read again
    `after_s` after their end, and those ending by `until` have been."""

    after_s: float
    until: datetime
    """The windows after this one, up to the checkpoint's `until`, are pending this re-read."""


class Checkpoint(msgspec.Struct, frozen=True):
    """A record of calls.checkpoints: an account's calls are read up to `until`, and re-read as
    far as `rereads` say."""

    provider: str
    account: str
    until: datetime
    """Every window ending by then has had its first read."""
    rereads: tuple[Reread, ...] = ()
    """The progress of each re-read of the schedule (none in a checkpoint written before
    re-reads existed: the poller then takes each to be on time, `after_s` behind `until`)."""
