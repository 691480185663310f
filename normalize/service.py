"""The normalizer service: calls.raw → calls.events, and what cannot be normalized → calls.dlq.

A thin loop around `normalize()`. Each fetched batch is normalized, its events and dead letters
are produced with the batch API, and only once the broker has acknowledged all of them are the
batch's offsets committed: a raw record is never lost (at-least-once), and a replay after a crash
or a rebalance repeats events with the same event_id, which consumers treat as duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from itertools import chain

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from callstream import cloudevents, topics
from callstream import kafka as kafka_io
from callstream.kafka import OutRecord
from callstream.records import HeadersError, read_raw_headers
from callstream.service import serve_metrics
from callstream.settings import KafkaSettings, NormalizerSettings
from normalize import NormalizeError, normalize
from schemas import RawRef

STAGE = "normalize"
POLL_MS = 200
"""How long one fetch waits for records, so also how soon an idle service notices `stop`."""
PROGRESS_EVERY_S = 10.0

log = structlog.get_logger("callstream.normalizer")
_encoder = msgspec.json.Encoder()

Raw = ConsumerRecord[bytes, bytes]
Batch = dict[TopicPartition, list[Raw]]


class Metrics:
    """The service's Prometheus metrics, in a registry of their own: tests and the benchmark run
    the service several times in one process, and a second registration would fail."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "normalizer_consumed_records",
            "Raw records read from calls.raw.",
            registry=self.registry,
        )
        self.produced = Counter(
            "normalizer_produced_events",
            "Events acknowledged on calls.events.",
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "normalizer_dead_lettered_records",
            "Raw records acknowledged on calls.dlq.",
            registry=self.registry,
        )
        self.lag = Gauge(
            "normalizer_lag_records",
            "Highwater minus position of each calls.raw partition.",
            ["partition"],
            registry=self.registry,
        )


async def serve(
    settings: NormalizerSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Normalize calls.raw as consumer group `settings.group_id` until `stop` is set.

    On `stop` the batch in hand is produced and committed, then the consumer leaves the group.
    Records that fail go to calls.dlq. If the producer cannot deliver, this raises and commits
    nothing of that batch, so whoever next owns the partitions redoes it. `metrics` lets a
    caller (the benchmark) read the counters; by default each call has its own registry.
    """
    metrics = metrics or Metrics()
    await kafka_io.ensure_topics(kafka)
    serve_metrics(settings.metrics_port, metrics.registry)
    async with (
        kafka_io.producer(kafka) as producer,
        kafka_io.consumer(kafka, topics.RAW, group_id=settings.group_id) as consumer,
    ):  # the consumer stops first, leaving the group: its partitions move on at once
        await _loop(consumer, producer, settings.max_batch, stop, metrics)


async def _loop(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    max_batch: int,
    stop: asyncio.Event,
    metrics: Metrics,
) -> None:
    log.info("normalizer_started", topic=topics.RAW)
    progress = _Progress()
    while not stop.is_set():
        batch: Batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=max_batch)
        if batch:
            progress.add(*await _process(consumer, producer, batch, metrics))
        progress.maybe_log()
    progress.log()
    log.info("normalizer_stopped")


async def _process(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, batch: Batch, metrics: Metrics
) -> tuple[int, int, int]:
    """Normalize, produce, await every ack, then commit: the order at-least-once relies on.

    Returns how many raw records were consumed, events produced and records dead-lettered.
    """
    events, dead = route(chain.from_iterable(batch.values()))
    await asyncio.gather(
        kafka_io.send_all(producer, topics.EVENTS, events),
        kafka_io.send_all(producer, topics.DLQ, dead),
    )
    await kafka_io.commit(consumer, {tp: records[-1].offset + 1 for tp, records in batch.items()})
    consumed = sum(map(len, batch.values()))
    metrics.consumed.inc(consumed)
    metrics.produced.inc(len(events))
    metrics.dead_lettered.inc(len(dead))
    for tp, records in batch.items():
        if (highwater := consumer.highwater(tp)) is not None:
            metrics.lag.labels(str(tp.partition)).set(highwater - records[-1].offset - 1)
    return consumed, len(events), len(dead)


def route(records: Iterable[Raw], stage: str = STAGE) -> tuple[list[OutRecord], list[OutRecord]]:
    """Each raw record's events, or the record as a dead letter of `stage` with its error.

    Shared with replay and dead-letter redrive, which name their own stage.
    """
    events: list[OutRecord] = []
    dead: list[OutRecord] = []
    for record in records:
        try:
            events.extend(events_of(record))
        except (HeadersError, NormalizeError) as exc:
            dead.append(kafka_io.dead_letter(record, stage, str(exc)))
        except Exception as exc:
            # A bug rather than bad input: say where, and keep the partition moving.
            log.exception(
                "normalize_crashed",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            dead.append(
                kafka_io.dead_letter(record, stage, f"unexpected {type(exc).__name__}: {exc}")
            )
    return events, dead


def events_of(record: Raw) -> list[OutRecord]:
    """The canonical events of one raw record, ready for calls.events; raises what fails."""
    meta = read_raw_headers(record.headers)
    return [
        OutRecord(
            event.session_key.encode(),
            _encoder.encode(event),
            cloudevents.headers(
                event.event_id, event.provider, cloudevents.EVENT_TYPE, event.occurred_at
            ),
        )
        for event in normalize(
            meta.provider,
            record.value or b"",
            received_at=meta.received_at,
            context=meta.context,
            raw=RawRef(record.topic, record.partition, record.offset),
        )
    ]


class _Progress:
    """Counts logged every PROGRESS_EVERY_S: a line per batch would flood the log at high rates."""

    def __init__(self) -> None:
        self._restart()

    def _restart(self) -> None:
        self.since = time.monotonic()
        self.consumed = self.produced = self.dead_lettered = 0

    def add(self, consumed: int, produced: int, dead_lettered: int) -> None:
        self.consumed += consumed
        self.produced += produced
        self.dead_lettered += dead_lettered

    def maybe_log(self) -> None:
        if time.monotonic() - self.since >= PROGRESS_EVERY_S:
            self.log()

    def log(self) -> None:
        now = time.monotonic()
        if self.consumed:
            log.info(
                "normalizer_progress",
                consumed=self.consumed,
                produced=self.produced,
                dead_lettered=self.dead_lettered,
                records_per_s=round(self.consumed / (now - self.since)),
            )
        self._restart()
