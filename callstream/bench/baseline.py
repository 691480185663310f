"""The Wavecell mapping written the way most teams would: json.loads, dicts, datetime parsing.

It yields the same canonical fields as normalize/providers/wavecell.py and exists only so that
`callstream bench normalize` can show what msgspec Structs buy on the same payloads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime

STATUSES = {
    "COMPLETED": "completed",
    "NO_ANSWER": "no_answer",
    "BUSY": "busy",
    "FAILED": "failed",
    "CANCELED": "canceled",
    "CANCELLED": "canceled",
}
DIRECTIONS = {"inbound": "inbound", "outbound": "outbound", "0": "inbound", "1": "outbound"}


def strptime_parser(value: str | None) -> str | None:
    """The usual hand-written time handling: strptime, then back to an ISO string."""
    if not value:
        return None
    moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def isoformat_parser(value: str | None) -> str | None:
    """The same with the C-implemented fromisoformat: a stronger baseline than most code."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def wavecell(
    body: bytes, received_at: datetime, parse_time: Callable[[str | None], str | None]
) -> list[dict]:
    doc = json.loads(body)
    if not isinstance(doc, dict) or "sessionId" not in doc:
        raise ValueError("not a wavecell report")
    account = doc.get("subAccountId")
    key = f"wavecell:{account or ''}:{doc['sessionId']}"
    events = []
    for name, leg in (("callA", "a"), ("callB", "b")):
        data = doc.get("details", {}).get(name)
        if not data:
            continue
        status = STATUSES[data["status"].strip().upper().replace(" ", "_")]
        ended_at = parse_time(data.get("disconnectedTimestamp"))
        event_id = hashlib.blake2b(
            f"wavecell|{key}|{data['id']}|{leg}|{status}".encode(), digest_size=16
        ).hexdigest()
        events.append(
            {
                "schema": "call_event/1",
                "event_id": event_id,
                "provider": "wavecell",
                "account": account,
                "session_id": doc["sessionId"],
                "session_key": key,
                "call_id": data["id"],
                "leg": leg,
                "direction": DIRECTIONS[str(data.get("direction")).lower()],
                "network": data["type"].lower() if data.get("type") else None,
                "from_number": data.get("source"),
                "to_number": data.get("target"),
                "from_country": data.get("sourceCountryCode"),
                "to_country": data.get("targetCountryCode"),
                "status": status,
                "final": True,
                "cause": None,
                "hangup_by": None,
                "initiated_at": parse_time(data.get("initiatedTimestamp")),
                "ringing_at": None,
                "answered_at": (
                    parse_time(data.get("connectedTimestamp")) if status == "completed" else None
                ),
                "ended_at": ended_at,
                "duration_s": int(data["duration"]) if data.get("duration") is not None else None,
                "billed_s": None,
                "occurred_at": ended_at
                or parse_time(doc.get("endTime"))
                or received_at.isoformat(),
                "received_at": received_at.isoformat(),
                "source": "webhook",
                "raw": None,
            }
        )
    return events
