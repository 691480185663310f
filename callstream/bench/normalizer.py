"""`callstream bench normalizer`: raw records/s through the normalizer service, against a
passthrough on the same runtime, in the same run on the same broker.

An embedded broker is started and calls.raw pre-loaded once with realistic two-leg Wavecell
reports (a pool of distinct bodies, cycled). Then, ROUNDS times in turn, (a) a passthrough
handler and (b) the normalizer service each read the whole topic as a fresh consumer group, in
this process, on the one consumer runtime: the same fetches, batches of the same size, produce
with the batch API, acknowledgements and commits. The passthrough produces each raw record's
key, value and headers unchanged to a topic of its own; the normalizer its canonical events to
calls.events. Each side's clock starts when its first batch is committed, so the group join (a
few seconds with the default timings) is not counted. `ratio` is the normalizer's rate over the
passthrough's, the share of the bare Kafka I/O rate the normalizer keeps: the median of the
rounds' ratios, each of two runs one right after the other (figures are medians too).
`cpu_ratio` is the same comparison in CPU time per record (this process and the broker's):
less moved by neighbours on a shared machine than rates are, so it shows a change that the
rates' day-to-day spread hides.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import cycle, islice
from pathlib import Path
from statistics import median

from callstream import samples
from callstream.bench import Target, passthrough
from callstream.bench.passthrough import Serve
from callstream.broker import EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import KafkaSettings, NormalizerSettings
from normalize import service
from schemas import topics
from schemas.raw import RawMeta, raw_headers

TARGET_RATIO = 0.6
"""`ratio` at or above this: the normalizer's own work costs at most two thirds of what the
passthrough's Kafka I/O costs per raw record."""
TARGETS = (Target("ratio", at_least=TARGET_RATIO),)
RECORDS_PER_S = 50_000
"""Records pre-loaded per second of `seconds`: about what the normalizer reads in a second."""
ROUNDS = 3
POOL = 10_000
POLL_S = 0.02
"""How often the run reads a service's counters: each read collects its whole registry."""
TIMEOUT_FACTOR = 20
"""A side gives up after this many times its expected time (a stuck service, not a slow one)."""


def run(seconds: float = 4.0) -> dict[str, float]:
    """Rates over `seconds` x 50,000 pre-loaded raw records, medians of ROUNDS (a flat dict)."""
    return asyncio.run(_run(max(int(seconds * RECORDS_PER_S), 1)))


async def _run(count: int) -> dict[str, float]:
    async with EmbeddedBroker(free_port()) as broker:
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        await kafka_io.ensure_topics(kafka, [*topics.ALL, passthrough.TOPIC])
        await _preload(kafka, count)
        assert broker.process is not None  # noqa: S101 - started by the context manager
        rounds = []
        for round_ in range(ROUNDS):
            rates = {}
            for name, serve in _sides(kafka, round_).items():
                async with asyncio.timeout(TIMEOUT_FACTOR * count / RECORDS_PER_S + 30):
                    rates[name] = await _measure(serve, name, count, broker.process.pid)
            rounds.append(rates)
    return _summary(rounds, count)


def _summary(rounds: list[dict[str, dict[str, float]]], count: int) -> dict[str, float]:
    """Each figure's median over the rounds. `ratio` is the median of the rounds' own ratios:
    each round's two sides ran one after the other, under the same neighbours, whereas a side's
    best round may have had a quieter machine than the other side's."""
    ratios = [r["normalizer"]["records_per_s"] / r["passthrough"]["records_per_s"] for r in rounds]
    cpu_ratios = [r["passthrough"]["cpu_us"] / r["normalizer"]["cpu_us"] for r in rounds]
    last = rounds[-1]["normalizer"]
    return {
        "records_per_s": median(r["normalizer"]["records_per_s"] for r in rounds),
        "events_per_s": median(r["normalizer"]["events_per_s"] for r in rounds),
        "passthrough_per_s": median(r["passthrough"]["records_per_s"] for r in rounds),
        "ratio": round(median(ratios), 2),
        "ratio_min": round(min(ratios), 2),
        "ratio_max": round(max(ratios), 2),
        "cpu_us": round(median(r["normalizer"]["cpu_us"] for r in rounds), 1),
        "passthrough_cpu_us": round(median(r["passthrough"]["cpu_us"] for r in rounds), 1),
        "cpu_ratio": round(median(cpu_ratios), 2),
        "records": count,
        "events": last["events"],
        "dead_lettered": last["dead_lettered"],
        "rounds": len(rounds),
    }


