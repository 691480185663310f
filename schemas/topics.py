"""The topics callstream reads and writes, the headers on their records, and the stages that
write dead letters."""

from __future__ import annotations

from enum import StrEnum

RAW = "calls.raw"
EVENTS = "calls.events"
SESSIONS = "calls.sessions"
ALERTS = "calls.alerts"
ALERT_SAMPLES = "calls.alerts.samples"
"""The alert sink's repartition topic: final sessions as samples keyed by scope, so that one
instance holds all of a scope's windows; and the watermarks that say how far they are written."""
ALERT_STATE = "calls.alerts.state"
"""Where each partition of ALERT_SAMPLES stands: firing episodes, clocks, offsets (compacted)."""
DLQ = "calls.dlq"
TRACK = "calls.track"
"""mobile_agent calls being polled, keyed by callSerialNo (compacted; a tombstone ends one)."""
CHECKPOINTS = "calls.checkpoints"
"""Where each polled account has been read up to, keyed by `provider:account` (compacted)."""

ALL = (RAW, EVENTS, SESSIONS, ALERTS, ALERT_SAMPLES, ALERT_STATE, DLQ, TRACK, CHECKPOINTS)
_COMPACT = {"cleanup.policy": "compact"}
CONFIGS: dict[str, dict[str, str]] = {
    SESSIONS: _COMPACT, ALERT_STATE: _COMPACT, TRACK: _COMPACT, CHECKPOINTS: _COMPACT,
}  # fmt: skip

# Raw record headers (calls.raw, and calls.dlq which adds the two error headers).
PROVIDER = "cs-provider"
SOURCE = "cs-source"
RECEIVED_AT = "cs-received-at"
REQUEST_ID = "cs-request-id"
CONTENT_TYPE = "cs-content-type"
CONTEXT = "cs-context"
ERROR_STAGE = "cs-error-stage"
ERROR = "cs-error"
REDRIVE_OF = "cs-redrive-of"
"""On calls.dlq: the partition:offset of the dead letter this record follows up (dlq redrive)."""

Headers = list[tuple[str, bytes]]


class Stage(StrEnum):
    """Where a record failed: the `cs-error-stage` header of a dead letter on calls.dlq."""

    INGRESS = "ingress"
    """A callback body the ingress refused (not a UTF-8 JSON object)."""
    TRACK = "track"
    """A registration body `POST /v1/track/…` refused."""
    POLL = "poll"
    """A provider API answer a poller could not read."""
    NORMALIZE = "normalize"
    AGGREGATE = "aggregate"
    STORE = "store"
    ALERTS = "alerts"
    REPLAY = "replay"
    """A raw record that failed to normalize during `callstream replay`."""
    REDRIVE = "redrive"
    """A dead letter that failed again when redriven."""
    REDRIVEN = "redriven"
    """Not a failure: an empty marker that the letter it names was redriven successfully."""


RAW_STAGES = frozenset({Stage.INGRESS, Stage.POLL, Stage.NORMALIZE, Stage.REPLAY, Stage.REDRIVE})
"""Stages whose dead letters hold a raw report (body and raw headers): the ones a redrive takes."""
