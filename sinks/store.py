"""The store sink: calls.events and calls.sessions → a SQLite or PostgreSQL store.

A thin loop around a `sinks.backend.Backend`. Each fetched batch is decoded, written in one
transaction, and only after that transaction committed (and the batch's dead letters were
acknowledged) are its offsets committed. After a crash or a rebalance the batch is redone, and
the backend's idempotent writes (events by event_id, sessions by event_count) make the redo a
no-op: at-least-once delivery, effectively-once rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram

from callstream import kafka as kafka_io
from callstream import topics
from callstream.kafka import OutRecord
from callstream.service import serve_metrics
from callstream.settings import KafkaSettings, StoreSettings
from schemas import CallEvent, SessionRecord
from sinks.backend import Backend, backend_for

STAGE = "store"
POLL_MS = 200
"""How long one fetch waits for records, so also how soon an idle service notices `stop`."""

log = structlog.get_logger("callstream.store")
_event = msgspec.json.Decoder(CallEvent)
_session = msgspec.json.Decoder(SessionRecord)

Record = ConsumerRecord[bytes, bytes]
Batch = dict[TopicPartition, list[Record]]


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "store_written_events",
            "Events inserted (duplicates of stored events are not counted).",
            registry=self.registry,
        )
        self.sessions = Counter(
            "store_written_sessions",
            "Session rows inserted or moved forward (older or equal records are not counted).",
            registry=self.registry,
        )
        self.batches = Counter(
            "store_batches", "Batches written and committed.", registry=self.registry
        )
        self.dead_lettered = Counter(
            "store_dead_lettered_records",
            "Records that could not be decoded, acknowledged on calls.dlq.",
            registry=self.registry,
        )
        self.write_seconds = Histogram(
            "store_write_seconds",
            "Time to write one batch in its transaction.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )


async def serve(
    settings: StoreSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Store calls.events and calls.sessions as consumer group `settings.group_id` until `stop`.

    The store is migrated before the group is joined. On `stop` the batch in hand is written
    and committed, then the consumer leaves the group. Raises SettingsError for a bad store URL,
    and what the backend or the producer raises when a batch cannot be written or dead-lettered
    (nothing of that batch is committed, so whoever next owns the partitions redoes it).
    """
    metrics = metrics or Metrics()
    store = backend_for(settings.url)
    await kafka_io.ensure_topics(kafka)
    applied = await store.open()
    try:
        log.info("store_opened", backend=type(store).__name__, migrations_applied=applied)
        serve_metrics(settings.metrics_port, metrics.registry)
        async with (
            kafka_io.producer(kafka) as producer,
            kafka_io.consumer(
                kafka, topics.EVENTS, topics.SESSIONS, group_id=settings.group_id
            ) as consumer,
        ):  # the consumer stops first, leaving the group: its partitions move on at once
            await _loop(consumer, producer, store, settings.max_batch, stop=stop, metrics=metrics)
    finally:
        await store.close()


async def _loop(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    store: Backend,
    max_batch: int,
    *,
    stop: asyncio.Event,
    metrics: Metrics,
) -> None:
    log.info("store_started", topics=[topics.EVENTS, topics.SESSIONS])
    while not stop.is_set():
        batch: Batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=max_batch)
        if batch:
            await _process(consumer, producer, store, batch, metrics)
    log.info("store_stopped")


async def _process(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    store: Backend,
    batch: Batch,
    metrics: Metrics,
) -> None:
    """Decode, write in one transaction and dead-letter, then commit: the order that
    at-least-once relies on."""
    events, sessions, dead = _decode(record for records in batch.values() for record in records)
    started = time.perf_counter()
    written, _ = await asyncio.gather(
        store.write(events, sessions), kafka_io.send_all(producer, topics.DLQ, dead)
    )
    metrics.write_seconds.observe(time.perf_counter() - started)
    await kafka_io.commit(consumer, {tp: records[-1].offset + 1 for tp, records in batch.items()})
    metrics.events.inc(written.events)
    metrics.sessions.inc(written.sessions)
    metrics.batches.inc()
    metrics.dead_lettered.inc(len(dead))
    log.info(
        "store_batch_written",
        records=sum(map(len, batch.values())),
        events=written.events,
        sessions=written.sessions,
        dead_lettered=len(dead),
    )


def _decode(
    records: Iterable[Record],
) -> tuple[list[CallEvent], list[SessionRecord], list[OutRecord]]:
    """Each record as the Struct of its topic, or as a dead letter carrying its error."""
    events: list[CallEvent] = []
    sessions: list[SessionRecord] = []
    dead: list[OutRecord] = []
    for record in records:
        try:
            if record.topic == topics.EVENTS:
                events.append(_event.decode(record.value or b""))
            else:
                sessions.append(_session.decode(record.value or b""))
        except msgspec.DecodeError as exc:
            what = "call event" if record.topic == topics.EVENTS else "session record"
            dead.append(kafka_io.dead_letter(record, STAGE, f"not a {what}: {exc}"))
    return events, sessions, dead
