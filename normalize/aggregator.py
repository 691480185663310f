"""The session aggregator: calls.events → calls.sessions, each session's legs folded by `fold`.

State is the latest SessionRecord of each live session, in memory, per assigned partition of
calls.events. calls.sessions has the same keys, partitioner and partition count, so its
partition p holds exactly the sessions of events partition p: on assignment p's state is rebuilt
by reading that partition from the beginning (in offset order, so the last version of a key
wins), and on revocation it is dropped. A batch's offsets are committed only after the sessions
it changed are acknowledged, so events replayed after a crash or a rebalance fold into the
restored state as duplicates: a session is neither lost nor regressed.

Memory is bounded by a sweep every `sweep_interval_s`: sessions final for `final_retention_s`
are evicted (their keys remembered for a day, so that a late report of one is ignored rather
than starting a partial session that would overwrite the complete one), and sessions open for
`open_timeout_s` after their last report are closed as `unknown` (`sessions.close`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from datetime import UTC, datetime

import msgspec
import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

from callstream import cloudevents, topics
from callstream import kafka as kafka_io
from callstream.errors import CallstreamError
from callstream.kafka import OutRecord
from callstream.service import serve_metrics
from callstream.settings import AggregatorSettings, KafkaSettings
from normalize.sessions import close, fold
from schemas import CallEvent, SessionRecord

STAGE = "aggregate"
POLL_MS = 200
"""How long one fetch waits for records, so also how soon an idle service notices `stop`."""
RESTORE_POLL_MS = 20
"""How long a restore fetch waits: once a partition is read to its end, fetches return nothing
after this long, so it bounds how long reaching the end takes to notice."""
EVICTED_HORIZON_S = 86_400.0
"""How long the key of an evicted session is remembered: reports later than this are not
expected, and forgetting bounds the memory the keys take."""

log = structlog.get_logger("callstream.aggregator")
_event = msgspec.json.Decoder(CallEvent)
_session = msgspec.json.Decoder(SessionRecord)
_encoder = msgspec.json.Encoder()

Record = ConsumerRecord[bytes, bytes]
Batch = dict[TopicPartition, list[Record]]


class AggregatorError(CallstreamError):
    """The aggregator cannot keep its state correct (topics not co-partitioned, restore failed)."""


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "aggregator_consumed_events", "Records read from calls.events.", registry=self.registry
        )
        self.produced = Counter(
            "aggregator_produced_sessions",
            "Session records acknowledged on calls.sessions.",
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "aggregator_dead_lettered_records",
            "Records of calls.events that are not call events, acknowledged on calls.dlq.",
            registry=self.registry,
        )
        self.late = Counter(
            "aggregator_late_events",
            "Events of sessions already evicted from memory, ignored.",
            registry=self.registry,
        )
        self.timed_out = Counter(
            "aggregator_timed_out_sessions",
            "Sessions closed as unknown for want of a final status.",
            registry=self.registry,
        )
        self.in_memory = Gauge(
            "aggregator_sessions_in_memory",
            "Live sessions held for the assigned partitions.",
            registry=self.registry,
        )

    def totals(self) -> dict[str, int]:
        """The counters' values so far, for the periodic progress log."""
        return {
            name: int(self.registry.get_sample_value(f"aggregator_{name}_total") or 0)
            for name in (
                "consumed_events",
                "produced_sessions",
                "dead_lettered_records",
                "late_events",
            )
        }


class Partition:
    """The sessions of one partition: live records, and the keys evicted in the last day."""

    def __init__(self) -> None:
        self.live: dict[str, SessionRecord] = {}
        self.evicted: OrderedDict[str, float] = OrderedDict()
        """session_key → when it was evicted (epoch s), oldest first."""

    def restore(self, session: SessionRecord, now: datetime, retention_s: float) -> None:
        """Apply one stored version; versions come in offset order, so the last one wins."""
        key = session.session_key
        if session.final and (now - session.updated_at).total_seconds() > retention_s:
            self.live.pop(key, None)
            self.evicted[key] = session.updated_at.timestamp() + retention_s
        else:
            self.live[key] = session
            self.evicted.pop(key, None)

    def sweep(self, now: datetime, settings: AggregatorSettings) -> list[SessionRecord]:
        """Evict sessions final for the retention, forget old evictions, and return the sessions
        this closes for having had no final status within the open timeout."""
        closed = []
        reason = f"no final status within {settings.open_timeout_s:g} s"
        stamp = now.timestamp()
        for key, session in list(self.live.items()):
            age = (now - session.updated_at).total_seconds()
            if session.final and age > settings.final_retention_s:
                del self.live[key]
                self.evicted[key] = stamp
            elif not session.final and age > settings.open_timeout_s:
                self.live[key] = closed_session = close(session, now, reason)
                closed.append(closed_session)
        while self.evicted and next(iter(self.evicted.values())) < stamp - EVICTED_HORIZON_S:
            self.evicted.popitem(last=False)
        return closed


