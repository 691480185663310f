"""The vpbx re-read schedule against the simulated API and the real broker, on a manual clock:
hours of simulated time pass in seconds, and nothing waits for real time to pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
from aiohttp import web
from helpers import eventually, normalizer, serving
from poll_helpers import (
    all_reach_events,
    metric,
    of,
    poller,
    run_clock,
    simulated,
    sync,
    vpbx_settings,
    window_reads,
)

from callstream.simulate.simulation import Scenario
from foundation import kafka as kafka_io
from foundation.clock import ManualClock
from foundation.settings import KafkaSettings, VpbxPollSettings
from ingest.pollers.metrics import Metrics
from schemas import topics
from schemas.raw import read_raw_headers
from schemas.records import Checkpoint

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
OLD_REACH = timedelta(minutes=6)
"""Before the schedule, a window was read once, when over, from 5 minutes before its start: a
call was in no read made more than 6 minutes (overlap and window) after it started."""
CLIENTS = len(Scenario().clients)
OFFSETS = (timedelta(0), MINUTE, 10 * MINUTE, HOUR, 4 * HOUR)


def _settings(url: str, **overrides: object) -> VpbxPollSettings:
    """The default schedule (1-minute windows, re-reads at 1 min, 10 min, 1 h and 4 h)."""
    defaults = msgspec.structs.asdict(VpbxPollSettings())
    schedule = {key: defaults[key] for key in ("window_s", "rereads_s", "max_call_s")}
    return vpbx_settings(url, **(schedule | {"backfill_s": 0.0, "per_page": 20} | overrides))


async def _checkpoints(kafka: KafkaSettings) -> dict[bytes, Checkpoint]:
    records = await kafka_io.read_all(kafka, topics.CHECKPOINTS)
    return {r.key: msgspec.json.decode(r.value, type=Checkpoint) for r in records if r.key}


async def test_a_call_longer_than_the_old_overlap_is_read_by_a_reread(
    kafka: KafkaSettings,
) -> None:
    """Calls of up to 3 hours: each is read by the first read after it ended, a re-read, where
    the old overlap read none that lasted more than 6 minutes."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    scenario = Scenario(seed=11, rate=0.2, calls=40, time_scale=1.0, long_calls=0.5)
    metrics = Metrics()
    async with (
        simulated(scenario, clock.now(), clock) as (simulation, url),
        serving(normalizer(kafka)),
        serving(poller(kafka, metrics, clock, vpbx=_settings(url))),
    ):
        calls = [simulation.vpbx.call(index) for index in range(40)]
        long = [call for call in calls if call.ended - call.started > OLD_REACH]
        assert len(long) >= 5
        assert max(call.ended - call.started for call in calls) > HOUR
        await run_clock(clock, clock.now() + 4 * HOUR + 10 * MINUTE, CLIENTS)
        await all_reach_events(kafka, of("vpbx", simulation.expected()))
    first_read = {}
    for record in await kafka_io.read_all(kafka, topics.RAW):
        meta = read_raw_headers(record.headers)
        for call in msgspec.json.decode(record.value)["calls"]:
            first_read.setdefault(call["call_uuid"], meta)
    for call in long:
        meta = first_read[call.record["call_uuid"]]
        assert meta.received_at >= call.ended
        assert meta.received_at > call.started + OLD_REACH
        assert meta.received_at >= datetime.fromisoformat(meta.context["window_end"]) + MINUTE
    first = metric(metrics, "poller_window_reads_total", provider="vpbx", read="first")
    again = metric(metrics, "poller_window_reads_total", provider="vpbx", read="reread")
    assert first >= CLIENTS * 4 * 60
    assert again <= 4 * first
    reads = window_reads(simulation.vpbx.served)
    assert max(len(ats) for ats in reads.values()) == 5


async def test_a_poller_restarted_mid_schedule_neither_skips_nor_repeats_a_reread(
    kafka: KafkaSettings,
) -> None:
    """The first run is stopped 31 minutes in, after a window's first read and while its
    10-minute re-reads are held by the API: the checkpoint keeps them pending. The second run
    starts 5 minutes later: every window still has each read of the schedule, at most the
    downtime late, and none more than once per offset."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    start = clock.now()
    scenario = Scenario(seed=12, rate=0.05, calls=40, time_scale=1.0, long_calls=0.3)
    first, second = Metrics(), Metrics()
    held: list[datetime] = []
    release = asyncio.Event()

    async def hold_rereads(_client: str, since: datetime, _until: datetime) -> None:
        if since < clock.now() - 5 * MINUTE:
            held.append(since)
            await release.wait()
            raise web.HTTPServiceUnavailable  # answered after the poller stopped: not served

    async with (
        simulated(scenario, start, clock) as (simulation, url),
        serving(normalizer(kafka)),
    ):
        async with serving(poller(kafka, first, clock, vpbx=_settings(url))):
            await run_clock(clock, start + 30 * MINUTE, CLIENTS)
            simulation.vpbx.gate = hold_rereads
            clock.advance(start + 31 * MINUTE)
            await eventually(sync(lambda: len(held) == CLIENTS), "the 10-minute re-reads held")
        checkpoints = await _checkpoints(kafka)
        release.set()
        simulation.vpbx.gate = None
        clock.advance(5 * MINUTE)
        async with serving(poller(kafka, second, clock, vpbx=_settings(url))):
            await run_clock(clock, start + 31 * MINUTE + 4 * HOUR + 5 * MINUTE, CLIENTS)
            await all_reach_events(kafka, of("vpbx", simulation.expected()))

    assert held == [start + 20 * MINUTE] * CLIENTS
    for checkpoint in checkpoints.values():
        assert checkpoint.until == start + 31 * MINUTE
        assert {r.after_s: r.until for r in checkpoint.rereads} == {
            60.0: start + 30 * MINUTE,
            600.0: start + 20 * MINUTE,  # [20, 21) pending: held when the run stopped
            3_600.0: start,
            14_400.0: start,
        }
    reads = window_reads(simulation.vpbx.served)
    late = 5 * MINUTE + MINUTE  # the downtime, and a window
    for client in Scenario().clients:
        for end in (start + n * MINUTE for n in range(1, 32)):
            ats = sorted(reads[client, end])
            assert len(ats) <= len(OFFSETS), (client, end, ats)  # no read repeated
            for offset in OFFSETS:  # no read skipped
                assert any(end + offset <= at <= end + offset + late for at in ats), (
                    client, end, offset, ats,
                )  # fmt: skip
        assert reads[client, start + 21 * MINUTE] == [
            start + 21 * MINUTE,
            start + 22 * MINUTE,
            start + 36 * MINUTE,  # the held re-read, done at once by the second run
            start + 81 * MINUTE,
            start + 261 * MINUTE,
        ]
    assert metric(second, "poller_window_reads_total", provider="vpbx", read="reread") > 0
