"""`callstream bench normalizer`: raw records/s through the normalizer service, on one process.

An embedded broker is started and calls.raw pre-loaded with realistic two-leg Wavecell reports
(a pool of distinct bodies, cycled). The service then runs in this process until it has
committed all of them. The clock starts when its first batch is committed, so the group join
(a few seconds with the default timings) is not counted; the rates cover what follows it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import cycle, islice

from callstream import samples
from callstream.broker import EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import KafkaSettings, NormalizerSettings
from normalize import service
from schemas import topics
from schemas.raw import RawMeta, raw_headers

TARGET_PER_S = 50_000
"""Records pre-loaded per second asked for: at the target rate the run lasts `seconds`."""
POOL = 10_000
POLL_S = 0.02
"""How often the run reads the service's counters: each read collects its whole registry."""
TIMEOUT_FACTOR = 20
"""The run gives up after this many times the expected time (a stuck service, not a slow one)."""


def run(seconds: float = 4.0) -> dict[str, float]:
    """Rates of the service over `seconds` x 50,000 pre-loaded raw records (one flat dict)."""
    return asyncio.run(_run(max(int(seconds * TARGET_PER_S), 1)))


async def _run(count: int) -> dict[str, float]:
    async with EmbeddedBroker(free_port()) as broker:
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        await kafka_io.ensure_topics(kafka)
        await _preload(kafka, count)
        async with asyncio.timeout(TIMEOUT_FACTOR * count / TARGET_PER_S + 30):
            return await _measure(kafka, count)


async def _preload(kafka: KafkaSettings, count: int) -> None:
    headers = raw_headers(
        RawMeta("wavecell", "webhook", datetime.now(UTC), "bench", "application/json", {})
    )
    bodies = islice(cycle(samples.payloads("wavecell", min(POOL, count))), count)
    await kafka_io.publish(kafka, topics.RAW, (OutRecord(None, body, headers) for body in bodies))


async def _measure(kafka: KafkaSettings, count: int) -> dict[str, float]:
    metrics, stop = Metrics(service.Normalizer.service), asyncio.Event()
    serving = asyncio.create_task(service.serve(NormalizerSettings(), kafka, stop, metrics))
    try:
        records0, events0, _ = await _counts_once(metrics, lambda records: records > 0)
        start = time.perf_counter()
        records, events, dead = await _counts_once(metrics, lambda records: records >= count)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        await serving
    return {
        "records_per_s": round((records - records0) / elapsed),
        "events_per_s": round((events - events0) / elapsed),
        "records": records,
        "events": events,
        "dead_lettered": dead,
        "seconds": round(elapsed, 2),
    }


async def _counts_once(metrics: Metrics, reached: Callable[[int], bool]) -> tuple[int, int, int]:
    """Records consumed, events produced and records dead-lettered once `reached(records)`."""
    while True:
        counts = tuple(metrics.total(name) for name in ("received", "produced", "dead_lettered"))
        if reached(counts[0]):
            return counts  # type: ignore[return-value]
        await asyncio.sleep(POLL_S)


def report(results: dict[str, float]) -> str:
    return "\n".join(
        [
            f"normalizer service: {results['records_per_s']:,.0f} raw records/s, "
            f"{results['events_per_s']:,.0f} events/s",
            f"({results['records']:,.0f} records → {results['events']:,.0f} events, "
            f"{results['dead_lettered']:,.0f} dead-lettered; {results['seconds']:.1f} s measured)",
        ]
    )
