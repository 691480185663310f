"""`callstream replay`: normalize calls.raw again into calls.events, e.g. after a normalizer fix.

The replay reads with no consumer group (explicit assignment, nothing committed), so the live
normalizer's offsets are untouched; it reads each partition from its start (or from the first
record at or after `since`) up to the highwater it had when the replay began, and stops there
(`foundation.kafka.TopicScan`); if calls.raw gives nothing for the scan's `stall_s` (30 s), it
stops with TimeoutError.
Records that fail go to calls.dlq with stage `replay`. Event ids are deterministic and every
consumer of calls.events dedupes by them, so a replay duplicates nothing downstream.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import datetime
from typing import NamedTuple

import structlog
from aiokafka import AIOKafkaProducer

from callstream.progress import Progress
from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import Record
from foundation.settings import KafkaSettings
from normalize.service import route
from schemas import topics
from schemas.topics import Stage

MAX_BATCH = 5_000

log = structlog.get_logger("callstream.replay")


class ReplayError(CallstreamError):
    """A replay asked for nothing sensible (no start, or calls.raw missing)."""


class ReplayResult(NamedTuple):
    read: int
    """Raw records read (those of other providers included)."""
    skipped: int
    """Records of another provider than the one asked for, or older than `since`."""
    produced: int
    """Events acknowledged on calls.events."""
    dead_lettered: int
    """Records acknowledged on calls.dlq (stage `replay`)."""
    complete: bool
    """False when `stop` ended the replay before the end present at its start."""


def provider_of(record: Record) -> str | None:
    """The record's cs-provider header, None if it has none (or it is not text)."""
    for name, value in record.headers:
        if name == topics.PROVIDER:
            return value.decode(errors="replace")
    return None


async def replay(
    kafka: KafkaSettings,
    *,
    since: datetime | None,
    from_beginning: bool,
    provider: str | None,
    stop: asyncio.Event,
    progress: Progress | None = None,
) -> ReplayResult:
    """Normalize calls.raw again, from the beginning or from `since`, up to its end at start.

    Exactly one of `from_beginning` and `since` is required. `provider` keeps only records
    whose cs-provider header names it. On `stop` the batch in hand is finished and the result
    says `complete=False`; running the replay again is harmless. Raises TimeoutError if
    calls.raw gives nothing for 30 s (the broker stopped answering).
    """
    if from_beginning == (since is not None):
        raise ReplayError("replay needs either --from-beginning or --since, not both")
    progress = progress or Progress("replay")
    partitions = await _partitions_of_raw(kafka)
    scan = kafka_io.TopicScan(kafka, topics.RAW, starts=since, max_records=MAX_BATCH)
    async with kafka_io.producer(kafka) as producer:
        log.info("replay_started", since=since, provider=provider, partitions=partitions)
        result = await _loop(
            scan, producer, kafka=kafka, provider=provider, since=since, stop=stop,
            progress=progress,
        )  # fmt: skip
    progress.close()
    log.info("replay_finished", **result._asdict())
    return result


async def _partitions_of_raw(kafka: KafkaSettings) -> int:
    """How many partitions calls.raw has; raises ReplayError if it does not exist."""
    async with kafka_io.consumer(kafka, group_id=None) as consumer:
        partitions = await kafka_io.partitions_of(consumer, kafka.topic(topics.RAW))
    if not partitions:
        raise ReplayError(f"topic {kafka.topic(topics.RAW)!r} does not exist on {kafka.bootstrap}")
    return len(partitions)


async def _loop(
    scan: kafka_io.TopicScan,
    producer: AIOKafkaProducer,
    *,
    kafka: KafkaSettings,
    provider: str | None,
    since: datetime | None,
    stop: asyncio.Event,
    progress: Progress,
) -> ReplayResult:
    """Filter, normalize, produce and await the acks, batch after batch of `scan`, until the
    end or `stop`.

    Records older than `since` are skipped too: offsets_for_times may answer with an earlier
    offset (the embedded broker does), and with producer timestamps order is not guaranteed.
    """
    since_ms = 0 if since is None else int(since.timestamp() * 1000)
    read = skipped = produced = dead_lettered = 0
    async with aclosing(scan.batches(stop)) as batches:  # its consumer closed if a send fails
        async for records in batches:
            wanted = [
                r
                for r in records
                if r.timestamp >= since_ms and (provider is None or provider_of(r) == provider)
            ]
            events, dead = route(wanted, Stage.REPLAY)
            await asyncio.gather(
                kafka_io.send_all(producer, kafka.topic(topics.EVENTS), events),
                kafka_io.send_all(producer, kafka.topic(topics.DLQ), dead),
            )
            read += len(records)
            skipped += len(records) - len(wanted)
            produced += len(events)
            dead_lettered += len(dead)
            progress.total = scan.total
            progress.advance(len(records))
    progress.total = scan.total
    return ReplayResult(read, skipped, produced, dead_lettered, complete=scan.complete)
