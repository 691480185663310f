"""Realistic provider payloads, generated reproducibly from a seed.

Benchmarks and demos feed these to the pipeline; each generator follows its seed document's
shape, a plausible mix of outcomes, and plausible times: how long a call takes to be answered
(or to fail), and how long it lasts, are drawn per call from log-normal distributions (most
calls short, a few long), so that `callstream stats` shows believable figures: an ASR of about
55 %, an ACD of one to two minutes, a post-dial delay (here: to the answer, as the providers
report no ringing time) of several seconds. Causes match outcomes: a busy call says USER_BUSY.
"""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

_START = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
_COUNTRIES = (("ID", "+62"), ("SG", "+65"), ("PH", "+63"), ("GB", "+44"))


def _spread(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    """A log-normal draw around `median` (`sigma`: its spread), kept within [low, high]."""
    return min(max(rng.lognormvariate(math.log(median), sigma), low), high)


def talk_s(rng: random.Random, median: float = 75.0) -> float:
    """How long an answered call lasts: median 75 s, a mean near two minutes, at most 30 min."""
    return _spread(rng, median, 1.0, 3.0, 1800.0)


def answer_s(rng: random.Random) -> float:
    """From dialling to the answer: a post-dial delay of a few seconds, then the ringing
    (median 7 s in all, rarely over 20)."""
    return _spread(rng, 2.5, 0.4, 1.0, 10.0) + _spread(rng, 4.5, 0.6, 1.0, 40.0)


_WAVECELL_B = (
    # (weight, callB status as Wavecell writes it, seconds from dialling to the end of a call
    # that is not answered: median, spread)
    (50, "Completed", None),
    (5, "COMPLETED", None),  # the spelling varies
    (17, "No Answer", (30.0, 0.2)),
    (9, "BUSY", (4.0, 0.3)),
    (9, "Failed", (2.0, 0.5)),
    (10, "Canceled", (12.0, 0.5)),
)
_WAVECELL_WEIGHTS = [weight for weight, *_ in _WAVECELL_B]


def _number(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.randrange(10**9, 10**10)}"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def wavecell(rng: random.Random, at: datetime | None = None) -> bytes:
    """A two-leg aggregated status: callA (the caller, answered by the platform at once),
    callB (the called party) with an outcome drawn from the table and its own times.

    `at`: when the call ended and the report is sent (live traffic); by default a moment of a
    fixed day, so that the same seed gives the same bytes.
    """
    _, b_status, unanswered = rng.choices(_WAVECELL_B, _WAVECELL_WEIGHTS)[0]
    dialled = 1 + (round(answer_s(rng)) if unanswered is None else 0)
    talk = round(talk_s(rng)) if unanswered is None else 0
    total = dialled + talk if unanswered is None else 1 + round(_spread(rng, *unanswered, 1, 60))
    start = _START + timedelta(seconds=rng.randrange(86_400))
    if at is not None:
        start = at - timedelta(seconds=total)
    end = start + timedelta(seconds=total)
    country, prefix = rng.choice(_COUNTRIES)

    def leg(
        direction: str | int, source: str, target: str, status: str, times: tuple[int, int | None]
    ) -> dict:
        initiated, connected = times
        data = {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "direction": direction,
            "type": "PSTN",
            "numberReferenceId": f"Number_pool_{rng.randrange(10_000)}",
            "initiatedTimestamp": _iso(start + timedelta(seconds=initiated)),
            "disconnectedTimestamp": _iso(end),
            "source": source,
            "target": target,
            "sourceCountryCode": country,
            "targetCountryCode": country,
            "status": status,
            "duration": 0 if connected is None else total - connected,
        }
        if connected is not None:
            data["connectedTimestamp"] = _iso(start + timedelta(seconds=connected))
        return data

    caller, masked, callee = (_number(rng, prefix) for _ in range(3))
    b_times = (1, dialled if unanswered is None else None)
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
                "callA": leg("Inbound", caller, masked, "Completed", (0, 0)),
                "callB": leg(rng.choice(("Outbound", 1)), masked, callee, b_status, b_times),
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
    # (weight, states after 0, reasonCodes, ringing s (median, spread), talking)
    (55, (1, 2, 3), (0, 0, 1), (6.0, 0.6), True),  # answered, then someone hangs up
    (17, (1, 3), (5, 4), (30.0, 0.2), False),  # not answered
    (9, (1, 3), (17,), (4.0, 0.3), False),  # busy (a Q.850 cause)
    (7, (1, 3), (21,), (8.0, 0.5), False),  # rejected
    (7, (3,), (6, 3, 34), None, False),  # the call could not be made
    (5, (1, 2, 3), (None,), (6.0, 0.6), True),  # ended, and no reason reported
)
_MOBILE_AGENT_WEIGHTS = [outcome[0] for outcome in _MOBILE_AGENT_OUTCOMES]


