"""The soak benchmark's promise at a small scale: the `up` topology under callbacks while the
normalizer, the aggregator and the store are SIGKILLed and the broker is paused loses, doubles
and misfolds nothing that the ingress acknowledged. (`callstream bench soak` runs it at 2,000
callbacks/s for 120 s; this run sends 3,000 in about 15 s.)"""

from __future__ import annotations

import asyncio

import pytest
from helpers import settings_for

from callstream.bench import soak


@pytest.mark.slow
async def test_nothing_acknowledged_is_lost_doubled_or_misfolded_under_faults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The services run on the tests' group timings (the same faults strike): a killed member's
    # partitions move on within seconds, not after the default 10 s session.
    timings = settings_for("")
    monkeypatch.setenv("CALLSTREAM_KAFKA__SESSION_TIMEOUT_MS", str(timings.session_timeout_ms))
    monkeypatch.setenv(
        "CALLSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS", str(timings.heartbeat_interval_ms)
    )
    results = await asyncio.to_thread(soak.run, duration=15.0, rate=200.0)

    assert results["acknowledged"] == 3_001  # with the warm-up callback
    assert results["answers"].get("503", 0) > 0  # the pause was felt: callbacks were sent again
    assert [fault.split(": ")[1] for fault in results["faults"]] == [
        "normalizer killed",
        "aggregator killed",
        "store killed",
        f"broker paused {soak.PAUSE_S:.0f}s",
    ]
    assert results["restarts"] == {
        "ingress": 0, "normalizer": 1, "aggregator": 1, "store": 1, "alerts": 0,
    }  # fmt: skip
    assert results["events"] > results["acknowledged"]  # wavecell callbacks carry two legs
    assert (results["missing"], results["duplicated_rows"], results["wrong_sessions"]) == (0, 0, 0)
    assert results["stored"] == results["events"]
    assert results["sessions"] == results["acknowledged"]
