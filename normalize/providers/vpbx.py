"""Cloud PBX call records (polled, GET /client/{client_id}/calls/): each record a finished call.

Seed: 002. One event per record of a page; the poller passes `client_id` as context, used as the
account when a record lacks client_owner_id.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from normalize.report import Adapter, FieldPaths, Report, call_event, text, utc, word
from schemas import CallEvent, Cause, Direction, HangupBy, Status, q850_cause
from schemas.q850 import Q850_CODES

PROVIDER = "vpbx"


class _Call(msgspec.Struct, gc=False):
    call_uuid: str
    client_owner_id: int | str | None = None
    result: str | None = None
    hangup_disposition: str | None = None
    hangup_cause: str | None = None
    flow: str | None = None
    from_username: str | None = None
    to_username: str | None = None
    init_time_gmt: datetime | None = None
    start_time_gmt: datetime | None = None
    hangup_time_gmt: datetime | None = None
    duration: int | None = None
    bridged_duration: int | None = None


class _Page(msgspec.Struct, gc=False):
    calls: list[_Call]


_decoder = msgspec.json.Decoder(_Page, strict=False)

_RESULT = {
    "BRIDGED": Status.COMPLETED,
    "ANSWERED": Status.COMPLETED,
    "BUSY": Status.BUSY,
    "NOTANSWERED": Status.NO_ANSWER,
    "REJECTED": Status.REJECTED,
    "FAILED": Status.FAILED,
}
_HANGUP_BY: dict[str, HangupBy | None] = {
    "CALLEEBYE": "callee",
    "CALLEEREFUSE": "callee",
    "CALLERBYE": "caller",
    "CALLERCANCEL": "caller",
    "INTERNALCANCEL": "system",
    "": None,
}
_FLOW: dict[str, Direction] = {"in": "inbound", "out": "outbound"}
_FIELDS: FieldPaths = {
    "session_id": ".call_uuid", "call_id": ".call_uuid", "account": ".client_owner_id",
    "from_number": ".from_username", "to_number": ".to_username",
    "initiated_at": ".init_time_gmt", "answered_at": ".start_time_gmt",
    "ended_at": ".hangup_time_gmt", "duration_s": ".duration", "bridged_s": ".bridged_duration",
}  # fmt: skip
"""Where the checked fields are, under the record's own path (`$.calls[i]`)."""
_FIELDS_CLIENT_ID: FieldPaths = {**_FIELDS, "account": "context.client_id"}
"""The same for a record without client_owner_id, whose account is the poller's client_id."""


def _decode(body: bytes, report: Report) -> list[CallEvent]:
    page = report.decode(_decoder, body)
    return [_call_event(report, f"$.calls[{i}]", call) for i, call in enumerate(page.calls)]


def _call_event(report: Report, path: str, call: _Call) -> CallEvent:
    owner = call.client_owner_id
    if owner not in (None, ""):
        account, fields = str(owner), _FIELDS
    else:
        account, fields = text(report.context.get("client_id")), _FIELDS_CLIENT_ID
    disposition = word(call.hangup_disposition or "")
    if disposition not in _HANGUP_BY:
        raise report.invalid(
            f"{path}.hangup_disposition", f"unknown value {call.hangup_disposition!r}"
        )
    return call_event(
        report,
        path,
        fields,
        # account, session_id, call_id, leg, status (in call_event's order)
        account,
        call.call_uuid,
        call.call_uuid,
        None,
        _status(report, path, call.result, disposition),  # final: an outcome or unknown
        direction=_direction(report, path, call.flow),
        from_number=text(call.from_username),
        to_number=text(call.to_username),
        cause=_cause(call.hangup_cause),
        hangup_by=_HANGUP_BY[disposition],
        initiated_at=utc(report, path, "init_time_gmt", call.init_time_gmt),
        answered_at=utc(report, path, "start_time_gmt", call.start_time_gmt),
        ended_at=utc(report, path, "hangup_time_gmt", call.hangup_time_gmt),
        duration_s=call.duration,
        bridged_s=call.bridged_duration,
    )


def _status(report: Report, path: str, result: str | None, disposition: str) -> Status:
    """A missing result is a finished call whose outcome the PBX did not record: unknown."""
    if not result:
        return Status.UNKNOWN
    status = _RESULT.get(word(result))
    if status is None:
        raise report.invalid(f"{path}.result", f"unknown result {result!r}")
    if status is Status.NO_ANSWER and disposition == "CALLERCANCEL":
        return Status.CANCELED
    return status


def _direction(report: Report, path: str, flow: str | None) -> Direction | None:
    if not flow:
        return None
    direction = _FLOW.get(flow.lower())
    if direction is None:
        raise report.invalid(f"{path}.flow", f"expected 'in' or 'out', got {flow!r}")
    return direction


def _cause(hangup_cause: str | None) -> Cause | None:
    """hangup_cause is informational; a Q.850 name in it is read as that cause."""
    if not hangup_cause:
        return None
    code = Q850_CODES.get(hangup_cause.upper())
    if code is None:
        return Cause(label=hangup_cause, provider_code=hangup_cause)
    return q850_cause(code, hangup_cause)


ADAPTER = Adapter(name=PROVIDER, source="poll", decode=_decode)
