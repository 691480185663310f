"""Voice messaging (TTS / audio) delivery callbacks (webhook): one job, a `data` list of calls.

Seed: 003. Dates are epoch seconds or `false` until they happen; error codes are the platform's
own (0, 3000-3005) or 4000+N for Q.850 cause N.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import msgspec

from normalize.report import Adapter, FieldPaths, Report, call_event, from_epoch_s, text, word
from schemas import CallEvent, Cause, Status, q850_cause
from schemas.q850 import Q850_MAX

PROVIDER = "voice_messaging"

Date = int | float | str | bool | None
"""Epoch seconds (a number or a numeric string), an RFC 3339 time, `false` or null."""


class _Call(msgspec.Struct, gc=False):
    message_id: str
    status: str
    to: str | None = None
    sender: str | None = msgspec.field(default=None, name="from")
    timestamp: int | float | str | None = None
    ring_date: Date = None
    answer_date: Date = None
    hang_date: Date = None
    actual_duration: int | None = None
    billed_duration: int | None = None
    error_code: int | None = None
    error_description: str | None = None


class _Callback(msgspec.Struct, gc=False):
    api_job_id: str
    data: list[_Call]


_decoder = msgspec.json.Decoder(_Callback, strict=False)

_STATUS_WORDS = {
    "DELIVRD": "DELIVRD", "DELIVERED": "DELIVRD",
    "UNDELIV": "UNDELIV", "UNDELIVERED": "UNDELIV", "UNDELIVERABLE": "UNDELIV",
    "REJECTD": "REJECTD", "REJECTED": "REJECTD",
    "ACCEPTD": "ACCEPTD", "ACCEPTED": "ACCEPTD",
    "UNKNOWN": "UNKNOWN",
}  # fmt: skip
"""Every spelling seen of the five statuses → the documented one."""

_UNDELIVERED = {
    4017: Status.BUSY,
    4018: Status.NO_ANSWER,
    4019: Status.NO_ANSWER,
    4602: Status.NO_ANSWER,
    4021: Status.REJECTED,
    4128: Status.CANCELED,
}
"""UNDELIV outcome by error code; any other code is a failure."""

_PLATFORM_LABELS = {
    0: "NORMAL_CLEARING",
    3000: "UNSPECIFIED",
    3001: "SERVER_TOO_BUSY",
    3002: "NO_COVERAGE",
    3003: "NO_FUNDS",
    3004: "PAYMENT_ERROR",
    3005: "FAILED_AUDIO_DOWNLOAD",
    4602: "ALLOTTED_TIMEOUT",
}
"""Codes that are not Q.850 causes; 4602 is beyond Q.850's range despite its 4000+N form."""
_Q850_BASE = 4000
_FIELDS: FieldPaths = {
    "session_id": ".message_id", "call_id": ".message_id", "job_id": "$.api_job_id",
    "account": "context.account", "from_number": ".from", "to_number": ".to",
    "ringing_at": ".ring_date", "answered_at": ".answer_date", "ended_at": ".hang_date",
    "reported_at": ".timestamp", "duration_s": ".actual_duration", "billed_s": ".billed_duration",
}  # fmt: skip
"""Where the checked fields are; `.` paths are under the call's own (`$.data[i]`)."""


def _decode(body: bytes, report: Report) -> list[CallEvent]:
    callback = report.decode(_decoder, body)
    account = text(report.context.get("account"))
    return [
        _call_event(report, f"$.data[{i}]", callback.api_job_id, account, call)
        for i, call in enumerate(callback.data)
    ]


def _call_event(
    report: Report, path: str, job_id: str, account: str | None, call: _Call
) -> CallEvent:
    ringing_at = _date(report, path, "ring_date", call.ring_date)
    status = _status(report, path, call, ringing_at is not None)
    return call_event(
        report,
        path,
        _FIELDS,
        # account, session_id, call_id, leg, status (in call_event's order)
        account,
        call.message_id,
        call.message_id,
        None,
        status,  # final unless accepted, as call_event takes it
        direction="outbound",
        from_number=text(call.sender),
        to_number=text(call.to),
        cause=None if call.error_code is None else _cause(call.error_code, call.error_description),
        ringing_at=ringing_at,
        answered_at=_date(report, path, "answer_date", call.answer_date),
        ended_at=_date(report, path, "hang_date", call.hang_date),
        duration_s=call.actual_duration,
        billed_s=call.billed_duration,
        reported_at=from_epoch_s(report, f"{path}.timestamp", call.timestamp),
        job_id=job_id,
    )


def _status(report: Report, path: str, call: _Call, ringing: bool) -> Status:
    documented = _STATUS_WORDS.get(word(call.status))
    if documented == "DELIVRD":
        return Status.COMPLETED
    if documented == "UNDELIV":
        return _UNDELIVERED.get(call.error_code or 0, Status.FAILED)
    if documented == "REJECTD":
        return Status.REJECTED
    if documented == "ACCEPTD":
        return Status.RINGING if ringing else Status.QUEUED
    if documented == "UNKNOWN":
        return Status.UNKNOWN
    raise report.invalid(f"{path}.status", f"unknown status {call.status!r}")


def _date(report: Report, path: str, field: str, value: Date) -> datetime | None:
    if value is True:
        raise report.invalid(f"{path}.{field}", "expected epoch seconds or false, got true")
    return from_epoch_s(report, f"{path}.{field}", value) if value else None


@lru_cache(maxsize=512)
def _cause(code: int, description: str | None) -> Cause:
    if _Q850_BASE <= code <= _Q850_BASE + Q850_MAX:
        return q850_cause(code - _Q850_BASE, str(code), description)
    return Cause(label=_PLATFORM_LABELS.get(code, description), provider_code=str(code))


ADAPTER = Adapter(name=PROVIDER, source="webhook", decode=_decode)
