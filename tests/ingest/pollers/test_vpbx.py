"""The vpbx poller against the simulated API and the real broker: windows, pages, checkpoints."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from helpers import eventually, normalizer, serving
from poll_helpers import all_reach_events, metric, of, poller, simulated, sync, vpbx_settings

from callstream.simulate.faults import Faults
from callstream.simulate.simulation import Scenario
from foundation import kafka as kafka_io
from foundation.settings import (
    KafkaSettings,
    PollSettings,
    Secret,
    SettingsError,
    VpbxPollSettings,
)
from ingest.pollers import service
from ingest.pollers.metrics import Metrics
from schemas import topics
from schemas.raw import read_raw_headers
from schemas.records import Checkpoint


def _windows(metrics: Metrics) -> float:
    return sum(metric(metrics, "poller_windows_total", client_id=c) for c in Scenario().clients)


async def _checkpoints(kafka: KafkaSettings) -> dict[bytes, Checkpoint]:
    records = await kafka_io.read_all(kafka, topics.CHECKPOINTS)
    return {r.key: msgspec.json.decode(r.value, type=Checkpoint) for r in records if r.key}


async def test_a_poller_restarted_mid_read_resumes_at_its_checkpoint_with_no_gap(
    kafka: KafkaSettings,
) -> None:
    """The first run is stopped while a range is being read: once it has checkpointed and
    published a page past its checkpoint, the API fails every request. The calls all started
    over 80 s ago, and the second run reads nothing before now by itself (backfill 0, last
    re-read 1 s after a window): it finds them only by resuming where the first one stopped."""
    scenario = Scenario(seed=3, rate=1.0, calls=120, time_scale=0.001)
    first, second = Metrics(), Metrics()
    slow = {"rate_per_s": 25.0, "per_page": 2, "max_call_s": 1.0, "rereads_s": ()}
    async with (
        simulated(scenario, datetime.now(UTC) - timedelta(seconds=200)) as (simulation, url),
        serving(normalizer(kafka)),
    ):
        backfill = vpbx_settings(url, backfill_s=210.0, **slow)
        async with serving(poller(kafka, first, vpbx=backfill)):
            await eventually(lambda: _past_checkpoint(kafka), "a page past the checkpoint")
            simulation.injectors["vpbx"].faults = Faults(rate_500=1.0)
            await asyncio.sleep(0.5)
        stopped_at = await _checkpoints(kafka)
        simulation.injectors["vpbx"].faults = Faults()
        async with serving(poller(kafka, second, vpbx=vpbx_settings(url, backfill_s=0.0, **slow))):
            await all_reach_events(kafka, of("vpbx", simulation.expected()))
    assert stopped_at
    assert all(c.until < datetime.now(UTC) - timedelta(seconds=80) for c in stopped_at.values())
    assert _windows(first) > 0
    assert _windows(second) > 0


async def _past_checkpoint(kafka: KafkaSettings) -> bool:
    """Whether a page of a range beyond a checkpoint (one being read) is on calls.raw."""
    checkpoints = await _checkpoints(kafka)
    for record in await kafka_io.read_all(kafka, topics.RAW):
        context = read_raw_headers(record.headers).context
        checkpoint = checkpoints.get(f"vpbx:{context['client_id']}".encode())
        window_end = datetime.fromisoformat(context["window_end"])
        if int(context["page"]) > 1 and checkpoint is not None and window_end > checkpoint.until:
            return True
    return False


async def test_a_malformed_page_goes_to_the_dlq_and_the_window_is_read_again(
    kafka: KafkaSettings,
) -> None:
    """Every page malformed: each is dead-lettered, the window is never checkpointed past
    (nothing skipped while the API answers nothing readable), and the poller keeps going."""
    scenario = Scenario(calls=10, rate=10.0, time_scale=0.001, faults=Faults(rate_malformed=1.0))
    metrics = Metrics()
    async with (
        simulated(scenario) as (_, url),
        serving(poller(kafka, metrics, vpbx=vpbx_settings(url, max_attempts=2))) as task,
    ):

        async def lettered() -> bool:
            return metric(metrics, "poller_dead_lettered_records_total", provider="vpbx") >= 12

        await eventually(lettered, "malformed pages dead-lettered, again and again")
        assert not task.done()
    letters = await kafka_io.read_all(kafka, topics.DLQ)
    metas = [read_raw_headers(letter.headers) for letter in letters]
    assert {(m.provider, m.source) for m in metas} == {("vpbx", "poll")}
    assert {m.context["client_id"] for m in metas} == set(Scenario().clients)
    assert {m.context["page"] for m in metas} == {"1", "2"}  # two skipped in a row: window failed
    assert all(dict(letter.headers)[topics.ERROR_STAGE] == b"poll" for letter in letters)
    assert await _checkpoints(kafka) == {}
    assert await kafka_io.read_all(kafka, topics.RAW) == []


async def test_tokens_are_renewed_before_they_expire(kafka: KafkaSettings) -> None:
    scenario = Scenario(calls=5, rate=10.0, time_scale=0.001, token_ttl_s=1.0)
    metrics = Metrics()
    async with (
        simulated(scenario) as (simulation, url),
        serving(poller(kafka, metrics, vpbx=vpbx_settings(url, window_s=0.2))),
    ):
        await eventually(
            sync(lambda: simulation.vpbx.tokens.issued >= 4), "a token renewed three times"
        )
    assert metric(metrics, "poller_requests_total", provider="vpbx", outcome="ok") > 10
    assert metric(metrics, "poller_requests_total", provider="vpbx", outcome="401") == 0


async def test_a_revoked_token_is_replaced_and_the_request_retried(kafka: KafkaSettings) -> None:
    scenario = Scenario(
        calls=20, rate=20.0, time_scale=0.001, faults=Faults(rate_expired_token=0.3)
    )
    metrics = Metrics()
    async with (
        simulated(scenario, datetime.now(UTC) - timedelta(seconds=5)) as (simulation, url),
        serving(normalizer(kafka)),
        serving(poller(kafka, metrics, vpbx=vpbx_settings(url, backfill_s=10.0))),
    ):
        await all_reach_events(kafka, of("vpbx", simulation.expected()))
    rejected = metric(metrics, "poller_requests_total", provider="vpbx", outcome="401")
    assert rejected > 0
    assert simulation.vpbx.tokens.issued > 1  # renewed (clients in flight share a rejection)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (VpbxPollSettings(base_url="http://x"), "CALLSTREAM_POLL__VPBX__CLIENT_IDS: required"),
        (
            VpbxPollSettings(base_url="http://x", client_ids=("1",), oauth_client_id="a"),
            "CALLSTREAM_POLL__VPBX__OAUTH_CLIENT_SECRET: required",
        ),
        (
            VpbxPollSettings(
                base_url="http://x",
                client_ids=("1",),
                oauth_client_id="a",
                oauth_client_secret=Secret("s"),
                rereads_s=(60.0, 0.0),
            ),
            "CALLSTREAM_POLL__VPBX__REREADS_S: expected seconds > 0",
        ),
    ],
)
async def test_incomplete_settings_are_refused_before_anything_starts(
    settings: VpbxPollSettings, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        await service.serve(PollSettings(vpbx=settings), KafkaSettings(), asyncio.Event())
