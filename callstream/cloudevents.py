"""CloudEvents 1.0 Kafka binary-mode headers for records on the canonical topics (contract.md)."""

from __future__ import annotations

from datetime import datetime

from callstream.topics import Headers

EVENT_TYPE = b"callstream.call_event.v1"
SESSION_TYPE = b"callstream.call_session.v1"
ALERT_TYPE = b"callstream.alert.v1"
_JSON = b"application/json"
_SPEC = b"1.0"


def headers(ce_id: str, source: str, ce_type: bytes, time: datetime) -> Headers:
    """`source` is the provider id (→ `callstream/<provider>`) or `alerts`."""
    return [
        ("ce_specversion", _SPEC),
        ("ce_id", ce_id.encode()),
        ("ce_source", f"callstream/{source}".encode()),
        ("ce_type", ce_type),
        ("ce_time", _rfc3339(time)),
        ("content-type", _JSON),
    ]


def _rfc3339(time: datetime) -> bytes:
    text = time.isoformat()
    return (text[:-6] + "Z" if text.endswith("+00:00") else text).encode()
