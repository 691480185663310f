"""What the poller tests share: the simulator served in this process, quick poller settings, an
ingress to register calls at, and the reconciliation of calls.events with the ground truth."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
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
from callstream.simulate.vpbx import Served
from foundation import kafka as kafka_io
from foundation.clock import SYSTEM, Clock, ManualClock
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
    scenario: Scenario, start: datetime | None = None, clock: Clock = SYSTEM
) -> AsyncIterator[tuple[Simulation, str]]:
    """The simulation of `scenario` (from `start`: now), served on a free port; yields it and
    its base URL."""
    simulation = Simulation(scenario, start, clock)
    async with serving(simulation, "127.0.0.1", free_port()) as base_url:
        yield simulation, base_url


def poller(
    kafka: KafkaSettings,
    metrics: Metrics,
    clock: Clock = SYSTEM,
    **pollers: VpbxPollSettings | MobileAgentPollSettings,
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """`callstream poll` with these pollers, on `clock`, for helpers.serving()."""
    return lambda stop: service.serve(PollSettings(**pollers), kafka, stop, metrics, clock)


async def run_clock(
    clock: ManualClock,
    until: datetime,
    waiting: int,
    *,
    done: Callable[[], Awaitable[bool]] | None = None,
    within_s: float = 60.0,
) -> None:
    """Move `clock` to `until` from one wake-up to the next, each time once `waiting` tasks wait
    on it (they have done what was due); stop early once `done()` holds. Hours of schedule
    pass in moments, and nothing waits for real time to pass."""
    deadline = time.monotonic() + within_s
    while True:
        while clock.sleeping < waiting:
            assert time.monotonic() < deadline, f"not within {within_s:.0f}s: {clock.now()}"
            await asyncio.sleep(0.002)
        if done is not None and await done():
            return
        wake = clock.next_wake()
        if wake is None or wake > until:
            clock.advance(until)
            return
        clock.advance(wake)


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


async def reconciled(kafka: KafkaSettings, expected: set[Expected]) -> truth.Reconciliation:
    return truth.reconcile(expected, await delivered(kafka))


async def all_reach_events(
    kafka: KafkaSettings, expected: set[Expected], within_s: float = 60.0
) -> None:
    """Wait until calls.events holds every expected state, each call ending with its true final
    status; fail showing what is missing or wrong."""
    assert expected
    found = truth.reconcile(expected, set())

    async def complete() -> bool:
        nonlocal found
        found = await reconciled(kafka, expected)
        return found.ok

    try:
        await eventually(complete, "every expected state in calls.events", within_s)
    except AssertionError as failure:
        raise AssertionError(f"{failure}; {found}") from None


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def track_records(kafka: KafkaSettings) -> dict[bytes, bytes | None]:
    """The last record of each key of calls.track (None: a tombstone)."""
    return {r.key: r.value for r in await kafka_io.read_all(kafka, topics.TRACK) if r.key}


def of(provider: str, expected: set[Expected]) -> set[Expected]:
    return {state for state in expected if state.provider == provider}


def window_reads(
    served: Iterable[Served], window: timedelta = timedelta(minutes=1)
) -> dict[tuple[str, datetime], list[datetime]]:
    """(client, window end) → when each request that covered the window was served (page 1)."""
    reads: dict[tuple[str, datetime], list[datetime]] = defaultdict(list)
    for request in served:
        if request.page == 1:
            end = request.since + window
            while end <= request.until:
                reads[request.client, end].append(request.at)
                end += window
    return reads


def sync(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """`check` as helpers.eventually() takes it."""

    async def checked() -> bool:
        return check()

    return checked
