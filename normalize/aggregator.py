"""The session aggregator: calls.events → calls.sessions, each session's legs folded by `fold`.

State is the latest SessionRecord of each live session, in memory, per assigned partition of
calls.events. calls.sessions has the same keys, partitioner and partition count, so its
partition p holds exactly the sessions of events partition p: on assignment p's state is rebuilt
by reading that partition from the beginning (in offset order, so the last version of a key
wins), and on revocation it is dropped. A batch's offsets are committed only after the sessions
it changed are acknowledged, so events replayed after a crash or a rebalance fold into the
restored state as duplicates: a session is neither lost nor regressed.

Time is received time (contract 1.1), per partition: sessions open for `open_timeout_s` after
their last report was received are closed as `unknown` (`sessions.close`), and sessions final for
`final_retention_s` are evicted (their keys remembered for a day, so that a late report of one is
ignored rather than starting a partial session that would overwrite the complete one). Both
happen as a partition's clock passes them (`Partition`): the received time of the records read,
and the wall clock, at a sweep every `sweep_interval_s`, while the partition is caught up.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from datetime import UTC, datetime

import msgspec
import structlog
from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge

from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import OutRecord
from foundation.runtime import (
    BaseHandler,
    Clocks,
    Emit,
    Handled,
    Metrics,
    Record,
    Rejected,
    Runtime,
)
from foundation.settings import AggregatorSettings, KafkaSettings
from normalize.sessions import close, fold
from schemas import CallEvent, SessionRecord, cloudevents, topics
from schemas.topics import Stage

EVICTED_HORIZON_S = 86_400.0
"""How long the key of an evicted session is remembered: reports later than this are not
expected, and forgetting bounds the memory the keys take."""

log = structlog.get_logger("callstream.aggregator")
_event = msgspec.json.Decoder(CallEvent)
_session = msgspec.json.Decoder(SessionRecord)
_encoder = msgspec.json.Encoder()


class AggregatorError(CallstreamError):
    """The aggregator cannot keep its state correct (topics not co-partitioned, restore failed)."""


class Partition:
    """The sessions of one partition: live records, the keys evicted lately, and when each live
    session is due, on the partition's received-time clock.

    A session is due `open_timeout_s` after its last report was received while it is open (then
    it is closed as `unknown`), and `final_retention_s` after that while it is final (then it is
    evicted). Sessions come due as the clock passes their time: before a record received later is
    folded (so a replay decides exactly what the live run did, whatever its batches), and on the
    wall clock at a sweep while the partition is read to its end.
    """

    def __init__(self, settings: AggregatorSettings) -> None:
        self.settings = settings
        self.live: dict[str, SessionRecord] = {}
        self.evicted: OrderedDict[str, float] = OrderedDict()
        """session_key → the received time it was evicted at (epoch s), oldest first."""
        self.due: list[tuple[float, str]] = []
        """A heap of (when due, session_key); an entry whose session has moved on is skipped."""
        self.reason = f"no final status within {settings.open_timeout_s:g} s"

    def put(self, session: SessionRecord) -> None:
        self.live[session.session_key] = session
        heapq.heappush(self.due, (self._due(session), session.session_key))

    def _due(self, session: SessionRecord) -> float:
        after = self.settings.final_retention_s if session.final else self.settings.open_timeout_s
        return session.received.timestamp() + after

    def restore(self, session: SessionRecord) -> None:
        """Apply one stored version; versions come in offset order, so the last one wins."""
        self.live[session.session_key] = session
        self.evicted.pop(session.session_key, None)

    def restored(self) -> None:
        """Once every stored version is applied: each live session's due time."""
        self.due = [(self._due(session), key) for key, session in self.live.items()]
        heapq.heapify(self.due)

    def expire(self, now: float) -> list[SessionRecord]:
        """Evict the final sessions and close the open ones that are due by `now`; return the
        closed ones. Forgets the evicted keys older than EVICTED_HORIZON_S."""
        closed: list[SessionRecord] = []
        due, live = self.due, self.live
        while due and due[0][0] < now:
            when, key = heapq.heappop(due)
            session = live.get(key)
            if session is None or self._due(session) != when:
                continue  # evicted already, or moved on since
            if session.final:
                del live[key]
                self.evicted[key] = when
            else:
                closed_session = close(session, datetime.fromtimestamp(when, UTC), self.reason)
                self.put(closed_session)
                closed.append(closed_session)
        while self.evicted and next(iter(self.evicted.values())) < now - EVICTED_HORIZON_S:
            self.evicted.popitem(last=False)
        return closed


