"""Wavecell aggregated call status (webhook): one final report per session, legs callA and callB.

Seed: 000 (Wavecell). One event per leg present in `details`; every report is final.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from normalize.report import Adapter, FieldPaths, Report, call_event, folded, lookup, text, utc
from schemas import CallEvent, Direction, Leg, Network, Status

PROVIDER = "wavecell"


class _Leg(msgspec.Struct, rename="camel", gc=False):
    id: str
    status: str | None = None
    direction: int | str | None = None
    type: str | None = None
    initiated_timestamp: datetime | None = None
    connected_timestamp: datetime | None = None
    disconnected_timestamp: datetime | None = None
    source: str | None = None
    target: str | None = None
    source_country_code: str | None = None
    target_country_code: str | None = None
    duration: int | None = None


class _Details(msgspec.Struct, rename="camel", gc=False):
    call_a: _Leg | None = None
    call_b: _Leg | None = None


class _Session(msgspec.Struct, rename="camel", gc=False):
    session_id: str
    details: _Details
    sub_account_id: str | None = None
    end_time: datetime | None = None


_decoder = msgspec.json.Decoder(_Session, strict=False)

_NO_LEG = "null"
_STATUS: dict[str, Status | str] = folded(
    {
        "COMPLETED": Status.COMPLETED,
        "NO ANSWER": Status.NO_ANSWER,
        "BUSY": Status.BUSY,
        "FAILED": Status.FAILED,
        "CANCELED": Status.CANCELED,
        "CANCELLED": Status.CANCELED,
        "NULL": _NO_LEG,
        "NONE": _NO_LEG,
        "": _NO_LEG,
    }
)
"""Leg status words; NULL means 'there was no such leg' (the table's COMPLETED / NULL row)."""

_DIRECTION: dict[int | str, Direction] = {
    0: "inbound", 1: "outbound", "0": "inbound", "1": "outbound",
    **folded({"INBOUND": "inbound", "OUTBOUND": "outbound"}),
}  # fmt: skip
_PATH: dict[str, str] = {"a": "$.details.callA", "b": "$.details.callB"}
_FIELDS: FieldPaths = {
    "session_id": "$.sessionId", "account": "$.subAccountId", "reported_at": "$.endTime",
    "call_id": ".id", "from_number": ".source", "to_number": ".target",
    "initiated_at": ".initiatedTimestamp", "answered_at": ".connectedTimestamp",
    "ended_at": ".disconnectedTimestamp", "duration_s": ".duration",
}  # fmt: skip
"""Where the checked fields are; `.` paths are under the leg's `_PATH`."""
_NETWORK: dict[str, Network] = folded({"PSTN": "pstn", "VOIP": "voip", "VoIP": "voip"})


def _decode(body: bytes, report: Report) -> list[CallEvent]:
    session = report.decode(_decoder, body)
    events = []
    for leg, data in (("a", session.details.call_a), ("b", session.details.call_b)):
        if data is None:
            continue
        status = lookup(_STATUS, data.status or "")
        if status is None:
            raise report.invalid(f"{_PATH[leg]}.status", f"unknown leg status {data.status!r}")
        if status is not _NO_LEG:
            events.append(_leg_event(report, session, leg, data, status))
    return events


def _leg_event(
    report: Report, session: _Session, leg: Leg, data: _Leg, status: Status
) -> CallEvent:
    path = _PATH[leg]
    answered_at = utc(report, path, "connectedTimestamp", data.connected_timestamp)
    return call_event(
        report,
        path,
        _FIELDS,
        # account, session_id, call_id, leg, status (in call_event's order)
        text(session.sub_account_id),
        session.session_id,
        data.id,
        leg,
        status,  # final, as every status of the table is
        direction=_direction(report, leg, data.direction),
        network=_network(report, leg, data.type),
        from_number=text(data.source),
        to_number=text(data.target),
        from_country=_country(data.source_country_code),
        to_country=_country(data.target_country_code),
        initiated_at=utc(report, path, "initiatedTimestamp", data.initiated_timestamp),
        answered_at=answered_at if status is Status.COMPLETED else None,
        ended_at=utc(report, path, "disconnectedTimestamp", data.disconnected_timestamp),
        duration_s=data.duration,
        reported_at=utc(report, "$", "endTime", session.end_time),
    )


def _direction(report: Report, leg: Leg, value: int | str | None) -> Direction | None:
    if value is None or value == "":
        return None
    direction = _DIRECTION.get(value)
    if direction is None and isinstance(value, str):
        direction = lookup(_DIRECTION, value)  # type: ignore[arg-type]
    if direction is None:
        raise report.invalid(
            f"{_PATH[leg]}.direction", f"expected 0, 1, Inbound or Outbound, got {value!r}"
        )
    return direction


def _network(report: Report, leg: Leg, value: str | None) -> Network | None:
    if not value:
        return None
    network = lookup(_NETWORK, value)
    if network is None:
        raise report.invalid(f"{_PATH[leg]}.type", f"expected PSTN or VoIP, got {value!r}")
    return network


def _country(code: str | None) -> str | None:
    return code.upper() if code else None


ADAPTER = Adapter(name=PROVIDER, source="webhook", decode=_decode)
