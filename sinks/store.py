"""The store sink: calls.events and calls.sessions → a SQLite or PostgreSQL store.

A handler on the consumer runtime (`foundation.runtime`): each record is decoded as the Struct
of its topic, and a batch's items are written in one transaction of the backend before the
batch's offsets are committed. After a crash or a rebalance the batch is redone, and the
backend's idempotent writes (events by event_id, sessions by event_count) make the redo a no-op:
at-least-once delivery, effectively-once rows. A record the store cannot write is found by the
runtime's bisection and dead-lettered (stage `store`); a database that is away is waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import structlog
from prometheus_client import Counter

from foundation import kafka as kafka_io
from foundation.runtime import BaseHandler, Handled, Metrics, Record, Rejected, Runtime
from foundation.settings import KafkaSettings, StoreSettings
from schemas import CallEvent, SessionRecord, topics
from schemas.topics import Stage
from sinks.backend import Backend
from sinks.stores import backend_for

log = structlog.get_logger("callstream.store")
_event = msgspec.json.Decoder(CallEvent)
_session = msgspec.json.Decoder(SessionRecord)

Item = CallEvent | SessionRecord


class StoreSink:
    """A batch's events and sessions, written in one transaction of `backend`."""

    def __init__(self, backend: Backend, metrics: Metrics) -> None:
        self.backend = backend
        self.transient = backend.transient
        rows = Counter(
            "callstream_store_written_rows",
            "Rows inserted or moved forward (duplicates and older session versions are not).",
            ["service", "table"], registry=metrics.registry,
        )  # fmt: skip
        self.events, self.sessions = (
            rows.labels("store", "events"),
            rows.labels("store", "sessions"),
        )

    async def write(self, items: Sequence[Item]) -> None:
        events = [item for item in items if isinstance(item, CallEvent)]
        sessions = [item for item in items if isinstance(item, SessionRecord)]
        written = await self.backend.write(events, sessions)
        self.events.inc(written.events)
        self.sessions.inc(written.sessions)


class Store(BaseHandler[Item]):
    service = "store"
    stage = Stage.STORE
    subscribe = (topics.EVENTS, topics.SESSIONS)

    def __init__(self, settings: StoreSettings, kafka: KafkaSettings, sink: StoreSink) -> None:
        self.group_id, self.max_batch = settings.group_id, settings.max_batch
        self.sink = sink
        self.events_topic = kafka.topic(topics.EVENTS)

    def handle(self, record: Record) -> Handled[Item]:
        is_event = record.topic == self.events_topic
        try:
            item = (_event if is_event else _session).decode(record.value or b"")
        except msgspec.DecodeError as exc:
            what = "call event" if is_event else "session record"
            raise Rejected(f"not a {what}: {exc}") from exc
        return Handled(item=item)


async def serve(
    settings: StoreSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Store calls.events and calls.sessions as consumer group `settings.group_id` until `stop`.

    The store is migrated before the group is joined. Raises SettingsError for a bad store URL,
    StoreTaken when another store writes the same SQLite file.
    """
    metrics = metrics or Metrics(Store.service)
    store = backend_for(settings.url)
    await kafka_io.ensure_topics(kafka)
    applied = await store.open()
    try:
        await store.claim()
        log.info("store_opened", backend=type(store).__name__, migrations_applied=applied)
        handler = Store(settings, kafka, StoreSink(store, metrics))
        await Runtime(handler, kafka, metrics_port=settings.metrics_port, metrics=metrics).run(stop)
    finally:
        await store.close()
