"""What the poller tests share: the simulator served in this process, quick poller settings, an
ingress to register calls at, and the reconciliation of calls.events with the ground truth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from helpers import eventually

from callstream.broker import free_port
from callstream.simulate import traffic, truth
from callstream.simulate.simulation import (
    MOBILE_AGENT_CREDENTIALS,
    VPBX_CREDENTIALS,
    Scenario,
    Simulation,
    serving,
)
from callstream.simulate.truth import Expected
from foundation import kafka as kafka_io
from foundation.settings import (
    IngressSettings,
    KafkaSettings,
    MobileAgentPollSettings,
    PollSettings,
    Secret,
    VpbxPollSettings,
)
from ingest.app import create_app
from ingest.pollers import service
from ingest.pollers.metrics import Metrics
from schemas import topics

QUICK: dict[str, Any] = {
    "timeout_s": 0.5,
    "max_attempts": 20,
    "backoff_s": 0.01,
    "backoff_max_s": 0.1,
    "rate_per_s": 1_000.0,
}
"""Retries quick enough for tests, and patient enough to outlast the injected faults."""


def vpbx_settings(base_url: str, **overrides: Any) -> VpbxPollSettings:
    settings: dict[str, Any] = {
        **QUICK,
        "base_url": f"{base_url}/vpbx",
        "client_ids": Scenario().clients,
        "oauth_client_id": VPBX_CREDENTIALS[0],
        "oauth_client_secret": Secret(VPBX_CREDENTIALS[1]),
        "window_s": 1.0,
        "rereads_s": (1.0,),
        "max_call_s": 3.0,
        "backfill_s": 2.0,
        "per_page": 4,
        "retry_interval_s": 0.1,
        "group_id": "test-poll-vpbx",
    }
    return VpbxPollSettings(**(settings | overrides))


def mobile_agent_settings(base_url: str, **overrides: Any) -> MobileAgentPollSettings:
    settings: dict[str, Any] = {
        **QUICK,
        "base_url": f"{base_url}/mobile_agent",
        "app_key": MOBILE_AGENT_CREDENTIALS[0],
        "app_secret": Secret(MOBILE_AGENT_CREDENTIALS[1]),
        "interval_s": 0.05,
        "group_id": "test-poll-mobile-agent",
    }
    return MobileAgentPollSettings(**(settings | overrides))


@asynccontextmanager
async def simulated(
    scenario: Scenario, start: datetime | None = None
) -> AsyncIterator[tuple[Simulation, str]]:
    """The simulation of `scenario` (from `start`: now), served on a free port; yields it and
    its base URL."""
    simulation = Simulation(scenario, start)
    async with serving(simulation, "127.0.0.1", free_port()) as base_url:
        yield simulation, base_url


def poller(
    kafka: KafkaSettings, metrics: Metrics, **pollers: VpbxPollSettings | MobileAgentPollSettings
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """`callstream poll` with these pollers, for helpers.serving()."""
    return lambda stop: service.serve(PollSettings(**pollers), kafka, stop, metrics)


@asynccontextmanager
async def ingress(kafka: KafkaSettings) -> AsyncIterator[traffic.Ingress]:
    """The real ingress app on a free port, and the traffic sender pointed at it."""
    async with (
        TestServer(create_app(IngressSettings(), kafka)) as server,
        aiohttp.ClientSession() as session,
    ):
        yield traffic.Ingress(str(server.make_url("")), session, {})


async def delivered(kafka: KafkaSettings) -> set[Expected]:
    return truth.delivered(record.value for record in await kafka_io.read_all(kafka, topics.EVENTS))


async def all_reach_events(
    kafka: KafkaSettings, expected: set[Expected], within_s: float = 60.0
) -> None:
    """Wait until calls.events holds every expected state; fail showing some that are missing."""
    assert expected
    missing: set[Expected] = set()

    async def complete() -> bool:
        nonlocal missing
        missing = expected - await delivered(kafka)
        return not missing

    try:
        await eventually(complete, "every expected state in calls.events", within_s)
    except AssertionError as failure:
        raise AssertionError(
            f"{failure}; {len(missing)} missing, e.g. {sorted(missing)[:5]}"
        ) from None


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def track_records(kafka: KafkaSettings) -> dict[bytes, bytes | None]:
    """The last record of each key of calls.track (None: a tombstone)."""
    return {r.key: r.value for r in await kafka_io.read_all(kafka, topics.TRACK) if r.key}


def of(provider: str, expected: set[Expected]) -> set[Expected]:
    return {state for state in expected if state.provider == provider}


def sync(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """`check` as helpers.eventually() takes it."""

    async def checked() -> bool:
        return check()

    return checked
