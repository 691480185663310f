"""`callstream bench aggregate`: events/s folded into sessions by the aggregator, on one process.

An embedded broker is started and calls.events pre-loaded with the canonical events of distinct
two-leg Wavecell sessions (`samples` through `normalize()`, keyed by session_key). The
aggregator then runs in this process until it has consumed every event and produced every
session. The clock starts when its first batch is done, so the group join and the (empty) state
restore are not counted; the rate covers what follows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from callstream import samples
from callstream.broker import EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import AggregatorSettings, KafkaSettings
from normalize import aggregator, normalize
from schemas import cloudevents, topics

TARGET_PER_S = 50_000
"""Events pre-loaded per second asked for: at the target rate the run lasts `seconds`."""
POLL_S = 0.005
TIMEOUT_FACTOR = 20
"""The run gives up after this many times the expected time (a stuck service, not a slow one)."""


def run(seconds: float = 4.0) -> dict[str, float]:
    """Rates of the aggregator over `seconds` x 50,000 pre-loaded events (one flat dict)."""
    return asyncio.run(_run(max(int(seconds * TARGET_PER_S) // 2, 1)))


async def _run(sessions: int) -> dict[str, float]:
    async with EmbeddedBroker(free_port()) as broker:
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        await kafka_io.ensure_topics(kafka)
        events = await _preload(kafka, sessions)
        async with asyncio.timeout(TIMEOUT_FACTOR * events / TARGET_PER_S + 30):
            return await _measure(kafka, events, sessions)


async def _preload(kafka: KafkaSettings, sessions: int) -> int:
    """Pre-load the events of `sessions` distinct sessions; return how many events."""
    received_at = datetime.now(UTC)
    records = [
        OutRecord(
            event.session_key.encode(),
            msgspec.json.encode(event),
            cloudevents.headers(
                event.event_id, event.provider, cloudevents.EVENT_TYPE, event.occurred_at
            ),
        )
        for body in samples.payloads("wavecell", sessions)
        for event in normalize("wavecell", body, received_at=received_at)
    ]
    await kafka_io.publish(kafka, topics.EVENTS, records)
    return len(records)


async def _measure(kafka: KafkaSettings, events: int, sessions: int) -> dict[str, float]:
    metrics, stop = Metrics(aggregator.Aggregator.service), asyncio.Event()
    serving = asyncio.create_task(aggregator.serve(AggregatorSettings(), kafka, stop, metrics))
    try:
        consumed0, _ = await _counts_once(metrics, lambda consumed: consumed > 0)
        start = time.perf_counter()
        # A batch counts as consumed once its sessions are acknowledged and its offsets committed.
        consumed, produced = await _counts_once(metrics, lambda consumed: consumed >= events)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        await serving
    return {
        "events_per_s": round((consumed - consumed0) / elapsed),
        "events": consumed,
        "sessions": sessions,
        "session_records": produced,
        "seconds": round(elapsed, 2),
    }


async def _counts_once(metrics: Metrics, reached: Callable[[int], bool]) -> tuple[int, int]:
    """Events consumed and session records produced once `reached(consumed)`."""
    while True:
        counts = metrics.total("received"), metrics.total("produced")
        if reached(counts[0]):
            return counts
        await asyncio.sleep(POLL_S)


def report(results: dict[str, float]) -> str:
    return "\n".join(
        [
            f"aggregator: {results['events_per_s']:,.0f} events/s folded and produced",
            f"({results['events']:,.0f} events → {results['sessions']:,.0f} sessions in "
            f"{results['session_records']:,.0f} records; {results['seconds']:.1f} s measured)",
        ]
    )
