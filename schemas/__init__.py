"""The canonical contract (docs/contract.md, version 1.2) that every part and consumer shares.

Pure data: msgspec Structs and vocabularies, no I/O.
"""

from schemas.events import (
    CALL_LEG,
    DECIDING_LEGS,
    EVENT_SCHEMA,
    FINAL_STATUSES,
    SESSION_SCHEMA,
    CallEvent,
    Cause,
    Direction,
    HangupBy,
    Leg,
    Network,
    RawRef,
    SessionLeg,
    SessionRecord,
    Source,
    Status,
    deciding_leg,
    session_key,
)
from schemas.q850 import Q850_LABELS, Q850_SIP, q850_cause

__all__ = [
    "CALL_LEG",
    "DECIDING_LEGS",
    "EVENT_SCHEMA",
    "FINAL_STATUSES",
    "Q850_LABELS",
    "Q850_SIP",
    "SESSION_SCHEMA",
    "CallEvent",
    "Cause",
    "Direction",
    "HangupBy",
    "Leg",
    "Network",
    "RawRef",
    "SessionLeg",
    "SessionRecord",
    "Source",
    "Status",
    "deciding_leg",
    "q850_cause",
    "session_key",
]