async def serve(
    settings: AggregatorSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Aggregate calls.events as consumer group `settings.group_id` until `stop` is set.

    On `stop` the batch in hand is produced and committed, then the consumer leaves the group.
    Raises AggregatorError when calls.events and calls.sessions differ in partition count or a
    partition's state cannot be restored, and what the producer raises if it cannot deliver
    (nothing of that batch is committed, so whoever next owns the partitions redoes it).
    """
    metrics = metrics or Metrics()
    await kafka_io.ensure_topics(kafka)
    serve_metrics(settings.metrics_port, metrics.registry)
    async with kafka_io.producer(kafka) as producer:
        await _check_co_partitioned(producer)
        aggregator = _Aggregator(settings, kafka, producer, metrics)
        consumer = kafka_io.consumer(kafka, group_id=settings.group_id)
        consumer.subscribe([topics.EVENTS], listener=aggregator)
        async with consumer:  # stopping it leaves the group: its partitions move on at once
            await aggregator.run(consumer, stop)


async def _check_co_partitioned(producer: AIOKafkaProducer) -> None:
    events = len(await producer.partitions_for(topics.EVENTS))
    sessions = len(await producer.partitions_for(topics.SESSIONS))
    if events != sessions:
        raise AggregatorError(
            f"{topics.EVENTS} has {events} partitions and {topics.SESSIONS} {sessions}: the "
            "aggregator restores a partition's sessions from the same-numbered partition, so "
            "both topics need the same partition count"
        )


class _Aggregator(ConsumerRebalanceListener):
    """The loop and its state. The lock keeps a rebalance out of a batch in hand: a revoked
    partition's last batch is produced and committed before its state is dropped and the group
    moves it, and an assigned partition is restored before any of its events is folded."""

    def __init__(
        self,
        settings: AggregatorSettings,
        kafka: KafkaSettings,
        producer: AIOKafkaProducer,
        metrics: Metrics,
    ) -> None:
        self.settings, self.kafka, self.producer, self.metrics = settings, kafka, producer, metrics
        self.partitions: dict[int, Partition] = {}
        self.lock = asyncio.Lock()
        self.restore_failed: BaseException | None = None

    async def run(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        log.info("aggregator_started", topic=topics.EVENTS)
        next_sweep = time.monotonic() + self.settings.sweep_interval_s
        while not stop.is_set():
            batch: Batch = await consumer.getmany(
                timeout_ms=POLL_MS, max_records=self.settings.max_batch
            )
            if self.restore_failed is not None:  # aiokafka logs and swallows listener errors
                raise AggregatorError("restoring sessions failed") from self.restore_failed
            if batch:
                await self._process(consumer, batch)
            if time.monotonic() >= next_sweep:
                await self._sweep()
                next_sweep = time.monotonic() + self.settings.sweep_interval_s
        log.info("aggregator_stopped")

    async def _process(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        """Fold, produce each changed session once, await every ack, then commit."""
        async with self.lock:
            batch = {
                tp: records for tp, records in batch.items() if tp.partition in self.partitions
            }  # records fetched before a rebalance took their partition are not ours to fold
            if not batch:
                return
            changed: dict[str, SessionRecord] = {}
            dead: list[OutRecord] = []
            late = sum(
                _fold_all(self.partitions[tp.partition], records, changed, dead)
                for tp, records in batch.items()
            )
            await asyncio.gather(
                kafka_io.send_all(
                    self.producer, topics.SESSIONS, map(session_record, changed.values())
                ),
                kafka_io.send_all(self.producer, topics.DLQ, dead),
            )
            await kafka_io.commit(
                consumer, {tp: records[-1].offset + 1 for tp, records in batch.items()}
            )
        self.metrics.consumed.inc(sum(map(len, batch.values())))
        self.metrics.produced.inc(len(changed))
        self.metrics.dead_lettered.inc(len(dead))
        self.metrics.late.inc(late)
        self._count_in_memory()

    async def _sweep(self) -> None:
        now = datetime.now(UTC)
        async with self.lock:
            before = self._count_in_memory()
            closed = [
                session
                for partition in self.partitions.values()
                for session in partition.sweep(now, self.settings)
            ]
            await kafka_io.send_all(self.producer, topics.SESSIONS, map(session_record, closed))
            after = self._count_in_memory()
        self.metrics.produced.inc(len(closed))
        self.metrics.timed_out.inc(len(closed))
        log.info(
            "aggregator_progress",
            in_memory=after,
            evicted=before - after,
            timed_out=len(closed),
            **self.metrics.totals(),
        )

    def _count_in_memory(self) -> int:
        count = sum(len(partition.live) for partition in self.partitions.values())
        self.metrics.in_memory.set(count)
        return count

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        async with self.lock:  # after the batch in hand is committed, while still ours
            for tp in revoked:
                self.partitions.pop(tp.partition, None)
            self._count_in_memory()

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        async with self.lock:
            missing = sorted(tp.partition for tp in assigned if tp.partition not in self.partitions)
            try:
                self.partitions.update(await self._restore(missing))
            except Exception as exc:
                self.restore_failed = exc
                raise
            self._count_in_memory()

    async def _restore(self, partitions: list[int]) -> dict[int, Partition]:
        """Each partition's sessions, read from calls.sessions up to its highwater."""
        restored = {p: Partition() for p in partitions}
        if not partitions:
            return restored
        started, now = time.monotonic(), datetime.now(UTC)
        consumer = kafka_io.consumer(self.kafka, group_id=None, fetch_max_wait_ms=RESTORE_POLL_MS)
        await consumer.start()
        try:
            pending = {TopicPartition(topics.SESSIONS, p) for p in partitions}
            consumer.assign(list(pending))
            await consumer.seek_to_beginning()
            while pending:
                fetched: Batch = await consumer.getmany(*pending, timeout_ms=RESTORE_POLL_MS)
                for tp, records in fetched.items():
                    _restore_all(restored[tp.partition], records, now, self.settings)
                pending = {tp for tp in pending if not await kafka_io.at_end(consumer, tp)}
        finally:
            await consumer.stop()
        log.info(
            "sessions_restored",
            partitions=partitions,
            sessions=sum(len(partition.live) for partition in restored.values()),
            seconds=round(time.monotonic() - started, 3),
        )
        return restored


def _fold_all(
    partition: Partition,
    records: Iterable[Record],
    changed: dict[str, SessionRecord],
    dead: list[OutRecord],
) -> int:
    """Fold `records` into `partition`, noting what changed and what is dead; return how many
    were late reports of evicted sessions. The hot path: keep it lean."""
    live, evicted, late = partition.live, partition.evicted, 0
    for record in records:
        try:
            event = _event.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            dead.append(kafka_io.dead_letter(record, STAGE, f"not a call event: {exc}"))
            continue
        key = event.session_key
        session = live.get(key)
        if session is None and key in evicted:
            late += 1
            continue
        folded = fold(session, event)
        if folded is not None:
            live[key] = changed[key] = folded
    return late


def _restore_all(
    partition: Partition, records: Iterable[Record], now: datetime, settings: AggregatorSettings
) -> None:
    for record in records:
        try:
            session = _session.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            log.error(
                "session_record_unreadable",
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            continue
        partition.restore(session, now, settings.final_retention_s)


def session_record(session: SessionRecord) -> OutRecord:
    """`session` as calls.sessions carries it: keyed by session_key, with CloudEvents headers."""
    key = session.session_key
    return OutRecord(
        key.encode(),
        _encoder.encode(session),
        cloudevents.headers(
            f"{key}:{session.event_count}",
            session.provider,
            cloudevents.SESSION_TYPE,
            session.updated_at,
        ),
    )
