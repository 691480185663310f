"""Realistic provider payloads, generated reproducibly from a seed.

Benchmarks and demos feed these to the pipeline; each generator follows its seed document's
shape and a plausible mix of outcomes.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

_START = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
_COUNTRIES = (("ID", "+62"), ("SG", "+65"), ("PH", "+63"), ("GB", "+44"))
_WAVECELL_B = ("Completed", "No Answer", "BUSY", "Failed", "Canceled", "COMPLETED")


def _number(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.randrange(10**9, 10**10)}"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def wavecell(rng: random.Random, at: datetime | None = None) -> bytes:
    """A two-leg aggregated status: callA answered, callB's outcome drawn from the table.

    `at`: when the call ended and the report is sent (live traffic); by default a moment of a
    fixed day, so that the same seed gives the same bytes.
    """
    start = _START + timedelta(seconds=rng.randrange(86_400))
    b_status = rng.choice(_WAVECELL_B)
    talk = rng.randrange(5, 600) if b_status.upper() == "COMPLETED" else 0
    if at is not None:
        start = at - timedelta(seconds=talk + 20)
    end = start + timedelta(seconds=talk + 20)
    country, prefix = rng.choice(_COUNTRIES)

    def leg(direction: str | int, source: str, target: str, status: str, duration: int) -> dict:
        return {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "direction": direction,
            "type": "PSTN",
            "numberReferenceId": f"Number_pool_{rng.randrange(10_000)}",
            "initiatedTimestamp": _iso(start),
            "connectedTimestamp": _iso(start + timedelta(seconds=15)),
            "disconnectedTimestamp": _iso(end),
            "source": source,
            "target": target,
            "sourceCountryCode": country,
            "targetCountryCode": country,
            "status": status,
            "duration": duration,
        }

    caller, masked, callee = (_number(rng, prefix) for _ in range(3))
    return msgspec.json.encode(
        {
            "sessionId": str(uuid.UUID(int=rng.getrandbits(128))),
            "subAccountId": f"account_{rng.randrange(20)}",
            "status": b_status,
            "startTime": _iso(start),
            "endTime": _iso(end),
            "lastAction": "MakeCall",
            "callCount": 2,
            "details": {
                "callA": leg("Inbound", caller, masked, "Completed", talk + 20),
                "callB": leg(rng.choice(("Outbound", 1)), masked, callee, b_status, talk),
            },
        }
    )


class MobileAgentCall(NamedTuple):
    """One call's life as queryCallState reports it: the states it passes and when."""

    caller: str
    called: str
    states: tuple[tuple[int, float], ...]
    """(state, seconds after the call was placed when it is reached), in order; the last is 3."""
    reason_code: int | None


_MOBILE_AGENT_OUTCOMES = (
    # (weight, states after 0, reasonCodes, ringing s, talking s)
    (5, (1, 2, 3), (0, 0, 1), (3, 15), (5, 600)),  # answered, then someone hangs up
    (2, (1, 3), (5, 4), (20, 45), None),  # not answered
    (1, (1, 3), (17,), (1, 3), None),  # busy (a Q.850 cause)
    (1, (1, 3), (21,), (2, 10), None),  # rejected
    (1, (3,), (6, 3, 34), None, None),  # the call could not be made
    (1, (1, 2, 3), (None,), (3, 15), (5, 120)),  # ended, and no reason reported
)
_MOBILE_AGENT_WEIGHTS = [outcome[0] for outcome in _MOBILE_AGENT_OUTCOMES]


def mobile_agent_call(rng: random.Random, talk_s: float | None = None) -> MobileAgentCall:
    """A call with a realistic outcome: its states 0 → (1 → (2 →)) 3 and when each comes;
    `talk_s`, if the call is answered, replaces its drawn talk time (a long-tail call)."""
    _, after, reasons, ringing, talking = rng.choices(
        _MOBILE_AGENT_OUTCOMES, _MOBILE_AGENT_WEIGHTS
    )[0]
    at = rng.uniform(0.5, 3.0)  # waiting to be called
    states = [(0, 0.0)]
    for state in after:
        states.append((state, at))
        drawn = rng.uniform(*(ringing if state == 1 else talking or (0, 0)))
        at += talk_s if state == 2 and talk_s is not None else drawn
    return MobileAgentCall(
        caller=str(rng.randrange(10**7, 10**8)),
        called=str(rng.randrange(10**7, 10**8)),
        states=tuple(states),
        reason_code=rng.choice(reasons),
    )


def mobile_agent_answer(
    call: MobileAgentCall, state: int, placed_ms: int, time_scale: float = 1.0
) -> bytes:
    """queryCallState's answer for `call` in `state` (one of its states), placed at `placed_ms`;
    `time_scale` shrinks its durations (a simulation that runs faster than life)."""
    reached = dict(call.states)
    result: dict[str, object] = {
        "caller": call.caller,
        "called": call.called,
        "callerPresent": "640003",
        "agentPresent": "640060",
        "state": state,
    }
    if state > 0:
        result["startTime"] = placed_ms + round(call.states[1][1] * time_scale * 1000)
    if state == 3:
        if call.reason_code is not None:
            result["reasonCode"] = call.reason_code
        result["endTime"] = placed_ms + round(reached[3] * time_scale * 1000)
    return msgspec.json.encode(
        {"retMsg": "Query call state successfully", "retCode": "0", "result": result}
    )


def mobile_agent(rng: random.Random) -> bytes:
    """One queryCallState answer; most calls ended, a few still in progress."""
    placed_ms = int((_START + timedelta(seconds=rng.randrange(86_400))).timestamp() * 1000)
    call = mobile_agent_call(rng)
    states = [state for state, _ in call.states]
    return mobile_agent_answer(call, rng.choice((*[states[-1]] * 4, *states[:-1])), placed_ms)


