"""Contact-center mobile agent (polled with queryCallState): the state of one call serial number.

Seed: 001. The response does not repeat the callSerialNo, so the poller passes it as context
(`callSerialNo`); `reason_table=q850` reads every reasonCode as a Q.850 cause (ITA accounts).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from normalize.report import Adapter, FieldPaths, Report, call_event, from_epoch_ms, text
from schemas import CallEvent, Cause, HangupBy, Status, q850_cause

PROVIDER = "mobile_agent"


class _Result(msgspec.Struct, rename="camel", gc=False):
    state: int | None = None
    reason_code: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    caller: str | None = None
    called: str | None = None
    start_time: int | str | None = None
    end_time: int | str | None = None


class _Response(msgspec.Struct, rename="camel", gc=False):
    ret_code: str | int
    ret_msg: str | None = None
    result: _Result | None = None


_decoder = msgspec.json.Decoder(_Response, strict=False)

_STATE = {0: Status.QUEUED, 1: Status.RINGING, 2: Status.IN_PROGRESS}
ENDED = 3

_REASONS: dict[int, tuple[Status, HangupBy | None, str]] = {
    0: (Status.COMPLETED, "callee", "CALLED_PARTY_HUNG_UP"),
    1: (Status.COMPLETED, "caller", "CALLING_PARTY_HUNG_UP"),
    2: (Status.FAILED, None, "CALLING_PARTY_CALL_FAILED"),
    3: (Status.FAILED, None, "CALLED_PARTY_CALL_FAILED"),
    4: (Status.NO_ANSWER, None, "CALLING_PARTY_NO_ANSWER"),
    5: (Status.NO_ANSWER, None, "CALLED_PARTY_NO_ANSWER"),
    6: (Status.FAILED, None, "CALL_INITIATION_FAILED"),
}
"""The document's own reasonCode table (0-6); larger codes are Q.850 causes (its Table 4)."""

_Q850_STATUS = {
    16: Status.COMPLETED,
    31: Status.COMPLETED,
    17: Status.BUSY,
    18: Status.NO_ANSWER,
    19: Status.NO_ANSWER,
    21: Status.REJECTED,
}
_REASON_TABLES = frozenset({"default", "q850"})
_FIELDS: FieldPaths = {
    "session_id": "context.callSerialNo", "call_id": "context.callSerialNo",
    "account": "context.account", "from_number": ".caller", "to_number": ".called",
    "initiated_at": ".startTime", "ended_at": ".endTime",
}  # fmt: skip
"""Where the checked fields are; `.` paths are under `$.result`."""


def _decode(body: bytes, report: Report) -> list[CallEvent]:
    response = report.decode(_decoder, body)
    if str(response.ret_code) != "0":
        raise report.invalid(
            "$.retCode",
            f"query failed with retCode {response.ret_code!r}: {response.ret_msg or ''}",
        )
    serial_no = report.require("callSerialNo")
    result = response.result
    if result is None or result.state is None:
        raise report.invalid("$.result.state", "missing in a successful response")
    status, final, hangup_by, cause = _outcome(report, result)
    return [
        call_event(
            report,
            "$.result",
            _FIELDS,
            # account, session_id, call_id, leg, status (in call_event's order)
            text(report.context.get("account")),
            serial_no,
            serial_no,
            None,
            status,
            final=final,
            from_number=text(result.caller),
            to_number=text(result.called),
            cause=cause,
            hangup_by=hangup_by,
            initiated_at=from_epoch_ms(report, "$.result.startTime", result.start_time),
            ended_at=from_epoch_ms(report, "$.result.endTime", result.end_time),
        )
    ]


def _outcome(report: Report, result: _Result) -> tuple[Status, bool, HangupBy | None, Cause | None]:
    """Status, finality, who hung up and why, from state and reasonCode."""
    if result.state in _STATE:
        return _STATE[result.state], False, None, None
    if result.state != ENDED:
        raise report.invalid("$.result.state", f"expected 0, 1, 2 or 3, got {result.state}")
    code = result.reason_code
    if code is None:
        return Status.UNKNOWN, True, None, None
    table = report.context.get("reason_table") or "default"
    if table not in _REASON_TABLES:
        raise report.invalid("context.reason_table", f"expected 'q850' or 'default', got {table!r}")
    if table == "default" and code in _REASONS:
        status, hangup_by, label = _REASONS[code]
        return status, True, hangup_by, Cause(label=label, provider_code=str(code))
    return _Q850_STATUS.get(code, Status.FAILED), True, None, q850_cause(code, str(code))


ADAPTER = Adapter(name=PROVIDER, source="poll", decode=_decode)