async def serve(
    settings: AggregatorSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Aggregate calls.events as consumer group `settings.group_id` until `stop` is set.

    Raises AggregatorError when calls.events and calls.sessions differ in partition count or a
    partition's state cannot be restored.
    """
    await kafka_io.ensure_topics(kafka)
    await _check_co_partitioned(kafka)
    metrics = metrics or Metrics(Aggregator.service)
    aggregator = Aggregator(settings, kafka, metrics)
    runtime = Runtime(aggregator, kafka, metrics_port=settings.metrics_port, metrics=metrics)
    await runtime.run(stop)


async def _check_co_partitioned(kafka: KafkaSettings) -> None:
    events_topic, sessions_topic = kafka.topic(topics.EVENTS), kafka.topic(topics.SESSIONS)
    async with kafka_io.producer(kafka) as producer:
        events = len(await producer.partitions_for(events_topic))
        sessions = len(await producer.partitions_for(sessions_topic))
    if events != sessions:
        raise AggregatorError(
            f"{events_topic} has {events} partitions and {sessions_topic} {sessions}: the "
            "aggregator restores a partition's sessions from the same-numbered partition, so "
            "both topics need the same partition count"
        )


class Aggregator(BaseHandler[None]):
    """The sessions of the assigned partitions of calls.events, folded event by event. A
    partition's state is restored from calls.sessions before any of its events is folded, and
    dropped when it is revoked (the runtime has committed the batch in hand by then)."""

    service = "aggregator"
    stage = Stage.AGGREGATE
    subscribe = (topics.EVENTS,)

    def __init__(
        self, settings: AggregatorSettings, kafka: KafkaSettings, metrics: Metrics
    ) -> None:
        self.settings, self.kafka = settings, kafka
        self.events_topic = kafka.topic(topics.EVENTS)
        self.group_id, self.max_batch = settings.group_id, settings.max_batch
        self.tick_every_s = settings.sweep_interval_s
        self.partitions: dict[int, Partition] = {}
        self.changed: dict[str, SessionRecord] = {}
        """Sessions the batch in hand changed, by key."""
        self.late = Counter(
            "callstream_aggregator_late_events",
            "Events of sessions already evicted from memory, ignored.",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.timed_out = Counter(
            "callstream_aggregator_timed_out_sessions",
            "Sessions closed as unknown for want of a final status.",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.in_memory = Gauge(
            "callstream_aggregator_sessions_in_memory",
            "Live sessions held for the assigned partitions.",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip

    def handle(self, record: Record) -> Handled[None]:
        try:
            event = _event.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            raise Rejected(f"not a call event: {exc}") from exc
        partition = self.partitions[record.partition]
        closed = self._closed(partition.expire(event.received_at.timestamp()))
        key = event.session_key
        session = partition.live.get(key)
        if session is None and key in partition.evicted:
            self.late.inc()
            return Handled(closed)
        folded = fold(session, event)
        if folded is not None:
            partition.put(folded)
            self.changed[key] = folded
        return Handled(closed)

    def _closed(self, closed: list[SessionRecord]) -> list[Emit]:
        """Closes are produced at once, each its own version (never merged with a report that
        follows it in the batch): live and replayed runs then show the same versions."""
        for session in closed:
            self.changed.pop(session.session_key, None)  # the close carries what it folded
        self.timed_out.inc(len(closed))
        return [(topics.SESSIONS, session_record(session)) for session in closed]

    def flush(self) -> list[Emit]:
        """Each session the batch changed, once, in its latest version."""
        emits = [(topics.SESSIONS, session_record(session)) for session in self.changed.values()]
        self.changed.clear()
        self._count_in_memory()
        return emits

    async def tick(self, clocks: Clocks) -> list[Emit]:
        """Sessions due on each partition's clock (the wall clock while it is caught up)."""
        before = self._count_in_memory()
        closed = [
            emit
            for number, partition in self.partitions.items()
            for emit in self._closed(
                partition.expire(clocks.now(TopicPartition(self.events_topic, number)))
            )
        ]
        after = self._count_in_memory()
        (log.info if closed or after != before else log.debug)(
            "aggregator_swept", in_memory=after, evicted=before - after, timed_out=len(closed)
        )
        return closed

    def _count_in_memory(self) -> int:
        count = sum(len(partition.live) for partition in self.partitions.values())
        self.in_memory.set(count)
        return count

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self.partitions.pop(tp.partition, None)
        self._count_in_memory()

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        missing = sorted(tp.partition for tp in partitions if tp.partition not in self.partitions)
        self.partitions.update(await self._restore(missing))
        self._count_in_memory()

    async def _restore(self, partitions: list[int]) -> dict[int, Partition]:
        """Each partition's sessions, read from calls.sessions up to its highwater."""
        restored = {p: Partition(self.settings) for p in partitions}
        if not partitions:
            return restored
        started = time.monotonic()
        whole = (None, None)
        ranges = {TopicPartition(self.kafka.topic(topics.SESSIONS), p): whole for p in partitions}
        async for tp, records in kafka_io.read_ranges(self.kafka, ranges):
            _restore_all(restored[tp.partition], records)
        for partition in restored.values():
            partition.restored()
        log.info(
            "sessions_restored",
            partitions=partitions,
            sessions=sum(len(partition.live) for partition in restored.values()),
            seconds=round(time.monotonic() - started, 3),
        )
        return restored


def _restore_all(partition: Partition, records: Iterable[Record]) -> None:
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
        partition.restore(session)


def session_record(session: SessionRecord) -> OutRecord:
    """`session` as calls.sessions carries it: keyed by session_key, with CloudEvents headers."""
    key = session.session_key
    return OutRecord(
        key.encode(),
        _encoder.encode(session),
        [
            *cloudevents.headers(
                f"{key}:{session.event_count}",
                session.provider,
                cloudevents.SESSION_TYPE,
                session.updated_at,
            ),
            (topics.RECEIVED_AT, _encoder.encode(session.received)[1:-1]),
        ],
    )
