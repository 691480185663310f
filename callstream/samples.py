"""Realistic provider payloads, generated reproducibly from a seed.

Benchmarks and demos feed these to the pipeline; each generator follows its seed document's
shape and a plausible mix of outcomes.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

_START = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
_COUNTRIES = (("ID", "+62"), ("SG", "+65"), ("PH", "+63"), ("GB", "+44"))
_WAVECELL_B = ("Completed", "No Answer", "BUSY", "Failed", "Canceled", "COMPLETED")


def _number(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.randrange(10**9, 10**10)}"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def wavecell(rng: random.Random) -> bytes:
    """A two-leg aggregated status: callA answered, callB's outcome drawn from the table."""
    start = _START + timedelta(seconds=rng.randrange(86_400))
    b_status = rng.choice(_WAVECELL_B)
    talk = rng.randrange(5, 600) if b_status.upper() == "COMPLETED" else 0
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


def mobile_agent(rng: random.Random) -> bytes:
    """One queryCallState answer; most calls ended, a few still in progress."""
    state = rng.choice((3, 3, 3, 3, 2, 1, 0))
    start_ms = int((_START + timedelta(seconds=rng.randrange(86_400))).timestamp() * 1000)
    result: dict[str, object] = {
        "caller": str(rng.randrange(10**7, 10**8)),
        "called": str(rng.randrange(10**7, 10**8)),
        "callerPresent": "640003",
        "agentPresent": "640060",
        "state": state,
        "startTime": start_ms,
    }
    if state == 3:
        result["reasonCode"] = rng.choice((0, 0, 1, 1, 4, 5, 17, 18, 21, 34))
        result["endTime"] = start_ms + rng.randrange(5_000, 600_000)
    return msgspec.json.encode(
        {"retMsg": "Query call state successfully", "retCode": "0", "result": result}
    )


def vpbx(rng: random.Random, calls: int = 10) -> bytes:
    """One page of call records."""
    results = ("bridged", "bridged", "answered", "not answered", "busy", "rejected", "failed")
    records = []
    for _ in range(calls):
        init = _START + timedelta(seconds=rng.randrange(86_400))
        result = rng.choice(results)
        talk = rng.randrange(5, 900) if result in ("bridged", "answered") else 0
        answered = init + timedelta(seconds=8)
        records.append(
            {
                "call_uuid": str(uuid.UUID(int=rng.getrandbits(128))),
                "client_owner_id": rng.randrange(1000, 1010),
                "flow": rng.choice(("in", "out")),
                "from_username": _number(rng, "+7"),
                "to_username": str(rng.randrange(100, 200)),
                "result": result,
                "hangup_disposition": "caller_bye"
                if talk
                else rng.choice(("caller_cancel", "callee_refuse")),
                "hangup_cause": "NORMAL_CLEARING",
                "init_time_gmt": init.strftime("%Y-%m-%d %H:%M:%S"),
                "start_time_gmt": answered.strftime("%Y-%m-%d %H:%M:%S") if talk else None,
                "hangup_time_gmt": (answered + timedelta(seconds=talk)).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "duration": talk + 8,
                "bridged_duration": talk or None,
                "extension_id": rng.randrange(100, 200),
            }
        )
    return msgspec.json.encode({"calls": records, "order": "desc", "page": 1, "per_page": calls})


def voice_messaging(rng: random.Random) -> bytes:
    """A delivery callback for one call of a TTS job."""
    sent = int((_START + timedelta(seconds=rng.randrange(86_400))).timestamp())
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
