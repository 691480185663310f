"""CloudEvents 1.0 Kafka binary-mode headers on the canonical topics (docs/contract.md)."""

from __future__ import annotations

from datetime import datetime
from functools import cache

import msgspec

from schemas.topics import Headers

EVENT_TYPE = b"callstream.call_event.v1"
SESSION_TYPE = b"callstream.call_session.v1"
ALERT_TYPE = b"callstream.alert.v1"


@cache
def _constant(source: str, ce_type: bytes) -> tuple[tuple[str, bytes], ...]:
    """The headers that are the same on every record of one source and type (built once)."""
    return (
        ("ce_specversion", b"1.0"),
        ("ce_source", f"callstream/{source}".encode()),
        ("ce_type", ce_type),
        ("content-type", b"application/json"),
    )


def headers(ce_id: str, source: str, ce_type: bytes, time: datetime) -> Headers:
    """`source` is the provider id (→ `callstream/<provider>`) or `alerts`; `time` is aware.

    ce_time is RFC 3339 as msgspec writes it: `Z` for UTC, which is what records carry.
    """
    return [
        *_constant(source, ce_type),
        ("ce_id", ce_id.encode()),
        ("ce_time", msgspec.json.encode(time)[1:-1]),
    ]
