"""The session aggregator: calls.events → calls.sessions, each session's legs folded by `fold`.

State is the latest SessionRecord of each session of the assigned partitions of calls.events, in
a RocksDB database per partition under `state_dir` (`normalize.state`), with calls.sessions as
its changelog and source of truth. calls.sessions has the same keys, partitioner and partition
count, so its partition p holds exactly the sessions of events partition p. A batch goes: events
folded into the batch's pending changes (read through to the database); the sessions it changed
produced; once acknowledged, the changes and the changelog offset they reach written to the
database in one WriteBatch (`Handler.acknowledged`); then the events' offsets committed. So the
database never holds what calls.sessions does not, and a crash anywhere leaves it at most behind:
on assignment a partition's database is opened and calls.sessions read from its offset to the
highwater (the tail), or from the beginning into an empty database when it has none or its
offset is not within the topic (a new machine, another cluster). Events replayed after a crash
or a rebalance fold into the restored state as duplicates: a session is neither lost nor
regressed. A revoked partition's database is closed and kept, for a quick return.

Time is received time (contract 1.1), per partition: sessions open for `open_timeout_s` after
their last report was received are closed as `unknown` (`sessions.close`), and sessions final for
`final_retention_s` are evicted (their keys kept in the database for EVICTED_HORIZON_S, so that
a late report of one is ignored rather than starting a partial session that would overwrite the
complete one). Both happen as a partition's clock passes them (`Partition`): the received time
of the records read, and the wall clock, at a sweep every `sweep_interval_s`, while the partition
is caught up.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from functools import partial
from itertools import groupby
from operator import attrgetter
from pathlib import Path

import msgspec
import structlog
from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge
from rocksdict import WriteBatch

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
from normalize.state import (
    DUE,
    EVICTED,
    StateDir,
    Store,
    due_entry,
    due_us,
    evicted_value,
    evicted_when,
    session_entry,
)
from schemas import CallEvent, SessionRecord, cloudevents, topics
from schemas.events import UtcTime
from schemas.topics import Stage

EVICTED_HORIZON_S = 86_400.0
"""How long the key of an evicted session is kept: reports later than this are not expected,
and forgetting bounds the disk the keys take."""
SWEEP_LIMIT = 10_000
"""Due sessions a partition's sweeps handle between two writes at most, so that a backlog of
them (the first sweep after restoring a long history) never holds more than that in memory; a
session left due is handled by a later sweep, or as soon as a report of it is read."""

log = structlog.get_logger("callstream.aggregator")
_event = msgspec.json.Decoder(CallEvent)
_session = msgspec.json.Decoder(SessionRecord)
_encoder = msgspec.json.Encoder()


class _Stored(msgspec.Struct):
    """What a restore reads of a session record: enough to know when it is due."""

    session_key: str
    final: bool
    updated_at: UtcTime
    received_at: UtcTime | None = None


_stored = msgspec.json.Decoder(_Stored)

State = SessionRecord | float
_NEVER = 1 << 63
_UNKNOWN = -(1 << 63)
"""A session's state: its latest record, or, once evicted, the received time it was evicted at."""


class AggregatorError(CallstreamError):
    """The aggregator cannot keep its state correct (topics not co-partitioned, restore failed)."""


