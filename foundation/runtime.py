"""The one consumer runtime: every consuming service (normalizer, aggregator, store, alert sink)
is a `Handler` run by `Runtime`.

A batch goes through one checkpoint, in this order (Quix Streams' model):
1. fetch a batch of the subscribed topics, in the partitions this instance owns, each in
   unbroken offset order (`kafka.Contiguity`: a hole is fetched again);
2. `Handler.handle` each record, in offset order per partition: the records it emits, and for a
   sink the item to write; then `Handler.flush` for what the batch emits as a whole;
3. write the sink's items (`Sink.write`, all or nothing);
4. produce the emitted records and the dead letters, and await every acknowledgement; then
   `Handler.acknowledged` with the offsets written (a stateful handler checkpoints its state);
5. commit the batch's offsets.
Nothing is committed before what it led to is acknowledged, so a crash or a rebalance redoes a
batch (at least once); event ids, session event counts and idempotent writes make the redo
harmless.

The error policy, here and nowhere else:
- A record the handler rejects (`Rejected`: bad input, in callstream's words) or that makes it
  raise anything else (a bug, a value it cannot process) is dead-lettered with the handler's
  stage and the reason, and the rest of the batch goes on.
- A sink write that fails for another reason than a transient one is bisected: the halves are
  written again (writes are idempotent), down to the single records that fail, which are
  dead-lettered.
- Transient trouble (`Transient`, the sink's `transient` errors, a broker that is away, a
  timeout) is retried with capped exponential backoff until it passes or the service is asked
  to stop (then nothing of the batch is committed); it is never dead-lettered.
- A flood, most of a batch failing (not merely rejected), stops the service with `Flood`: a
  broken dependency or a bug must be seen, not bury every record in calls.dlq.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import POLL_MS, Batch, OutRecord, Record
from foundation.service import serve_metrics
from foundation.settings import KafkaSettings
from schemas import topics
from schemas.raw import received_at_of
from schemas.topics import Stage

PROGRESS_EVERY_S = 10.0
"""How often a service logs its progress at info (every batch is logged at debug)."""
FLOOD_RATIO = 0.5
FLOOD_MIN = 10
"""A batch in which more than FLOOD_RATIO of the records, and at least FLOOD_MIN, fail is a
flood: the service stops rather than dead-letter them."""
BACKOFF_S = (0.1, 5.0)
"""First and longest wait between two tries of a transient failure."""

log = structlog.get_logger("callstream.runtime")

Emit = tuple[str, OutRecord]
"""A record to produce, and its topic by its `schemas.topics` name (the runtime prefixes it)."""
T = TypeVar("T")


class Rejected(CallstreamError):  # noqa: N818 - a verdict on a record, not a failure of ours
    """A record the handler will not process: bad input. Dead-lettered, and never a flood."""


class Transient(CallstreamError):  # noqa: N818 - a condition that passes
    """Trouble that passes (a dependency away): retried, never dead-lettered."""

    retriable: ClassVar[bool] = True


class Flood(CallstreamError):  # noqa: N818 - named for what happened
    """Most of a batch failed: the service stops instead of dead-lettering them all."""


class Sink(Protocol[T]):
    """Where a sink service writes: all of `items` or nothing, idempotently (a batch may be
    written again after a crash, and a bisect writes parts of it again)."""

    transient: tuple[type[BaseException], ...]
    """Errors of `write` that pass by themselves (a database restarting)."""

    async def write(self, items: Sequence[T]) -> None: ...


@dataclass(slots=True)
class Handled(Generic[T]):
    """What one record leads to: records to produce, and an item for the sink."""

    emits: list[Emit] = field(default_factory=list)
    item: T | None = None


class Handler(Protocol[T]):
    """A service's own part. Everything else (the loop, acks, commits, errors, metrics, logs,
    rebalances, stopping) is the runtime's."""

    service: str
    """The service's name: the `service` label of its metrics and the name in its logs."""
    stage: Stage
    """The stage its dead letters carry."""
    subscribe: tuple[str, ...]
    """The topics it consumes, by their `schemas.topics` names; the runtime subscribes to them
    as the cluster names them (`KafkaSettings.topic`), and that is the `.topic` of the records
    it is handed."""
    group_id: str
    """Its consumer group; the runtime joins it as `KafkaSettings.group(group_id)`."""
    max_batch: int
    sink: Sink[T] | None
    tick_every_s: float | None
    """How often `tick` runs (None: never)."""

    def handle(self, record: Record) -> Handled[T]:
        """What `record` leads to. Raises Rejected for bad input; anything else is a failure."""
        ...

    def prepare(self, batch: Mapping[TopicPartition, list[Record]]) -> None:
        """A batch, before any of its records is handled (each partition's in offset order):
        the handler may read ahead what handling them needs (the aggregator reads the batch's
        sessions in one lookup per partition). Raising stops the service, uncommitted."""
        ...

    def flush(self) -> list[Emit]:
        """What the batch emits at its end, once every record was handled (e.g. each changed
        session once, not once per event)."""
        ...

    async def tick(self, clocks: Clocks) -> list[Emit]:
        """Periodic work, between batches (the aggregator's sweep); what it emits."""
        ...

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions just assigned, before any of their records is handled."""
        ...

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions taken away, after the batch in hand was committed."""
        ...

    def acknowledged(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Everything `handle`, `flush` and `tick` emitted since the last call is acknowledged
        (called once per produce, even an empty one, before the batch's offsets are committed):
        `offsets` has the offset of the last record written in each partition that got records,
        by the topic names the handler emitted to. Raising stops the service, uncommitted."""
        ...


class BaseHandler(Generic[T]):
    """Defaults of the optional parts of a Handler."""

    sink: Sink[T] | None = None
    tick_every_s: float | None = None

    def prepare(self, batch: Mapping[TopicPartition, list[Record]]) -> None:
        del batch

    def flush(self) -> list[Emit]:
        return []

    async def tick(self, clocks: Clocks) -> list[Emit]:
        del clocks
        return []

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        del partitions

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        del partitions

    def acknowledged(self, offsets: Mapping[TopicPartition, int]) -> None:
        del offsets


class Clocks:
    """Received-time clocks, one per partition (contract 1.1): the newest `cs-received-at` read
    in the partition, and the wall clock instead while the partition is read to its end. So a
    backlog or a replay runs its timeouts on the times its records were received, and a report's
    own timestamps (1970, 9999) move no clock."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.newest: dict[TopicPartition, float] = {}
        self.caught_up: dict[TopicPartition, bool] = {}

    def note(self, tp: TopicPartition, received: datetime | None, caught_up: bool) -> None:
        if received is not None:
            self.newest[tp] = max(self.newest.get(tp, -math.inf), received.timestamp())
        self.caught_up[tp] = caught_up

    def now(self, tp: TopicPartition) -> float:
        """The partition's clock, in epoch seconds (-inf before anything was read there)."""
        newest = self.newest.get(tp, -math.inf)
        return max(newest, self.wall()) if self.caught_up.get(tp, False) else newest

    def forget(self, tp: TopicPartition) -> None:
        self.newest.pop(tp, None)
        self.caught_up.pop(tp, None)


class Metrics:
    """One metrics set for every service, labelled by `service`, in a registry of its own per
    runtime (tests and benchmarks run several in one process). A handler may add its own.
    A `topic` label is the `schemas.topics` name, whatever KAFKA__TOPIC_PREFIX is."""

    def __init__(self, service: str) -> None:
        self.registry = registry = CollectorRegistry()
        self.service = service
        self.received = Counter(
            "callstream_records_received", "Records consumed.", ["service", "topic"],
            registry=registry,
        )  # fmt: skip
        self.produced = Counter(
            "callstream_records_produced", "Records produced and acknowledged.",
            ["service", "topic"], registry=registry,
        )  # fmt: skip
        self.dead_lettered = Counter(
            "callstream_records_dead_lettered", "Records dead-lettered and acknowledged.",
            ["service", "stage"], registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "callstream_errors",
            "Failures by stage and type: rejected records, handler or sink errors, transient "
            "retries.", ["service", "stage", "type"], registry=registry,
        )  # fmt: skip
        self.lag = Gauge(
            "callstream_consumer_lag_records", "Highwater minus position, per partition.",
            ["service", "topic", "partition"], registry=registry,
        )  # fmt: skip
        self.holes = Counter(
            "callstream_consumer_holes",
            "Holes in a partition's offsets met while consuming or restoring: fetched again "
            "(outcome refetched), or passed over as real (passed).",
            ["service", "topic", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "callstream_batch_duration_seconds", "Time from fetch to commit of one batch.",
            ["service"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )  # fmt: skip

    def error(self, stage: str, kind: str) -> None:
        self.errors.labels(self.service, stage, kind).inc()

    def hole(self, topic: str, outcome: str) -> None:
        """A hole met in `topic`'s offsets (`foundation.kafka.Contiguity`), by whatever read it:
        the consumer loop, or a scan restoring state."""
        self.holes.labels(self.service, topic, outcome).inc()

    def total(self, counter: str) -> int:
        """A counter's sum over its labels: `received`, `produced`, `dead_lettered`, `errors`."""
        samples = (s for m in getattr(self, counter).collect() for s in m.samples)
        return int(sum(s.value for s in samples if s.name.endswith("_total")))


class Runtime(ConsumerRebalanceListener, Generic[T]):
    """Runs one Handler as a member of its consumer group until asked to stop."""

    def __init__(
        self,
        handler: Handler[T],
        kafka: KafkaSettings,
        *,
        metrics_port: int = 0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`clock` times ticks and progress; `wall` is the wall clock of the received-time
        clocks (`Clocks`), in epoch seconds."""
        self.handler, self.kafka, self.metrics_port = handler, kafka, metrics_port
        self.named = {kafka.topic(name): name for name in handler.subscribe}
        """The `schemas.topics` name of each subscribed topic, by the cluster's name."""
        self.metrics = metrics or Metrics(handler.service)
        self.clock = clock
        self.clocks = Clocks(wall)
        self.log = structlog.get_logger(f"callstream.{handler.service}")
        self.lock = asyncio.Lock()
        """Keeps a rebalance out of a batch in hand."""
        self.owned: set[TopicPartition] = set()
        self.contiguity = kafka_io.Contiguity(self.named, self.metrics.hole, self.log)
        self.consumer: AIOKafkaConsumer | None = None
        self.listener_failed: BaseException | None = None
        self.stop = asyncio.Event()
        self.progress = _Progress(self.log, handler.service, clock)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished first, then the consumer
        leaves the group. Raises Flood, a listener's failure, or a non-transient produce error
        (nothing of that batch committed)."""
        self.stop = stop
        await kafka_io.ensure_topics(self.kafka)
        serve_metrics(self.metrics_port, self.metrics.registry)
        handler = self.handler
        async with kafka_io.producer(self.kafka) as producer:
            consumer = self.consumer = kafka_io.consumer(self.kafka, group_id=handler.group_id)
            consumer.subscribe(list(self.named), listener=self)
            async with consumer:  # stopping it leaves the group: partitions move on at once
                self.log.info(f"{handler.service}_started", topics=list(self.named))
                try:
                    await self._loop(consumer, producer, stop)
                except _Stopping as exc:  # the batch in hand stays uncommitted: redone later
                    self.log.warning(f"{handler.service}_stopped_uncommitted", reason=str(exc))
        self.progress.log()
        self.log.info(f"{handler.service}_stopped")

    async def _loop(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> None:
        every = self.handler.tick_every_s
        next_tick = self.clock() + every if every else None
        while not stop.is_set():
            batch: Batch = await consumer.getmany(
                timeout_ms=POLL_MS, max_records=self.handler.max_batch
            )
            if self.listener_failed is not None:  # aiokafka logs and swallows listener errors
                raise self.listener_failed
            if batch:
                await self._checkpoint(consumer, producer, batch)
            if next_tick is not None and self.clock() >= next_tick:
                await self._tick(consumer, producer)
                next_tick = self.clock() + (every or 0.0)
            self.progress.maybe_log()

    async def _checkpoint(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, batch: Batch
    ) -> None:
        started = time.perf_counter()
        async with self.lock:
            batch = {tp: records for tp, records in batch.items() if tp in self.owned}
            batch = self.contiguity.cut(consumer, batch)
            if not batch:  # fetched before a rebalance took the partitions, or after a hole
                return
            self.handler.prepare(batch)
            records = [r for part in batch.values() for r in part]
            emits, items, dead = self._handle_all(records)
            emits += self.handler.flush()
            if self.handler.sink is not None and items:
                dead += await self._write(self.handler.sink, items)
            self._check_flood(len(records), sum(kind == "failed" for _, kind in dead))
            await self._produce(producer, emits + [(topics.DLQ, letter) for letter, _ in dead])
            await kafka_io.commit(consumer, {tp: part[-1].offset + 1 for tp, part in batch.items()})
        self._count(consumer, batch, emits, dead, time.perf_counter() - started)

    def _handle_all(
        self, records: Iterable[Record]
    ) -> tuple[list[Emit], list[tuple[Record, T]], list[tuple[OutRecord, str]]]:
        """Each record handled: the emits, the sink items, and the dead letters (each with
        "rejected" or "failed")."""
        emits: list[Emit] = []
        items: list[tuple[Record, T]] = []
        dead: list[tuple[OutRecord, str]] = []
        handle, stage = self.handler.handle, self.handler.stage
        for record in records:
            try:
                handled = handle(record)
            except Rejected as exc:
                dead.append((self._dead_letter(record, str(exc), "rejected"), "rejected"))
                continue
            except Exception as exc:
                self.log.exception(
                    "record_failed", stage=stage, topic=record.topic,
                    partition=record.partition, offset=record.offset,
                )  # fmt: skip
                letter = self._dead_letter(record, _reason(exc), type(exc).__name__)
                dead.append((letter, "failed"))
                continue
            emits.extend(handled.emits)
            if handled.item is not None:
                items.append((record, handled.item))
        return emits, items, dead

    async def _write(
        self, sink: Sink[T], items: list[tuple[Record, T]]
    ) -> list[tuple[OutRecord, str]]:
        """Write the sink's items; bisect what fails for good, down to the records that fail."""
        try:
            await self._retrying("write", sink.transient, sink.write, [i for _, i in items])
        except _Stopping:
            raise
        except Exception as exc:
            if len(items) == 1:
                record = items[0][0]
                self.log.warning(
                    "record_write_failed", topic=record.topic, partition=record.partition,
                    offset=record.offset, error=_reason(exc),
                )  # fmt: skip
                return [(self._dead_letter(record, _reason(exc), type(exc).__name__), "failed")]
            half = len(items) // 2
            return await self._write(sink, items[:half]) + await self._write(sink, items[half:])
        return []

    async def _produce(self, producer: AIOKafkaProducer, emits: list[Emit]) -> None:
        by_topic: dict[str, list[OutRecord]] = {}
        for topic, record in emits:
            out = by_topic.get(topic)
            if out is None:  # not setdefault(): it would make a list for every record
                out = by_topic[topic] = []
            out.append(record)

        offsets: dict[TopicPartition, int] = {}

        async def send() -> None:
            written = await asyncio.gather(
                *(
                    kafka_io.send_all(producer, self.kafka.topic(topic), out)
                    for topic, out in by_topic.items()
                )
            )
            for topic, last in zip(by_topic, written, strict=True):
                offsets.update((TopicPartition(topic, p), offset) for p, offset in last.items())

        await self._retrying("produce", (), send)
        self.handler.acknowledged(offsets)
        for topic, out in by_topic.items():
            if topic == topics.DLQ:
                continue
            self.metrics.produced.labels(self.handler.service, topic).inc(len(out))

    async def _retrying(
        self, what: str, transient: tuple[type[BaseException], ...], op: Any, *args: Any
    ) -> None:
        """`op(*args)`, tried again after each transient failure until it passes; raises
        _Stopping if the service is asked to stop meanwhile, and any other error at once."""
        wait, tries = BACKOFF_S[0], 0
        while True:
            try:
                await op(*args)
            except Exception as exc:
                if not _is_transient(exc, transient):
                    raise
                tries += 1
                self.metrics.error(what, type(exc).__name__)
                if tries == 1 or tries % 10 == 0:
                    self.log.warning(
                        f"{what}_retrying", error=_reason(exc), tries=tries, wait_s=wait
                    )
                try:
                    await asyncio.wait_for(self.stop.wait(), wait)
                except TimeoutError:
                    wait = min(wait * 2, BACKOFF_S[1])
                    continue
                raise _Stopping(f"stopped while retrying {what}: {_reason(exc)}") from exc
            if tries:
                self.log.info(f"{what}_recovered", tries=tries)
            return

    def _check_flood(self, handled: int, failed: int) -> None:
        if failed >= FLOOD_MIN and failed > FLOOD_RATIO * handled:
            raise Flood(
                f"{self.handler.service}: {failed} of {handled} records of one batch failed; "
                "stopping rather than dead-lettering them (see the record_failed log lines)"
            )

    def _dead_letter(self, record: Record, reason: str, kind: str) -> OutRecord:
        stage = self.handler.stage
        self.metrics.error(stage, kind)
        return kafka_io.dead_letter(record, stage, reason)

    async def _tick(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        async with self.lock:
            for tp in self.owned:  # a partition no batch came from lately may be at its end
                if consumer.highwater(tp) is not None:
                    self.clocks.note(tp, None, await kafka_io.at_end(consumer, tp))
            emits = await self.handler.tick(self.clocks)
            await self._produce(producer, emits)

    def _count(
        self,
        consumer: AIOKafkaConsumer,
        batch: Batch,
        emits: list[Emit],
        dead: list[tuple[OutRecord, str]],
        seconds: float,
    ) -> None:
        service, metrics = self.handler.service, self.metrics
        received = 0
        for tp, records in batch.items():
            topic = self.named[tp.topic]
            metrics.received.labels(service, topic).inc(len(records))
            received += len(records)
            highwater = consumer.highwater(tp)
            lag = None if highwater is None else highwater - records[-1].offset - 1
            if lag is not None:
                metrics.lag.labels(service, topic, str(tp.partition)).set(lag)
            self.clocks.note(tp, received_at_of(records[-1].headers), lag == 0)
        if dead:
            metrics.dead_lettered.labels(service, self.handler.stage).inc(len(dead))
        metrics.batch_seconds.labels(service).observe(seconds)
        self.progress.add(received, len(emits), len(dead))
        self.log.debug(
            "batch_done", records=received, produced=len(emits), dead_lettered=len(dead),
            seconds=round(seconds, 4),
        )  # fmt: skip

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        async with self.lock:  # after the batch in hand is committed, while still ours
            self.owned.difference_update(revoked)
            for tp in revoked:
                self.clocks.forget(tp)
                self.contiguity.forget(tp)
            try:
                await self.handler.revoked(revoked)
            except Exception as exc:
                self.listener_failed = exc
                raise

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        async with self.lock:
            try:
                await self.handler.assigned(assigned)
            except Exception as exc:
                self.listener_failed = exc
                raise
            if self.consumer is not None:
                await self.contiguity.expect_positions(
                    self.consumer, assigned, self.kafka.request_timeout_ms / 1000
                )
            self.owned.update(assigned)


async def run_together(stop: asyncio.Event, *runtimes: Runtime[Any]) -> None:
    """Run `runtimes` side by side (one service's stages) until `stop` is set or one of them
    ends, which stops the others; then raise what the first to fail raised, if any."""
    together = asyncio.Event()

    async def run(runtime: Runtime[Any]) -> None:
        try:
            await runtime.run(together)
        finally:
            together.set()

    async def relay() -> None:
        await stop.wait()
        together.set()

    relaying = asyncio.create_task(relay())
    try:
        outcomes = await asyncio.gather(*(run(r) for r in runtimes), return_exceptions=True)
    finally:
        relaying.cancel()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


class _Stopping(CallstreamError):  # noqa: N818 - asked to stop during a transient failure
    """Asked to stop while a transient failure lasted: the batch is left uncommitted."""


def _is_transient(exc: BaseException, extra: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, (Transient, TimeoutError, ConnectionError, KafkaTimeoutError, *extra)):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def _reason(exc: BaseException) -> str:
    """An exception as a dead letter's reason: its own message, or its type when it has none."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Progress:
    """Counts logged at info every PROGRESS_EVERY_S (when there were any), and at the end."""

    def __init__(self, log: Any, service: str, clock: Callable[[], float]) -> None:
        self.log_, self.service, self.clock = log, service, clock
        self._restart()

    def _restart(self) -> None:
        self.since = self.clock()
        self.received = self.produced = self.dead_lettered = 0

    def add(self, received: int, produced: int, dead_lettered: int) -> None:
        self.received += received
        self.produced += produced
        self.dead_lettered += dead_lettered

    def maybe_log(self) -> None:
        if self.clock() - self.since >= PROGRESS_EVERY_S:
            self.log()

    def log(self) -> None:
        if self.received:
            seconds = max(self.clock() - self.since, 1e-9)
            self.log_.info(
                "progress", service=self.service, received=self.received, produced=self.produced,
                dead_lettered=self.dead_lettered, records_per_s=round(self.received / seconds),
            )  # fmt: skip
        self._restart()
