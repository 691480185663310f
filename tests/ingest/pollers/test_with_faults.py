"""The whole way in, with every fault the simulator can inject: nothing is lost.

Both pollers and the webhook traffic run against the simulator, the ingress and the normalizer
against the real embedded broker; every state the ground truth expects must reach calls.events.
"""

from __future__ import annotations

from helpers import normalizer, serving
from poll_helpers import (
    all_reach_events,
    ingress,
    metric,
    mobile_agent_settings,
    poller,
    simulated,
    vpbx_settings,
)

from callstream.simulate import traffic
from callstream.simulate.faults import Faults
from callstream.simulate.simulation import Scenario
from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from ingest.pollers.metrics import Metrics
from schemas import topics
from schemas.raw import read_raw_headers

FAULTS = Faults(
    rate_429=0.08,
    rate_500=0.08,
    rate_slow=0.03,
    rate_expired_token=0.05,
    rate_malformed=0.08,
    rate_ret_code=0.08,
    slow_s=0.8,  # beyond the pollers' 0.5 s timeout
    retry_after_s=0,
)


async def test_with_faults_every_simulated_call_reaches_calls_events_in_each_state(
    kafka: KafkaSettings,
) -> None:
    scenario = Scenario(
        seed=7, rate=20.0, calls=40, time_scale=0.002, token_ttl_s=2.0, faults=FAULTS
    )
    metrics = Metrics()
    async with (
        simulated(scenario) as (simulation, base_url),
        ingress(kafka) as sender,
        serving(normalizer(kafka)),
        serving(
            poller(
                kafka,
                metrics,
                vpbx=vpbx_settings(base_url),
                mobile_agent=mobile_agent_settings(base_url),
            )
        ),
    ):
        simulation.webhooks = traffic.Webhooks(sender, seed=7, duplicates=0.2)
        await simulation.webhooks.fire(100.0, count=60, connections=8)
        assert await traffic.register_calls(sender, simulation.mobile_agent) == 40
        await all_reach_events(kafka, simulation.expected())
    injected = simulation.injected

    assert set(injected) == {"429", "500", "slow", "expired_token", "malformed", "ret_code"}
    # counted where answered (one served while its token was revoked is answered 401 instead)
    assert 0 < metric(metrics, "poller_failed_queries_total", ret_code="1") <= injected["ret_code"]
    raw = await kafka_io.read_all(kafka, topics.RAW)
    polled = [r for r in raw if read_raw_headers(r.headers).source == "poll"]
    assert polled
    assert all(b'"retCode":"1"' not in r.value for r in polled)
    letters = [read_raw_headers(r.headers) for r in await kafka_io.read_all(kafka, topics.DLQ)]
    assert 0 < len(letters) <= injected["malformed"]  # some served as the pollers stopped
    assert {(m.provider, m.source) for m in letters} <= {("vpbx", "poll"), ("mobile_agent", "poll")}
    assert all("client_id" in m.context or "callSerialNo" in m.context for m in letters)