class Partition:
    """The sessions of one partition: its database, and the changes of the batch in hand
    (`pending`, read before the database), written with the changelog offset once acknowledged.

    A session is due `open_timeout_s` after its last report was received while it is open (then
    it is closed as `unknown`), and `final_retention_s` after that while it is final (then it is
    evicted); an evicted key is due EVICTED_HORIZON_S after its eviction (then it is forgotten).
    Sessions come due as the clock passes their time: a report's session before it is folded,
    and, by a sweep of the due index in time order, every other one before a record received
    later is folded (so a replay decides exactly what the live run did, whatever its batches)
    and at a sweep on the wall clock while the partition is read to its end.
    """

    def __init__(self, settings: AggregatorSettings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.reason = f"no final status within {settings.open_timeout_s:g} s"
        self.pending: dict[str, State | None] = {}
        """What the batch in hand changed: each session's new state (None: forgotten)."""
        self.dues: dict[str, float] = {}
        """When each state read or pending is due (epoch seconds)."""
        self.stored_due: dict[str, bytes] = {}
        """The due entry of each session read from the database, replaced when it changes."""
        self.read: dict[bytes, bytes | None] = {}
        """Stored values of the batch's sessions, by entry, read ahead (`read_ahead`); each is
        used at most once, and the rest dropped by the next write."""
        self.encoded: dict[str, bytes] = {}
        """Each pending session as it was produced."""
        self.changed: dict[str, SessionRecord] = {}
        """Sessions the batch in hand folded and has not produced yet."""
        self.due_pending: list[tuple[int, str]] | None = None
        """A heap of (when due, in µs, session_key) of the pending states, made by a sweep that
        finds something due (None the rest of the time: most batches sweep nothing)."""
        self.swept: list[bytes] = []
        """Due entries of the database handled since the last write: deleted by the next."""
        self.floor = DUE
        """Every due entry of the database before this one has been handled."""
        self._index: Iterator[tuple[int, str, bytes]] | None = None
        self._head: tuple[int, str, bytes] | None = None
        self._next_us = _UNKNOWN
        """No entry is due before this (µs); _UNKNOWN until the database's index is read."""

    def read_ahead(self, keys: list[bytes]) -> None:
        """Read the sessions of `keys` (session keys, encoded) from the database in one lookup,
        for `get`. The database changes only by `write`, which drops what is left of them."""
        self.read.update(self.store.get_sessions(keys))

    def get(self, key: str) -> State | None:
        if key in self.pending:
            return self.pending[key]
        entry = session_entry(key)
        value = self.read.pop(entry) if entry in self.read else self.store.get(entry)
        if value is None:
            return None
        state: State = evicted_when(value) if value[:1] == EVICTED else _session.decode(value)
        self.dues[key] = when = self.due(state)
        self.stored_due[key] = due_entry(due_us(when), key)
        return state

    def due(self, state: State) -> float:
        if isinstance(state, float):
            return state + EVICTED_HORIZON_S
        return _due(state.final, state.received, self.settings)

    def put(self, key: str, state: State | None) -> None:
        """`key`'s new state, pending until the next write; `get(key)` must have read it first."""
        self.pending[key] = state
        if state is not None:
            self.dues[key] = when = self.due(state)
            us = due_us(when)
            if self.due_pending is not None:
                heapq.heappush(self.due_pending, (us, key))
            self._next_us = min(self._next_us, us)

    def settle(
        self, key: str, state: State, now: float
    ) -> tuple[State | None, list[SessionRecord]]:
        """`key`'s state at `now` (pending from then on), from `state`, its state as `get` read
        it: an open session due is closed (returned, to be produced), a final one evicted, an
        evicted key forgotten, each at the time it was due, until it is not due."""
        when = self.dues[key]
        if when >= now:
            return state, []
        closed: list[SessionRecord] = []
        settled: State | None = state
        while settled is not None and when < now:
            if isinstance(settled, float):
                settled = None
            elif settled.final:
                settled = when
            else:
                settled = close(settled, datetime.fromtimestamp(when, UTC), self.reason)
                closed.append(settled)
            if settled is not None:
                when = self.due(settled)
        self.put(key, settled)
        return settled, closed

    def expire(self, now: float) -> list[SessionRecord]:
        """Settle the sessions due before `now` (SWEEP_LIMIT at most until the next write), in
        the order they are due; return the closed ones."""
        closed: list[SessionRecord] = []
        if now * 1_000_000 < self._next_us:  # as due_us(now) < _next_us; -inf: nothing read yet
            return closed
        now_us = due_us(now)
        limit = SWEEP_LIMIT - len(self.swept)
        while limit > 0 and (head := self._earliest(now_us)) is not None:
            us, key, entry = head
            state = self.get(key)
            if state is None or due_us(self.dues[key]) != us:
                self._pop(entry)  # an entry of a state since replaced
                continue
            if self.dues[key] >= now:
                break
            self._pop(entry)
            limit -= 1
            closed += self.settle(key, state, now)[1]
        head = self._earliest()
        self._next_us = _NEVER if head is None else head[0]
        self.due_pending = None
        return closed

    def _earliest(self, now_us: int = _NEVER) -> tuple[int, str, bytes] | None:
        """The earliest due entry by `now_us`, pending or in the database (b"" if pending)."""
        if self._index is None:
            self._index = self.store.due(self.floor)
            self._head = next(self._index, None)
        head = self._head
        if self.due_pending is None:
            self.due_pending = [
                (due_us(self.dues[key]), key)
                for key, state in self.pending.items()
                if state is not None
            ]
            heapq.heapify(self.due_pending)
        if self.due_pending and (head is None or self.due_pending[0][0] < head[0]):
            us, key = self.due_pending[0]
            head = (us, key, b"")
        return head if head is not None and head[0] <= now_us else None

    def _pop(self, entry: bytes) -> None:
        if not entry:
            assert self.due_pending is not None  # noqa: S101 - the entry was read from it
            heapq.heappop(self.due_pending)
            return
        self.swept.append(entry)
        self.floor = entry
        assert self._index is not None  # noqa: S101 - an entry of the database was read from it
        self._head = next(self._index, None)

    def emit(self, session: SessionRecord) -> Emit:
        """`session` to produce, kept as produced for the next write."""
        record = session_record(session)
        self.encoded[session.session_key] = record.value or b""
        return topics.SESSIONS, record

    def write(self, position: int | None) -> None:
        """The pending changes, and `position` (the changelog offset they reach, exclusive; None:
        unchanged), in one WriteBatch; then nothing is pending."""
        batch = WriteBatch(raw_mode=True)
        for entry in self.swept:
            batch.delete(entry)
        floor, stored_due, dues = self.floor, self.stored_due, self.dues
        for key, state in self.pending.items():
            stored = stored_due.get(key)
            if state is None:
                batch.delete(session_entry(key))
                if stored is not None:
                    batch.delete(stored)
                continue
            entry = due_entry(due_us(dues[key]), key)
            if stored is not None and stored != entry:
                batch.delete(stored)
            value = evicted_value(state) if isinstance(state, float) else self.encoded[key]
            batch.put(session_entry(key), value)
            batch.put(entry, b"")
            floor = min(floor, entry)
        if position is not None or not batch.is_empty():
            self.store.write(batch, position)
        self.floor = floor
        self.pending, self.dues, self.stored_due, self.encoded = {}, {}, {}, {}
        self.read = {}
        self.due_pending, self.swept = None, []
        self._index = self._head = None
        self._next_us = _UNKNOWN

    def close(self) -> None:
        """Close the database (what is pending was not acknowledged: dropped)."""
        self._index = self._head = None  # an iterator outliving its database is not safe
        self.store.close()

    def restore(self, records: list[Record]) -> None:
        """Apply stored versions, in offset order (so the last one wins), with their offset."""
        batch, floor = WriteBatch(raw_mode=True), self.floor
        for record in records:
            try:
                stored = _stored.decode(record.value or b"")
            except msgspec.DecodeError as exc:
                log.error(
                    "session_record_unreadable",
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc),
                )
                continue
            when = _due(stored.final, stored.received_at or stored.updated_at, self.settings)
            entry = due_entry(due_us(when), stored.session_key)
            batch.put(session_entry(stored.session_key), record.value or b"")
            batch.put(entry, b"")
            floor = min(floor, entry)
        self.store.write(batch, records[-1].offset + 1)
        self.floor = floor
        self._index = self._head = None
        self._next_us = _UNKNOWN