def _sides(kafka: KafkaSettings, round_: int) -> dict[str, Serve]:
    """The passthrough and the normalizer, each as a consumer group new in this round."""
    settings = NormalizerSettings(group_id=f"bench-normalizer-{round_}")

    async def normalizer(stop: asyncio.Event, metrics: Metrics) -> None:
        await service.serve(settings, kafka, stop, metrics)

    return {
        "passthrough": passthrough.serve(
            kafka, topics.RAW, f"bench-passthrough-{round_}", settings.max_batch
        ),
        "normalizer": normalizer,
    }


async def _preload(kafka: KafkaSettings, count: int) -> None:
    headers = raw_headers(
        RawMeta("wavecell", "webhook", datetime.now(UTC), "bench", "application/json", {})
    )
    bodies = islice(cycle(samples.payloads("wavecell", min(POOL, count))), count)
    await kafka_io.publish(kafka, topics.RAW, (OutRecord(None, body, headers) for body in bodies))


async def _measure(serve: Serve, name: str, count: int, broker_pid: int) -> dict[str, float]:
    """One side's rates over the `count` pre-loaded records, its first batch not counted, and
    the CPU time it took per record, of this process and the broker's together (`cpu_us`)."""
    metrics, stop = Metrics(name), asyncio.Event()
    serving = asyncio.create_task(serve(stop, metrics))
    try:
        records0, events0, _ = await _counts_once(serving, metrics, lambda done: done > 0)
        start, cpu0 = time.perf_counter(), _cpu_s(broker_pid)
        records, events, dead = await _counts_once(serving, metrics, lambda done: done >= count)
        elapsed, cpu = time.perf_counter() - start, _cpu_s(broker_pid) - cpu0
    finally:
        stop.set()
        await serving
    return {
        "cpu_us": cpu / (records - records0) * 1e6 if records > records0 else math.inf,
        "records_per_s": round((records - records0) / elapsed),
        "events_per_s": round((events - events0) / elapsed),
        "events": events,
        "dead_lettered": dead,
    }


def _cpu_s(broker_pid: int) -> float:
    """CPU seconds used so far by this process and by the broker's (Linux: from /proc)."""
    fields = Path(f"/proc/{broker_pid}/stat").read_text().rpartition(")")[2].split()
    broker = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return time.process_time() + broker


async def _counts_once(
    serving: asyncio.Task[None], metrics: Metrics, reached: Callable[[int], bool]
) -> tuple[int, int, int]:
    """Records consumed, records produced and records dead-lettered once `reached(records)`;
    raises what the service raised if it ends first."""
    while True:
        if serving.done():
            serving.result()
            raise RuntimeError(f"{metrics.service} stopped before it read every record")
        counts = tuple(metrics.total(name) for name in ("received", "produced", "dead_lettered"))
        if reached(counts[0]):
            return counts  # type: ignore[return-value]
        await asyncio.sleep(POLL_S)


def report(results: dict[str, float]) -> str:
    return "\n".join(
        [
            f"normalizer service: {results['records_per_s']:>8,.0f} raw records/s "
            f"({results['events_per_s']:,.0f} events/s)",
            f"passthrough:        {results['passthrough_per_s']:>8,.0f} raw records/s",
            f"CPU per raw record (this process and the broker): normalizer "
            f"{results['cpu_us']:.1f} µs, passthrough {results['passthrough_cpu_us']:.1f} µs, "
            f"cpu_ratio {results['cpu_ratio']:.2f}",
            f"medians of {results['rounds']:.0f} rounds, each of both over the same "
            f"{results['records']:,.0f} records ({results['events']:,.0f} events, "
            f"{results['dead_lettered']:,.0f} dead-lettered); ratio by round "
            f"{results['ratio_min']:.2f} to {results['ratio_max']:.2f}",
        ]
    )
