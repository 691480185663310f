"""The topics callstream reads and writes, and the headers on their records (contract.md)."""

from __future__ import annotations

RAW = "calls.raw"
EVENTS = "calls.events"
SESSIONS = "calls.sessions"
ALERTS = "calls.alerts"
DLQ = "calls.dlq"
TRACK = "calls.track"
"""mobile_agent calls being polled, keyed by callSerialNo (compacted; a tombstone ends one)."""
CHECKPOINTS = "calls.checkpoints"
"""Where each polled account has been read up to, keyed by `provider:account` (compacted)."""

ALL = (RAW, EVENTS, SESSIONS, ALERTS, DLQ, TRACK, CHECKPOINTS)
_COMPACT = {"cleanup.policy": "compact"}
CONFIGS: dict[str, dict[str, str]] = {SESSIONS: _COMPACT, TRACK: _COMPACT, CHECKPOINTS: _COMPACT}

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