def _due(final: bool, received: datetime, settings: AggregatorSettings) -> float:
    after = settings.final_retention_s if final else settings.open_timeout_s
    return received.timestamp() + after


async def serve(
    settings: AggregatorSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Aggregate calls.events as consumer group `settings.group_id` until `stop` is set.

    Raises AggregatorError when calls.events and calls.sessions differ in partition count or a
    partition's state cannot be restored, StateDirInUse when another process runs on
    `settings.state_dir`.
    """
    await kafka_io.ensure_topics(kafka)
    await _check_co_partitioned(kafka)
    metrics = metrics or Metrics(Aggregator.service)
    with StateDir(Path(settings.state_dir), settings.cache_mb) as state:
        aggregator = Aggregator(settings, kafka, metrics, state)
        runtime = Runtime(aggregator, kafka, metrics_port=settings.metrics_port, metrics=metrics)
        try:
            await runtime.run(stop)
        finally:
            aggregator.close()


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
    closed when it is revoked (the runtime has committed the batch in hand by then)."""

    service = "aggregator"
    stage = Stage.AGGREGATE
    subscribe = (topics.EVENTS,)

    def __init__(
        self,
        settings: AggregatorSettings,
        kafka: KafkaSettings,
        metrics: Metrics,
        state: StateDir,
    ) -> None:
        self.settings, self.kafka, self.state = settings, kafka, state
        self.hole = metrics.hole
        self.events_topic = kafka.topic(topics.EVENTS)
        self.group_id, self.max_batch = settings.group_id, settings.max_batch
        self.tick_every_s = settings.sweep_interval_s
        self.partitions: dict[int, Partition] = {}
        self.late = Counter(
            "callstream_aggregator_late_events",
            "Events of sessions already evicted, ignored.",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.timed_out = Counter(
            "callstream_aggregator_timed_out_sessions",
            "Sessions closed as unknown for want of a final status.",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.evicted = Counter(
            "callstream_aggregator_evicted_sessions",
            "Final sessions evicted after the retention (their keys kept for a day).",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.restored = Counter(
            "callstream_aggregator_restored_records",
            "Records of calls.sessions read to restore assigned partitions.",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.disk = Gauge(
            "callstream_aggregator_state_bytes",
            "Size of the state's files of the assigned partitions (RocksDB SST files).",
            ["service"], registry=metrics.registry,
        ).labels(self.service)  # fmt: skip

    def prepare(self, batch: Mapping[TopicPartition, list[Record]]) -> None:
        """The batch's sessions of each partition read from its database in one lookup."""
        for tp, records in batch.items():
            self.partitions[tp.partition].read_ahead([r.key for r in records if r.key])

    def handle(self, record: Record) -> Handled[None]:
        try:
            event = _event.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            raise Rejected(f"not a call event: {exc}") from exc
        partition = self.partitions[record.partition]
        now, key = event.received_at.timestamp(), event.session_key
        closed = partition.expire(now)
        state = partition.get(key)
        if state is not None:
            state, closing = partition.settle(key, state, now)
            closed += closing
        handled: Handled[None] = Handled(self._closed(partition, closed) if closed else [])
        if isinstance(state, float):
            self.late.inc()
            return handled
        folded = fold(state, event)
        if folded is not None:
            partition.put(key, folded)
            partition.changed[key] = folded
        return handled

    def _closed(self, partition: Partition, closed: list[SessionRecord]) -> list[Emit]:
        """Closes are produced at once, each its own version (never merged with a report that
        follows it in the batch): live and replayed runs then show the same versions."""
        for session in closed:
            partition.changed.pop(session.session_key, None)  # the close carries what it folded
        self.timed_out.inc(len(closed))
        return [partition.emit(session) for session in closed]

    def flush(self) -> list[Emit]:
        """Each session the batch changed, once, in its latest version."""
        emits = []
        for partition in self.partitions.values():
            emits += [partition.emit(session) for session in partition.changed.values()]
            partition.changed.clear()
        return emits

    def acknowledged(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Each partition's changes written, with the changelog offset they reach."""
        for number, partition in self.partitions.items():
            self.evicted.inc(sum(isinstance(s, float) for s in partition.pending.values()))
            last = offsets.get(TopicPartition(topics.SESSIONS, number))
            partition.write(None if last is None else last + 1)

    async def tick(self, clocks: Clocks) -> list[Emit]:
        """Sessions due on each partition's clock (the wall clock while it is caught up); each
        partition's database flushed."""
        emits = [
            emit
            for number, partition in self.partitions.items()
            for emit in self._closed(
                partition, partition.expire(clocks.now(TopicPartition(self.events_topic, number)))
            )
        ]
        pending = sum(len(partition.pending) for partition in self.partitions.values())
        for partition in self.partitions.values():
            partition.store.flush()  # what a crash would have to restore again: since now
        self.disk.set(sum(partition.store.size() for partition in self.partitions.values()))
        (log.info if pending else log.debug)(
            "aggregator_swept", changed=pending, timed_out=len(emits)
        )
        return emits

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            partition = self.partitions.pop(tp.partition, None)
            if partition is not None:
                partition.close()

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        missing = sorted(tp.partition for tp in partitions if tp.partition not in self.partitions)
        self.partitions.update(await self._restore(missing))

    def close(self) -> None:
        """Close every partition's database (what is pending was not acknowledged: dropped)."""
        for partition in self.partitions.values():
            partition.close()
        self.partitions.clear()

    def _open(self, number: int, *, empty: bool = False) -> Partition:
        """Partition `number`'s database (emptied first with `empty`)."""
        name = f"{self.kafka.topic(topics.SESSIONS)}-{number}"
        if empty:
            self.state.destroy(name)
        return Partition(self.settings, self.state.open(name))

    async def _restore(self, numbers: list[int]) -> dict[int, Partition]:
        """Each partition's state, read from calls.sessions from its database's offset up to the
        highwater, or from the beginning into an empty database when that offset is none or
        not within the topic."""
        opened = {number: self._open(number) for number in numbers}
        if not numbers:
            return opened
        started = time.monotonic()
        starts = {number: partition.store.position for number, partition in opened.items()}
        try:
            read = await self._read_tails(opened)
        except BaseException:
            for partition in opened.values():
                partition.close()
            raise
        self.restored.inc(read)
        log.info(
            "state_restored",
            partitions=numbers,
            records=read,
            from_offsets={p: "beginning" if at is None else at for p, at in starts.items()},
            seconds=round(time.monotonic() - started, 3),
        )
        return opened

    async def _read_tails(self, opened: dict[int, Partition]) -> int:
        """Read calls.sessions into `opened` from each database's offset up to the highwater;
        a database with no offset, or one not within the topic, is replaced by an empty one
        and read from the beginning. Return how many records were read."""
        for number in [n for n, partition in opened.items() if partition.store.position is None]:
            self._empty(opened, number)
        scan = kafka_io.TopicScan(
            self.kafka, topics.SESSIONS,
            starts={number: partition.store.position for number, partition in opened.items()},
            max_records=None, stall_s=None, on_start_outside=partial(self._empty, opened),
            counted=self.hole,
        )  # fmt: skip
        async for batch in scan.batches():
            for number, records in groupby(batch, attrgetter("partition")):
                opened[number].restore(list(records))
        return scan.read

    def _empty(self, opened: dict[int, Partition], number: int) -> None:
        """Partition `number` of `opened` replaced by an empty database."""
        opened[number].close()
        opened[number] = self._open(number, empty=True)


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
