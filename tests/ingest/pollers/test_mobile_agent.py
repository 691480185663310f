"""The mobile_agent poller against the simulated API and the real broker: tracked calls."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from helpers import eventually, normalizer, serving
from poll_helpers import (
    all_reach_events,
    ingress,
    metric,
    mobile_agent_settings,
    of,
    poller,
    simulated,
    sync,
    track_records,
)

from callstream.simulate import traffic
from callstream.simulate.faults import Faults
from callstream.simulate.simulation import Scenario
from foundation import kafka as kafka_io
from foundation.clock import ManualClock
from foundation.settings import (
    KafkaSettings,
    MobileAgentPollSettings,
    PollSettings,
    Secret,
    SettingsError,
)
from ingest.pollers import service
from ingest.pollers.metrics import Metrics
from schemas import topics
from schemas.raw import read_raw_headers


async def test_tracked_calls_survive_a_restart_and_each_state_is_published(
    kafka: KafkaSettings,
) -> None:
    """Calls registered once; the poller is stopped with calls half-way and another instance
    takes over from calls.track alone."""
    scenario = Scenario(seed=5, rate=50.0, calls=20, time_scale=0.003)
    first, second = Metrics(), Metrics()
    async with (
        simulated(scenario) as (simulation, url),
        ingress(kafka) as sender,
        serving(normalizer(kafka)),
    ):
        assert await traffic.register_calls(sender, simulation.mobile_agent) == 20
        slowly = mobile_agent_settings(url, interval_s=0.3)  # a call takes 4 polls or so
        async with serving(poller(kafka, first, mobile_agent=slowly)):

            async def some_published() -> bool:
                published = metric(first, "poller_published_records_total", provider="mobile_agent")
                return published >= 25

            await eventually(some_published, "a first share of the states published")
        restored = {key for key, value in (await track_records(kafka)).items() if value}
        assert restored  # calls still tracked when the first instance stopped
        async with serving(poller(kafka, second, mobile_agent=mobile_agent_settings(url))):
            await all_reach_events(kafka, of("mobile_agent", simulation.expected()))
            await eventually(sync(lambda: metric(second, "poller_tracked_calls") == 0), "ended")
    assert set((await track_records(kafka)).values()) == {None}  # every tracking ended
    assert metric(second, "poller_published_records_total", provider="mobile_agent") > 0
    raw = await kafka_io.read_all(kafka, topics.RAW)
    contexts = [read_raw_headers(record.headers).context for record in raw]
    assert {c["callSerialNo"] for c in contexts} == {
        simulation.mobile_agent.serial(i) for i in range(20)
    }


async def test_a_call_not_ended_by_its_deadline_is_no_longer_polled(kafka: KafkaSettings) -> None:
    scenario = Scenario(calls=3, rate=10.0, time_scale=1.0)  # calls last seconds to minutes
    metrics = Metrics()
    settings = mobile_agent_settings
    async with simulated(scenario) as (simulation, url), ingress(kafka) as sender:
        await traffic.register_calls(sender, simulation.mobile_agent)
        async with serving(
            poller(
                kafka, metrics, mobile_agent=settings(url, max_call_s=0.3, setup_allowance_s=0.2)
            )
        ):
            await eventually(sync(lambda: metric(metrics, "poller_expired_calls_total") == 3), "")
            asked = metric(metrics, "poller_requests_total", provider="mobile_agent", outcome="ok")
            await asyncio.sleep(0.3)
            after = metric(metrics, "poller_requests_total", provider="mobile_agent", outcome="ok")
    assert after == asked
    assert set((await track_records(kafka)).values()) == {None}
    raw = await kafka_io.read_all(kafka, topics.RAW)
    assert {read_raw_headers(r.headers).context["callSerialNo"] for r in raw} == {
        simulation.mobile_agent.serial(i) for i in range(3)
    }  # each asked once at least: its state then is published
    assert all(b'"state":3' not in r.value for r in raw)


async def test_a_call_longer_than_the_old_two_hour_deadline_is_followed_to_its_end(
    kafka: KafkaSettings,
) -> None:
    """Calls of up to 2.5 hours, on a manual clock moved 15 minutes at a time: the deadline,
    MAX_CALL_S + SETUP_ALLOWANCE_S (4 h 15 min), lets every one be polled to state 3, where
    the old 2 hours dropped the longest."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    scenario = Scenario(seed=4, rate=10.0, calls=6, time_scale=1.0, long_calls=1.0)
    metrics = Metrics()
    assert MobileAgentPollSettings().deadline_s == 4 * 3_600 + 15 * 60
    async with (
        simulated(scenario, clock.now(), clock) as (simulation, url),
        ingress(kafka) as sender,
        serving(normalizer(kafka)),
        serving(poller(kafka, metrics, clock, mobile_agent=mobile_agent_settings(url))),
    ):
        ends = [simulation.mobile_agent.life(index).states[-1][1] for index in range(6)]
        assert max(ends) > 2.5 * 3_600
        clock.advance(timedelta(seconds=1))  # all 6 placed
        assert await traffic.register_calls(sender, simulation.mobile_agent) == 6
        for _ in range(12):  # 3 hours
            asked = metric(metrics, "poller_requests_total", provider="mobile_agent", outcome="ok")

            async def asked_again(before: float = asked) -> bool:
                ok = metric(metrics, "poller_requests_total", provider="mobile_agent", outcome="ok")
                return ok >= before + metric(metrics, "poller_tracked_calls")

            await eventually(asked_again, "every call still tracked asked again")
            clock.advance(timedelta(minutes=15))
        await all_reach_events(kafka, of("mobile_agent", simulation.expected()))
        await eventually(sync(lambda: metric(metrics, "poller_tracked_calls") == 0), "ended")
    assert metric(metrics, "poller_expired_calls_total") == 0


