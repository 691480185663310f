"""Contract 1.1's plausible values, checked over a CallEvent: written from the contract, not from
normalize/report.py, so that the tests compare the implementation with an independent reading.

- duration_s, billed_s, bridged_s: integers from 0 to 604,800;
- every time: from 1970-01-01T00:00:00Z up to received_at + 24 h;
- session_id, call_id, account, job_id: at most 256 characters;
- those and from_number, to_number: no C0 (U+0000-U+001F), DEL, C1 (U+0080-U+009F) and no
  bidirectional override (U+202A-U+202E, U+2066-U+2069);
- and, for the stores, every other integer of the event fits in a signed 64-bit column.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas import CallEvent

SECONDS = ("duration_s", "billed_s", "bridged_s")
TIMES = ("initiated_at", "ringing_at", "answered_at", "ended_at", "occurred_at", "received_at")
IDS = ("session_id", "call_id", "account", "job_id")
NUMBERS = ("from_number", "to_number")
REFUSED = frozenset(
    chr(code)
    for low, high in ((0x00, 0x1F), (0x7F, 0x9F), (0x202A, 0x202E), (0x2066, 0x2069))
    for code in range(low, high + 1)
)
"""Every character an id or a number may not hold."""

_FIRST = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = range(-(2**63), 2**63)


def violations(event: CallEvent) -> list[str]:
    """What in `event` no real call has; empty when it is plausible."""
    found = []
    for name in SECONDS:
        value = getattr(event, name)
        if value is not None and not (type(value) is int and 0 <= value <= 604_800):
            found.append(f"{name} = {value!r}")
    last = event.received_at + timedelta(hours=24)
    for name in TIMES:
        moment = getattr(event, name)
        if moment is not None and not _FIRST <= moment <= last:
            found.append(f"{name} = {moment.isoformat()}")
    for name in IDS:
        text = getattr(event, name)
        if text is not None and len(text) > 256:
            found.append(f"{name} has {len(text)} characters")
    for name in (*IDS, *NUMBERS):
        text = getattr(event, name)
        if text is not None and not REFUSED.isdisjoint(text):
            found.append(f"{name} = {text!r}")
    cause = event.cause
    others = [] if cause is None else [cause.q850, cause.sip]
    others += [] if event.raw is None else [event.raw.partition, event.raw.offset]
    found += [
        f"an integer past 64 bits: {value}"
        for value in others
        if value is not None and value not in _INT64
    ]
    return found
