"""`callstream bench aggregate`: events/s folded into sessions by the aggregator, and its memory.

An embedded broker is started and calls.events pre-loaded with the canonical events of
`sessions` distinct two-leg Wavecell sessions (`samples` through `normalize()`, keyed by
session_key, all received now: none is due while the run lasts), in one of two orders (`legs`):
`together`, each session's two events one after the other, so that the second finds the session
the batch in hand folded; or `apart`, each chunk of CHUNK sessions' first events and then their
second ones, so that a second event comes in a later batch and its session is read from the
database, as the later reports of real calls are. The aggregator then runs with
its default settings, its state in a temporary directory, in a process of its own that does
nothing else, until it has consumed every event and produced every session. That process reports
the rate and its peak resident memory (`ru_maxrss`), so neither the pre-load nor the broker is
counted. The clock starts when its first batch is done, so the group join and the (empty) state
restore are not counted; the rate covers what follows.

Then, in the same process, the baseline: a passthrough on the same runtime reads the same events
as a consumer group of its own, in batches of the same size, and produces each unchanged to a
topic of its own (`callstream.bench.passthrough`): the Kafka I/O of consuming them, without the
aggregator's own work. `ratio` is the aggregator's rate over the passthrough's, which the
machine's neighbours move much less than either rate.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from callstream import samples
from callstream.bench import passthrough
from callstream.bench.passthrough import Serve
from callstream.broker import EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import OutRecord
from foundation.log import configure_logging
from foundation.runtime import Metrics
from foundation.service import tune_gc
from foundation.settings import AggregatorSettings, KafkaSettings
from normalize import aggregator, normalize
from schemas import cloudevents, topics

SESSIONS = 100_000
LEGS = ("together", "apart")
TARGET_PER_S = 50_000
POLL_S = 0.005
TIMEOUT_FACTOR = 20
"""The run gives up after this many times the time the target rate takes (a stuck service,
not a slow one)."""
CHUNK = 50_000
"""Sessions pre-loaded at a time, so that the pre-load's memory does not grow with `sessions`."""


def run(sessions: int = SESSIONS, legs: str = LEGS[0]) -> dict[str, float | str]:
    """Rate and peak memory of the aggregator over `sessions` pre-loaded sessions, their legs
    in the order `legs` (one flat dict)."""
    return asyncio.run(_run(sessions, legs))


async def _run(sessions: int, legs: str) -> dict[str, float | str]:
    loop = asyncio.get_running_loop()
    with (
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        tempfile.TemporaryDirectory(prefix="callstream-bench-") as state_dir,
    ):
        # Started before the pre-load: Linux counts in a process's ru_maxrss the memory of its
        # parent when it was forked.
        await loop.run_in_executor(pool, _started)
        async with EmbeddedBroker(free_port()) as broker:
            kafka = KafkaSettings(bootstrap=broker.bootstrap)
            await kafka_io.ensure_topics(kafka, [*topics.ALL, passthrough.TOPIC])
            events = await _preload(kafka, sessions, apart=legs == "apart")
            results = await loop.run_in_executor(
                pool, _measure_alone, kafka.bootstrap, events, state_dir
            )
    return results | {"sessions": sessions, "legs": legs}


async def _preload(kafka: KafkaSettings, sessions: int, *, apart: bool) -> int:
    """Pre-load the events of `sessions` distinct two-leg sessions, with `apart` each chunk's
    first legs before its second ones; return how many events."""
    received_at = datetime.now(UTC)
    events = 0
    async with kafka_io.producer(kafka) as producer:
        for seed, start in enumerate(range(0, sessions, CHUNK)):
            records = [
                OutRecord(
                    event.session_key.encode(),
                    msgspec.json.encode(event),
                    cloudevents.headers(
                        event.event_id, event.provider, cloudevents.EVENT_TYPE, event.occurred_at
                    ),
                )
                for body in samples.payloads("wavecell", min(CHUNK, sessions - start), seed)
                for event in normalize("wavecell", body, received_at=received_at)
            ]
            if apart:
                records = records[0::2] + records[1::2]
            await kafka_io.send_all(producer, topics.EVENTS, records)
            events += len(records)
    return events


def _started() -> None:
    """The measuring process, started: its logs as the command's (warnings, on stderr)."""
    configure_logging(level="warning")


def _measure_alone(bootstrap: str, events: int, state_dir: str) -> dict[str, float]:
    """In a process of its own: the aggregator's rate over `events`, the process's peak
    resident memory, and the size of the state it left."""
    tune_gc()  # as in the service process it measures
    kafka, settings = KafkaSettings(bootstrap=bootstrap), AggregatorSettings(state_dir=state_dir)
    results = asyncio.run(
        _measure(aggregator.Aggregator.service, _aggregator(kafka, settings), events)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
    state_bytes = sum(f.stat().st_size for f in Path(state_dir).rglob("*") if f.is_file())
    group, batch = "bench-aggregate-passthrough", settings.max_batch
    baseline = asyncio.run(
        _measure(
            passthrough.Passthrough.service,
            passthrough.serve(kafka, topics.EVENTS, group, batch),
            events,
        )
    )
    return results | {
        "passthrough_per_s": baseline["events_per_s"],
        "ratio": round(results["events_per_s"] / baseline["events_per_s"], 2),
        "rss_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10)),
        "state_mb": round(state_bytes / 2**20),
    }


def _aggregator(kafka: KafkaSettings, settings: AggregatorSettings) -> Serve:
    async def serve(stop: asyncio.Event, metrics: Metrics) -> None:
        await aggregator.serve(settings, kafka, stop, metrics)

    return serve


async def _measure(service: str, serve: Serve, events: int) -> dict[str, float]:
    """`serve`'s rate over the `events` pre-loaded, its first batch not counted."""
    metrics, stop = Metrics(service), asyncio.Event()
    serving = asyncio.create_task(serve(stop, metrics))
    try:
        async with asyncio.timeout(TIMEOUT_FACTOR * events / TARGET_PER_S + 30):
            consumed0, _ = await _counts_once(metrics, lambda consumed: consumed > 0)
            start = time.perf_counter()
            # A batch counts once its sessions are acknowledged, written and committed.
            consumed, produced = await _counts_once(metrics, lambda consumed: consumed >= events)
            elapsed = time.perf_counter() - start
    finally:
        stop.set()
        await serving
    if consumed == consumed0:
        raise CallstreamError(
            f"bench aggregate: all {events:,} events came in the first batch, which is not "
            "timed; pre-load more sessions (--sessions 10000 or more)"
        )
    return {
        "events_per_s": round((consumed - consumed0) / elapsed),
        "events": consumed,
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


def report(results: dict[str, float | str]) -> str:
    return "\n".join(
        [
            f"aggregator: {results['events_per_s']:,.0f} events/s folded and produced, "
            f"peak RSS {results['rss_mb']:,.0f} MB",
            f"passthrough (the same events' Kafka I/O): {results['passthrough_per_s']:,.0f} "
            f"events/s; ratio {results['ratio']:.2f}",
            f"({results['events']:,.0f} events → {results['sessions']:,.0f} sessions, legs "
            f"{results['legs']}, in "
            f"{results['session_records']:,.0f} records; {results['seconds']:.1f} s measured; "
            f"state {results['state_mb']:,.0f} MB on disk)",
        ]
    )