async def test_a_failed_query_is_counted_and_asked_again_never_published(
    kafka: KafkaSettings,
) -> None:
    scenario = Scenario(calls=10, rate=50.0, time_scale=0.003, faults=Faults(rate_ret_code=0.5))
    metrics = Metrics()
    async with (
        simulated(scenario) as (simulation, url),
        ingress(kafka) as sender,
        serving(normalizer(kafka)),
        serving(poller(kafka, metrics, mobile_agent=mobile_agent_settings(url))),
    ):
        await traffic.register_calls(sender, simulation.mobile_agent)
        await all_reach_events(kafka, of("mobile_agent", simulation.expected()))
    assert metric(metrics, "poller_failed_queries_total", ret_code="1") > 0
    raw = await kafka_io.read_all(kafka, topics.RAW)
    assert all(b'"retCode":"0"' in record.value for record in raw)
    assert await kafka_io.read_all(kafka, topics.DLQ) == []


async def test_a_rejected_static_token_is_reported_not_retried(kafka: KafkaSettings) -> None:
    scenario = Scenario(calls=2, rate=10.0, time_scale=1.0)
    metrics = Metrics()
    settings = mobile_agent_settings
    async with simulated(scenario) as (simulation, url), ingress(kafka) as sender:
        await traffic.register_calls(sender, simulation.mobile_agent)
        static = settings(url, token=Secret("not-issued"), interval_s=0.2)
        async with serving(poller(kafka, metrics, mobile_agent=static)) as task:
            await eventually(
                sync(lambda: metric(metrics, "poller_requests_total", provider="mobile_agent",
                                    outcome="401") >= 2),
                "the calls asked for and refused",
            )  # fmt: skip
            assert not task.done()
    assert metric(metrics, "poller_retries_total", provider="mobile_agent") == 0
    assert simulation.mobile_agent.tokens.issued == 0
    assert await kafka_io.read_all(kafka, topics.RAW) == []


async def test_without_a_token_or_ak_sk_the_poller_does_not_start() -> None:
    settings = PollSettings(mobile_agent=MobileAgentPollSettings(base_url="http://x", app_key="k"))
    with pytest.raises(SettingsError, match=r"MOBILE_AGENT__TOKEN, or .*APP_SECRET: required"):
        await service.serve(settings, KafkaSettings(), asyncio.Event())


async def test_two_instances_share_the_tracked_calls_by_partition(kafka: KafkaSettings) -> None:
    scenario = Scenario(seed=9, rate=10.0, calls=40, time_scale=0.003)
    one, two = Metrics(), Metrics()
    async with (
        simulated(scenario) as (simulation, url),
        ingress(kafka) as sender,
        serving(normalizer(kafka)),
        serving(poller(kafka, one, mobile_agent=mobile_agent_settings(url))),
        serving(poller(kafka, two, mobile_agent=mobile_agent_settings(url))),
    ):
        await traffic.register_calls(sender, simulation.mobile_agent)  # over 4 s
        await all_reach_events(kafka, of("mobile_agent", simulation.expected()))
    published = [
        metric(metrics, "poller_published_records_total", provider="mobile_agent")
        for metrics in (one, two)
    ]
    assert all(count > 0 for count in published), published
