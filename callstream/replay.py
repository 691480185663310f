"""`callstream replay`: normalize calls.raw again into calls.events, e.g. after a normalizer fix.

The replay reads with no consumer group (explicit assignment, nothing committed), so the live
normalizer's offsets are untouched; it reads each partition from its start (or from the first
record at or after `since`) up to the highwater it had when the replay began, and stops there.
Records that fail go to calls.dlq with stage `replay`. Event ids are deterministic and every
consumer of calls.events dedupes by them, so a replay duplicates nothing downstream.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from callstream.progress import Progress
from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import POLL_MS, Record
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
    says `complete=False`; running the replay again is harmless.
    """
    if from_beginning == (since is not None):
        raise ReplayError("replay needs either --from-beginning or --since, not both")
    progress = progress or Progress("replay")
    async with (
        kafka_io.consumer(kafka, group_id=None, fetch_max_wait_ms=50) as consumer,
        kafka_io.producer(kafka) as producer,
    ):
        raw = kafka.topic(topics.RAW)
        partitions = await kafka_io.partitions_of(consumer, raw)
        if not partitions:
            raise ReplayError(f"topic {raw!r} does not exist on {kafka.bootstrap}")
        starts = await _starts(consumer, partitions, since)
        log.info("replay_started", since=since, provider=provider, partitions=len(starts))
        result = await _loop(
            consumer, producer, starts, kafka=kafka, provider=provider, since=since, stop=stop,
            progress=progress,
        )  # fmt: skip
    progress.close()
    log.info("replay_finished", **result._asdict())
    return result


async def _starts(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], since: datetime | None
) -> dict[TopicPartition, int]:
    """Where each partition's replay starts; none for those with nothing at or after `since`."""
    if since is None:
        starts = await consumer.beginning_offsets(partitions)
    else:
        found = await consumer.offsets_for_times(
            {tp: int(since.timestamp() * 1000) for tp in partitions}
        )
        starts = {tp: at.offset for tp, at in found.items() if at is not None}
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    return starts


async def _loop(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    starts: dict[TopicPartition, int],
    *,
    kafka: KafkaSettings,
    provider: str | None,
    since: datetime | None,
    stop: asyncio.Event,
    progress: Progress,
) -> ReplayResult:
    """Fetch, filter, normalize, produce and await the acks, batch after batch, until the end.

    A partition's end is the first highwater a fetch reports for it (not end_offsets(): the
    embedded broker answers it with the start of the last batch); later records are not read.
    Records older than `since` are skipped too: offsets_for_times may answer with an earlier
    offset (the embedded broker does), and with producer timestamps order is not guaranteed.
    """
    since_ms = 0 if since is None else int(since.timestamp() * 1000)
    ends: dict[TopicPartition, int] = {}
    pending = set(starts)
    read = skipped = produced = dead_lettered = 0
    while pending and not stop.is_set():
        batch = await consumer.getmany(*pending, timeout_ms=POLL_MS, max_records=MAX_BATCH)
        for tp in pending - ends.keys():
            if (highwater := consumer.highwater(tp)) is not None:
                ends[tp] = highwater
        if progress.total is None and ends.keys() == starts.keys():
            progress.total = sum(ends[tp] - starts[tp] for tp in starts)
        records = [r for tp, rs in batch.items() for r in rs if r.offset < ends.get(tp, 0)]
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
        progress.advance(len(records))
        pending = {tp for tp in pending if tp not in ends or await consumer.position(tp) < ends[tp]}
    return ReplayResult(read, skipped, produced, dead_lettered, complete=not pending)