def mobile_agent_call(rng: random.Random, long_talk_s: float | None = None) -> MobileAgentCall:
    """A call with a realistic outcome: its states 0 → (1 → (2 →)) 3 and when each comes;
    `long_talk_s`, if the call is answered, replaces its drawn talk time (a long-tail call).

    (queryCallState reports when a call started and ended, not when it was answered: its
    calls have no talk time, so no ACD, whatever their durations.)
    """
    _, after, reasons, ringing, talks = rng.choices(_MOBILE_AGENT_OUTCOMES, _MOBILE_AGENT_WEIGHTS)[
        0
    ]
    at = _spread(rng, 1.5, 0.5, 0.5, 5.0)  # waiting to be called
    states = [(0, 0.0)]
    for state in after:
        states.append((state, at))
        if state == 1:
            at += _spread(rng, *ringing, 1.0, 60.0)
        elif state == 2 and talks:
            drawn = talk_s(rng)  # drawn either way: the rest of the call stays the same
            at += drawn if long_talk_s is None else long_talk_s
        else:
            at += _spread(rng, 1.0, 0.5, 0.2, 5.0)
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


_VPBX_OUTCOMES = (
    # (weight, result, how it ended: [(weight, hangup_disposition, hangup_cause)], seconds
    # from dialling to the end when not answered: median, spread)
    (40, "bridged", [(3, "caller_bye", "NORMAL_CLEARING"), (2, "callee_bye", "NORMAL_CLEARING")],
     None),
    (15, "answered", [(1, "caller_bye", "NORMAL_CLEARING"), (1, "callee_bye", "NORMAL_CLEARING")],
     None),
    (17, "not answered", [(3, "", "NO_ANSWER"), (2, "caller_cancel", "ORIGINATOR_CANCEL")],
     (25.0, 0.3)),
    (9, "busy", [(1, "callee_refuse", "USER_BUSY")], (3.0, 0.3)),
    (7, "rejected", [(1, "callee_refuse", "CALL_REJECTED")], (5.0, 0.5)),
    (12, "failed", [(2, "internal_cancel", "UNALLOCATED_NUMBER"),
                    (1, "internal_cancel", "NO_ROUTE_DESTINATION"),
                    (1, "internal_cancel", "NORMAL_TEMPORARY_FAILURE"),
                    (1, "internal_cancel", "RECOVERY_ON_TIMER_EXPIRE")], (2.0, 0.5)),
)  # fmt: skip
_VPBX_WEIGHTS = [weight for weight, *_ in _VPBX_OUTCOMES]
VPBX_TIME = "%Y-%m-%d %H:%M:%S"
"""How vpbx writes times (GMT), in records and in the window filters."""


def vpbx_call(
    rng: random.Random,
    init: datetime,
    client_owner_id: int | str,
    time_scale: float = 1.0,
    long_talk_s: float | None = None,
) -> tuple[dict[str, object], datetime]:
    """One call record that started at `init`, and when it ended. `time_scale` shrinks all its
    times alike (a simulation that runs faster than life: the post-dial delay shrinks too).
    `long_talk_s`, if the call is answered, replaces its drawn talk time (a long-tail call)."""
    _, result, endings, unanswered = rng.choices(_VPBX_OUTCOMES, _VPBX_WEIGHTS)[0]
    _, disposition, cause = rng.choices(endings, [weight for weight, *_ in endings])[0]
    if unanswered is None:
        ringing = timedelta(seconds=round(answer_s(rng) * time_scale))
        drawn = talk_s(rng)  # drawn either way: the rest of the call stays the same
        talk = round((drawn if long_talk_s is None else long_talk_s) * time_scale) or 1
    else:
        ringing = timedelta(seconds=round(_spread(rng, *unanswered, 1.0, 60.0) * time_scale))
        talk = 0
    answered = init + ringing
    ended = answered + timedelta(seconds=talk)
    record = {
        "call_uuid": str(uuid.UUID(int=rng.getrandbits(128))),
        "client_owner_id": client_owner_id,
        "flow": rng.choice(("in", "out")),
        "from_username": _number(rng, "+7"),
        "to_username": str(rng.randrange(100, 200)),
        "result": result,
        "hangup_disposition": disposition,
        "hangup_cause": cause,
        "init_time_gmt": init.strftime(VPBX_TIME),
        "start_time_gmt": answered.strftime(VPBX_TIME) if talk else None,
        "hangup_time_gmt": ended.strftime(VPBX_TIME),
        "duration": round((ended - init).total_seconds()),
        "bridged_duration": talk or None,
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


_VOICE_MESSAGING = (
    # (weight, status, error_code): delivered, not delivered (no answer, busy), rejected,
    # accepted and not yet called
    (60, "DELIVRD", 0),
    (14, "UNDELIV", 4017),
    (7, "UNDELIV", 4019),
    (7, "REJECTD", 3003),
    (12, "ACCEPTD", None),
)
_VOICE_MESSAGING_WEIGHTS = [weight for weight, *_ in _VOICE_MESSAGING]


def voice_messaging(rng: random.Random, at: datetime | None = None) -> bytes:
    """A delivery callback for one call of a TTS job; `at` as for `wavecell`. A delivered
    message is listened to for a while (median 35 s): messages are short."""
    sent = int((_START + timedelta(seconds=rng.randrange(86_400))).timestamp())
    if at is not None:
        sent = int(at.timestamp())
    _, status, code = rng.choices(_VOICE_MESSAGING, _VOICE_MESSAGING_WEIGHTS)[0]
    talk = round(talk_s(rng, median=35.0)) if status == "DELIVRD" else 0
    ringing = round(_spread(rng, 6.0, 0.6, 1.0, 40.0)) if status == "DELIVRD" else 30
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
        "ring_date": sent - talk - ringing if status in ("DELIVRD", "UNDELIV") else False,
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