_VPBX_RESULTS = ("bridged", "bridged", "answered", "not answered", "busy", "rejected", "failed")
VPBX_TIME = "%Y-%m-%d %H:%M:%S"
"""How vpbx writes times (GMT), in records and in the window filters."""


def vpbx_call(
    rng: random.Random,
    init: datetime,
    client_owner_id: int | str,
    time_scale: float = 1.0,
    talk_s: float | None = None,
) -> tuple[dict[str, object], datetime]:
    """One call record that started at `init`, and when it ended; `time_scale` shrinks its
    durations (a simulation that runs faster than life); `talk_s`, if the call is answered,
    replaces its drawn talk time (a long-tail call)."""
    result = rng.choice(_VPBX_RESULTS)
    talk = 0.0
    if result in ("bridged", "answered"):
        drawn = rng.randrange(5, 900)
        talk = (drawn if talk_s is None else talk_s) * time_scale
    answered = init + timedelta(seconds=8 * time_scale)
    ended = answered + timedelta(seconds=talk)
    record = {
        "call_uuid": str(uuid.UUID(int=rng.getrandbits(128))),
        "client_owner_id": client_owner_id,
        "flow": rng.choice(("in", "out")),
        "from_username": _number(rng, "+7"),
        "to_username": str(rng.randrange(100, 200)),
        "result": result,
        "hangup_disposition": "caller_bye"
        if talk
        else rng.choice(("caller_cancel", "callee_refuse")),
        "hangup_cause": "NORMAL_CLEARING",
        "init_time_gmt": init.strftime(VPBX_TIME),
        "start_time_gmt": answered.strftime(VPBX_TIME) if talk else None,
        "hangup_time_gmt": ended.strftime(VPBX_TIME),
        "duration": round(talk + 8 * time_scale),
        "bridged_duration": round(talk) or None,
        "extension_id": rng.randrange(100, 200),
    }
    return record, ended


def vpbx_page(records: list[dict[str, object]], page: int, per_page: int, order: str) -> bytes:
    """A page of GET /client/{client_id}/calls/ as the document describes its answer."""
    return msgspec.json.encode(
        {"calls": records, "order": order, "page": page, "per_page": per_page}
    )


def vpbx(rng: random.Random, calls: int = 10) -> bytes:
    """One page of call records."""
    records = [
        vpbx_call(
            rng, _START + timedelta(seconds=rng.randrange(86_400)), rng.randrange(1000, 1010)
        )[0]
        for _ in range(calls)
    ]
    return vpbx_page(records, 1, calls, "desc")


def voice_messaging(rng: random.Random, at: datetime | None = None) -> bytes:
    """A delivery callback for one call of a TTS job; `at` as for `wavecell`."""
    sent = int((_START + timedelta(seconds=rng.randrange(86_400))).timestamp())
    if at is not None:
        sent = int(at.timestamp())
    status, code = rng.choice(
        (
            ("DELIVRD", 0),
            ("DELIVRD", 0),
            ("UNDELIV", 4017),
            ("UNDELIV", 4019),
            ("REJECTD", 3003),
            ("ACCEPTD", None),
        )
    )
    talk = rng.randrange(5, 120) if status == "DELIVRD" else 0
    call = {
        "type": "voice",
        "message_id": str(rng.randrange(10**20, 10**21)),
        "status": status,
        "timestamp": sent,
        "micro_timestamp": sent * 1000,
        "to": _number(rng, "356"),
        "from": "35655555551",
        "client_message_id": "",
        "job_type": "TTS",
        "ring_date": sent - talk - 20 if status != "REJECTD" else False,
        "answer_date": sent - talk if talk else False,
        "hang_date": sent if status in ("DELIVRD", "UNDELIV") else False,
        "actual_duration": talk,
        "billed_duration": -(-talk // 60) * 60,
    }
    if code is not None:
        call["error_code"] = code
    return msgspec.json.encode(
        {"api_job_id": str(uuid.UUID(int=rng.getrandbits(128))), "data": [call]}
    )


def voice_messaging_reports(rng: random.Random, at: datetime) -> list[bytes]:
    """The callbacks of one call of a TTS job, in the order they are made: ACCEPTD once it
    rings, then its outcome at `at` (only the ACCEPTD if that is all it reached)."""
    outcome = voice_messaging(rng, at)
    callback = msgspec.json.decode(outcome)
    (call,) = callback["data"]
    if call["status"] == "ACCEPTD" or call["ring_date"] is False:
        return [outcome]
    call = {
        **{key: value for key, value in call.items() if key != "error_code"},
        "status": "ACCEPTD",
        "timestamp": call["ring_date"],
        "micro_timestamp": call["ring_date"] * 1000,
        "answer_date": False,
        "hang_date": False,
        "actual_duration": 0,
        "billed_duration": 0,
    }
    return [msgspec.json.encode({**callback, "data": [call]}), outcome]


CALLBACKS = {"wavecell": wavecell, "voice_messaging": voice_messaging}
"""The webhook providers' generators: they take the moment the callback is sent."""

GENERATORS = {
    "wavecell": wavecell,
    "mobile_agent": mobile_agent,
    "vpbx": vpbx,
    "voice_messaging": voice_messaging,
}


def payloads(provider: str, count: int, seed: int = 0) -> list[bytes]:
    """`count` payloads of `provider`, the same for the same seed."""
    rng = random.Random(f"{provider}:{seed}")
    make = GENERATORS[provider]
    return [make(rng) for _ in range(count)]
