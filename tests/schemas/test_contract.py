"""The Structs say what docs/contract.md says."""

from __future__ import annotations

import msgspec

from schemas import (
    FINAL_STATUSES,
    Q850_LABELS,
    Q850_SIP,
    CallEvent,
    SessionRecord,
    Status,
    q850_cause,
)

CONTRACT_EVENT_FIELDS = [
    "schema", "event_id", "provider", "account", "session_id", "session_key", "call_id", "leg",
    "direction", "network", "from_number", "to_number", "from_country", "to_country", "status",
    "final", "cause", "hangup_by", "initiated_at", "ringing_at", "answered_at", "ended_at",
    "duration_s", "billed_s", "occurred_at", "received_at", "source", "raw",
]  # fmt: skip
CONTRACT_SESSION_FIELDS = [
    "schema", "session_key", "provider", "account", "session_id", "status", "final", "legs",
    "started_at", "answered_at", "ended_at", "duration_s", "billed_s", "cause", "event_count",
    "updated_at",
]  # fmt: skip


def test_event_fields_are_the_contract_fields_in_order_then_additions() -> None:
    fields = list(CallEvent.__struct_fields__)
    assert fields[: len(CONTRACT_EVENT_FIELDS)] == CONTRACT_EVENT_FIELDS
    assert fields[len(CONTRACT_EVENT_FIELDS) :] == ["bridged_s", "job_id"]


def test_session_fields_are_the_contract_fields_then_additions() -> None:
    fields = list(SessionRecord.__struct_fields__)
    assert fields[: len(CONTRACT_SESSION_FIELDS)] == CONTRACT_SESSION_FIELDS
    additions = fields[len(CONTRACT_SESSION_FIELDS) :]
    assert additions == ["close_reason", "received_at", "final_received_at"]  # 1.1, 1.2


def test_status_vocabulary_and_finality() -> None:
    assert [s.value for s in Status] == [
        "queued", "ringing", "in_progress", "completed", "busy", "no_answer",
        "failed", "canceled", "rejected", "unknown",
    ]  # fmt: skip
    assert {s.value for s in FINAL_STATUSES} == {
        "completed", "busy", "no_answer", "failed", "canceled", "rejected",
    }  # fmt: skip


def test_q850_examples_from_the_contract() -> None:
    assert q850_cause(17).label == "USER_BUSY"
    expected_sip = {17: 486, 18: 408, 19: 480, 20: 480, 31: 480, 21: 403, 1: 404, 2: 404, 3: 404,
                    22: 410, 28: 484, 34: 503, 38: 503, 41: 503, 42: 503, 102: 504}  # fmt: skip
    assert {code: Q850_SIP[code] for code in expected_sip} == expected_sip
    assert q850_cause(16).sip is None  # normal clearing has no SIP failure response
    assert set(Q850_SIP) <= set(Q850_LABELS)


def test_event_json_schema_names_every_field_and_the_status_enum() -> None:
    schema = msgspec.json.schema(CallEvent)
    event = schema["$defs"]["CallEvent"]
    assert set(event["properties"]) == set(CallEvent.__struct_fields__)
    assert set(schema["$defs"]["Status"]["enum"]) == {s.value for s in Status}
    assert event["properties"]["occurred_at"] == {"type": "string", "format": "date-time"}
