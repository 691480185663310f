"""Records of calls.track, which the track route writes and the mobile_agent poller reads."""

from __future__ import annotations

import msgspec

from foundation.kafka import OutRecord
from schemas.records import Track

TRACKED = frozenset({"mobile_agent"})
"""Providers whose calls are registered for polling."""

_encode = msgspec.json.Encoder().encode


def track_record(track: Track) -> OutRecord:
    return OutRecord(track.call_serial_no.encode(), _encode(track), [])


def end_record(call_serial_no: str) -> OutRecord:
    """The tombstone that ends the tracking of a call."""
    return OutRecord(call_serial_no.encode(), None, [])
