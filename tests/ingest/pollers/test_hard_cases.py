"""The simulator's hard cases, the whole way in, on a manual clock: a day of history read by
the vpbx backfill, calls of up to 3 hours, vpbx records listed up to 10 minutes late, callbacks
late, out of order and from days ago. Every call must reach calls.events and end there with its
true final status; 4.5 hours of simulated time pass in seconds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from helpers import normalizer, serving
from poll_helpers import (
    all_reach_events,
    ingress,
    metric,
    mobile_agent_settings,
    poller,
    run_clock,
    simulated,
    vpbx_settings,
    window_reads,
)

from callstream.simulate import traffic
from callstream.simulate.simulation import Scenario
from foundation.clock import ManualClock
from foundation.settings import KafkaSettings, VpbxPollSettings
from ingest.pollers.metrics import Metrics

DAY = 86_400.0
HOUR = timedelta(hours=1)
EVERY_S = 1_200.0
"""A polled call of each provider every 20 minutes: a day of history, and 20 minutes more."""
SCENARIO = Scenario(
    seed=21,
    rate=1 / EVERY_S,
    calls=int(DAY / EVERY_S) + 2,
    time_scale=1.0,
    long_calls=0.3,
    listing_lag_s=600.0,
    late_s=900.0,
    backfill=0.2,
    history_s=DAY,
)


async def test_long_calls_late_callbacks_and_backfills_all_end_with_their_true_status(
    kafka: KafkaSettings,
) -> None:
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    metrics = Metrics()
    schedule = {
        key: getattr(VpbxPollSettings(), key) for key in ("window_s", "rereads_s", "max_call_s")
    }  # the defaults: 1-minute windows read at 0, 1 min, 10 min, 1 h, 4 h
    async with (
        simulated(SCENARIO, clock=clock) as (simulation, url),
        ingress(kafka) as sender,
        serving(normalizer(kafka)),
        serving(
            poller(
                kafka,
                metrics,
                clock,
                vpbx=vpbx_settings(url, **schedule, backfill_s=DAY + 600, per_page=20),
                mobile_agent=mobile_agent_settings(url),
            )
        ),
    ):
        calls = [simulation.vpbx.call(index) for index in range(SCENARIO.calls or 0)]
        assert any(call.ended - call.started > HOUR for call in calls)
        assert any(call.ended > clock.now() for call in calls)  # going on when polling starts
        assert any(call.listed - call.ended > timedelta(minutes=5) for call in calls)
        webhooks = simulation.webhooks_to(sender, duplicates=0.1)
        await webhooks.fire(100.0, count=80, connections=8)
        registering = asyncio.create_task(traffic.register_calls(sender, simulation.mobile_agent))
        await run_clock(clock, clock.now() + 4 * HOUR + timedelta(minutes=30), 2)
        assert await registering == SCENARIO.calls
        await all_reach_events(kafka, simulation.expected())
    assert metric(metrics, "poller_expired_calls_total") == 0
    reads = window_reads(simulation.vpbx.served)
    assert len(reads) >= 2 * (DAY / 60)  # the day of history, every window of both clients
    assert max(len(ats) for ats in reads.values()) <= 5
