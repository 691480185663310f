"""Kafka plumbing every service shares: clients, the topic bootstrap, key partitioning, batches.

Producers wait for acks=all; idempotence is a setting (Apache Kafka: on; the embedded broker
cannot). Consumers never auto-commit: services commit after what they produced is acknowledged.

Topic names, one rule: a function given the `KafkaSettings` takes a topic's `schemas.topics`
name (`calls.raw`) and a group's own id, and puts `KAFKA__TOPIC_PREFIX` before them itself
(`consumer`, `ensure_topics`, `publish`, `read_all`, `TopicScan`); a function given only a client
(`send_all`, `partitions_of`, a client's own methods) takes the name the cluster knows,
`kafka.topic(topics.RAW)`. A record read carries the cluster's name in `.topic`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import random
import time
import zlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any, Final, Literal

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    OffsetOutOfRangeError,
    ProducerClosed,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.producer.message_accumulator import BatchBuilder

from foundation.errors import Unavailable
from foundation.settings import KafkaSettings
from schemas import topics
from schemas.raw import dead_letter_headers

log = structlog.get_logger("callstream.kafka")

Record = ConsumerRecord[bytes, bytes]
"""A record as callstream's consumers read it: bytes key and value."""
Batch = dict[TopicPartition, list[Record]]
"""What one fetch (`getmany`) gives: each partition's records, in offset order."""
POLL_MS = 200
"""How long one fetch waits for records, so also how soon an idle consumer notices a stop."""
SCAN_POLL_MS = 20
"""How long a fetch of `TopicScan` waits for records: a partition read to its end (or empty)
gives nothing after this long, so it bounds how long reaching its end takes to notice."""
MAX_BATCH_BYTES = 1 << 20
SCAN_FETCH_BYTES = 4 * MAX_BATCH_BYTES
"""The most a fetch of `TopicScan` brings, all partitions together (aiokafka's default is 50 MB,
and the embedded broker may fill it from one partition)."""
HOLE_REFETCHES = 3
"""How often a partition is fetched again from a hole in its offsets before the hole is taken as
real (see `Contiguity`)."""
HEAD_RECORDS = 10_000
"""How near its partition's highwater a hole of a compacted topic must be to be fetched again:
compaction never cleans the head of a log (its active segment: a gigabyte or a week by default),
so a hole further back is compaction's."""


class BrokerUnreachable(Unavailable, KafkaConnectionError):  # noqa: N818 - a condition
    """No broker of the bootstrap list answered within the request timeout. Still a
    KafkaConnectionError, so that whoever handles those handles this too."""

    def __init__(self, bootstrap: str, detail: str = "") -> None:
        message = f"the Kafka broker at {bootstrap} does not answer"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.bootstrap = bootstrap

    def __str__(self) -> str:  # KafkaError's puts its class name first
        return str(self.args[0])


class _BootstrapFailures(logging.Filter):
    """aiokafka logs, at error, each bootstrap address it cannot reach (only when a client
    starts), then raises a bare "Unable to bootstrap". BrokerUnreachable says it once, in one
    line, with these reasons; the log lines are dropped."""

    PREFIXES = ('Unable connect to "', 'Unable to request metadata from "')

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIXES):
            host, port, error = record.args  # type: ignore[misc]
            self.reasons[f"{host}:{port}"] = str(error) or type(error).__name__
            return False
        return True


_bootstrap_failures = _BootstrapFailures()
logging.getLogger("aiokafka").addFilter(_bootstrap_failures)  # aiokafka.client logs as "aiokafka"


def unreachable(bootstrap: str, exc: BaseException) -> BrokerUnreachable:
    """`exc`, a failure to reach `bootstrap`, in callstream's words, with each address's reason."""
    reasons = [
        f"{where}: {_bootstrap_failures.reasons[where]}"
        for where in (host.strip() for host in bootstrap.split(","))
        if where in _bootstrap_failures.reasons
    ]
    if not isinstance(exc, KafkaConnectionError):
        reasons.append(str(exc) or type(exc).__name__)
    return BrokerUnreachable(bootstrap, "; ".join(reasons))


class _ClosesOnFailedStart:
    """A client whose failed start closes it and raises BrokerUnreachable: aiokafka leaves it
    open, and an "Unclosed AIOKafka…" complaint and a traceback follow."""

    bootstrap: str

    async def start(self) -> None:
        try:
            await super().start()  # type: ignore[misc]
        except (KafkaConnectionError, OSError) as exc:
            await self._close()
            raise unreachable(self.bootstrap, exc) from exc

    async def _close(self) -> None:
        await self.stop()  # type: ignore[attr-defined]


class Producer(_ClosesOnFailedStart, AIOKafkaProducer):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bootstrap = options["bootstrap_servers"]


class Consumer(_ClosesOnFailedStart, AIOKafkaConsumer):
    def __init__(self, *subscribe: str, **options: Any) -> None:
        super().__init__(*subscribe, **options)
        self.bootstrap = options["bootstrap_servers"]


class Admin(_ClosesOnFailedStart, AIOKafkaAdminClient):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bootstrap = options["bootstrap_servers"]

    async def _close(self) -> None:
        await self.close()


def admin(kafka: KafkaSettings) -> Admin:
    """An admin client (not yet started) for the topic bootstrap and `callstream status`."""
    return Admin(
        bootstrap_servers=kafka.bootstrap,
        client_id=kafka.client_id,
        request_timeout_ms=kafka.request_timeout_ms,
    )


class OutRecord(msgspec.Struct, frozen=True, gc=False):
    """A record to produce. A Struct: the normalizer makes two a raw record, and a NamedTuple
    costs ~0.2 µs to make against ~0.05 µs."""

    key: bytes | None
    value: bytes | None
    """None: a tombstone (on a compacted topic, it deletes the key)."""
    headers: topics.Headers
    partition: int | None = None
    """Where it goes; None: its key's partition (`partition_for`), or any for no key."""


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of `key`: CRC-32 of the key modulo the partition count.

    Every callstream producer places keys with this one function, so all events of a session
    land in one partition and calls.sessions is co-partitioned with calls.events. (Kafka's usual
    murmur2 is pure Python in aiokafka, ~9 µs a key; CRC-32 is C.)
    """
    return partitions[zlib.crc32(key) % len(partitions)]


def _partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    if key is None:
        return random.choice(available or all_partitions)
    return partition_for(key, sorted(all_partitions))


def producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "client_id": kafka.client_id,
        "acks": "all",
        "enable_idempotence": kafka.idempotence,
        "compression_type": None if kafka.compression == "none" else kafka.compression,
        "request_timeout_ms": kafka.request_timeout_ms,
        "max_batch_size": MAX_BATCH_BYTES,
        "max_request_size": 4 * MAX_BATCH_BYTES,
        "linger_ms": 1,
        "partitioner": _partitioner,
    }
    return Producer(**(options | overrides))


def consumer(
    kafka: KafkaSettings, *subscribe: str, group_id: str | None, **overrides: Any
) -> Consumer:
    """A consumer (not yet started) of the topics `subscribe`, as member of group `group_id`
    (None: no group); both are prefixed here."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "client_id": kafka.client_id,
        "group_id": None if group_id is None else kafka.group(group_id),
        "enable_auto_commit": False,
        # "earliest": a new group must not skip what was written before it joined. (The embedded
        # broker also answers "latest" wrongly for multi-record batches.)
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "request_timeout_ms": kafka.request_timeout_ms,
        "max_partition_fetch_bytes": 4 * MAX_BATCH_BYTES,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
    }
    return Consumer(*map(kafka.topic, subscribe), **(options | overrides))


async def ensure_topics(kafka: KafkaSettings, names: Iterable[str] = topics.ALL) -> None:
    """Create the topics `names` that do not exist yet, each as `kafka.topic(name)` with the
    configuration of `name`; idempotent, safe to run from every service.

    Run it before any other client touches a topic: a metadata request for a missing topic
    makes some brokers (the embedded one included) auto-create it with their defaults.
    """
    client = admin(kafka)
    await client.start()
    try:
        response = await client.create_topics(
            [
                NewTopic(
                    kafka.topic(name),
                    kafka.partitions,
                    kafka.replication_factor,
                    topic_configs=topics.CONFIGS.get(name, {}),
                )
                for name in names
            ]
        )
    finally:
        await client.close()
    for _, code, message in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(code)(message)


async def send_all(
    client: AIOKafkaProducer, topic: str, records: Iterable[OutRecord]
) -> dict[int, int]:
    """Produce `records` with the batch API, each to its partition (its key's unless it names
    one); return when all are acked, with the offset of the last record written in each
    partition that got some.

    One `send` per record costs aiokafka ~25 µs; appending to a per-partition batch ~1 µs. A full
    batch is sent at once and a new one opened. Raises what the producer raises if any batch is
    not acknowledged.
    """
    partitions = sorted(await client.partitions_for(topic))
    open_batches: dict[int, BatchBuilder] = {}
    acks: list[tuple[int, int, asyncio.Future[Any]]] = []
    for record in records:
        key, value, headers, partition = record.key, record.value, record.headers, record.partition
        if partition is None:
            partition = (
                partition_for(key, partitions) if key is not None else random.choice(partitions)
            )
        batch = open_batches.get(partition)
        if batch is None:
            batch = open_batches[partition] = client.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            acks.append(await _send(client, batch, topic, partition))
            batch = open_batches[partition] = client.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes exceeds the batch size")
    for partition, batch in open_batches.items():
        acks.append(await _send(client, batch, topic, partition))
    written = await asyncio.gather(*(ack for _, _, ack in acks))
    last: dict[int, int] = {}
    for (partition, count, _), metadata in zip(acks, written, strict=True):
        last[partition] = max(last.get(partition, -1), metadata.offset + count - 1)
    return last


async def _send(
    client: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int
) -> tuple[int, int, asyncio.Future[Any]]:
    """`batch` sent: its partition, its record count, and the future of its acknowledgement
    (whose result's offset is that of the batch's first record)."""
    batch.close()
    return (
        partition,
        batch.record_count(),
        await client.send_batch(batch, topic, partition=partition),
    )


class Contiguity:
    """Each owned partition's records handed on in unbroken offset order: the offset its next
    record must have, and the holes being fetched again.

    A partition's offsets run without a gap but for what compaction removed (and a transaction's
    markers; callstream writes none). The embedded broker breaks that for a moment: while several
    producers write one partition (two ingress workers, two normalizers) it may serve a batch
    before an earlier one is readable (2 to 8 holes in ~100,000 records read live with two to
    four producers), and a consumer that took the later batch would pass the earlier one for
    good. So a record after the expected offset is a hole: the records before it are handed on,
    and the partition is fetched again from the hole (once was always enough there),
    HOLE_REFETCHES times at most. A hole still there then, or one of a compacted topic further
    than HEAD_RECORDS from the highwater, is real: it is passed over, and logged unless it is
    compaction's.
    """

    def __init__(
        self, named: Mapping[str, str], counted: Callable[[str, str], None], log: Any
    ) -> None:
        """`named`: the `schemas.topics` name of each topic read, by the cluster's name;
        `counted(topic, outcome)` is told of each hole met (`refetched` or `passed`)."""
        self.named, self.counted, self.log = named, counted, log
        self.expected: dict[TopicPartition, int] = {}
        self.refetched: dict[TopicPartition, tuple[int, int]] = {}
        """A partition's hole being fetched again: where it starts, and how often so far."""

    def expect(self, tp: TopicPartition, offset: int) -> None:
        """`tp`'s next record must be at `offset` (its position when assigned)."""
        self.expected[tp] = offset

    async def expect_positions(
        self, consumer: AIOKafkaConsumer, assigned: Collection[TopicPartition], within_s: float
    ) -> None:
        """Each of `assigned` must go on from `consumer`'s position (its committed offset, a
        seek, or the reset's): a hole there is fetched again too. Left unchecked if the
        positions cannot be had within `within_s` (the consumer stopping, the broker away)."""
        try:
            async with asyncio.timeout(within_s):
                for tp in assigned:
                    self.expect(tp, await consumer.position(tp))
        except (KafkaError, TimeoutError) as exc:  # IllegalStateError: unassigned meanwhile
            self.log.debug("positions_unknown", error=repr(exc))

    def forget(self, tp: TopicPartition) -> None:
        self.expected.pop(tp, None)
        self.refetched.pop(tp, None)

    def cut(self, consumer: AIOKafkaConsumer, batch: Batch) -> Batch:
        """Each partition's records of `batch` before its first hole to fetch again, the
        consumer set back to that hole; partitions left with no record are left out."""
        whole: Batch = {}
        for tp, records in batch.items():
            first, count = records[0].offset, len(records)
            # Records before the expected offset: the consumer was set back (a seek, a reset).
            expected = min(self.expected.get(tp, first), first)
            if first == expected and records[-1].offset - first == count - 1:  # no hole: at once
                kept, expected = count, first + count
            else:
                kept = self._unbroken(consumer, tp, records, expected)
                expected = records[kept - 1].offset + 1 if kept else expected
            if self.refetched.get(tp, (expected,))[0] < expected:  # the hole was filled
                del self.refetched[tp]
            self.expected[tp] = expected
            if kept:
                whole[tp] = records if kept == count else records[:kept]
        return whole

    def _unbroken(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Record], expected: int
    ) -> int:
        """How many of `records` come before a hole to fetch again (all if none); the consumer
        is set back to that hole."""
        for index, record in enumerate(records):
            if record.offset > expected and self._refetch(consumer, tp, expected, record):
                consumer.seek(tp, expected)
                return index
            expected = record.offset + 1
        return len(records)

    def _refetch(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, found: Record
    ) -> bool:
        """Whether to fetch `tp` again from `start`, where `found` should have been."""
        topic = self.named[tp.topic]
        compacted = topics.CONFIGS.get(topic, {}).get("cleanup.policy") == "compact"
        highwater = consumer.highwater(tp)
        head = not compacted or (highwater is not None and highwater - found.offset < HEAD_RECORDS)
        hole, tries = self.refetched.get(tp, (start, 0))
        tries = tries if hole == start else 0
        outcome = "refetched" if head and tries < HOLE_REFETCHES else "passed"
        self.counted(topic, outcome)
        if outcome == "refetched":
            self.refetched[tp] = (start, tries + 1)
            return True
        self.refetched.pop(tp, None)
        (self.log.debug if compacted else self.log.warning)(
            "offsets_passed_over", topic=topic, partition=tp.partition, first=start,
            last=found.offset - 1, refetched=tries,
        )  # fmt: skip
        return False


def uncounted(_topic: str, _outcome: str) -> None:
    """Holes met by a reader given no metrics to count them in (a command's scan)."""


class Overloaded(Unavailable):
    """A record refused at once: the records already waiting for the broker's ack hold the
    Batcher's `max_pending_bytes`."""


class _Generation:
    """The batches opened together, handed to the producer together, and the deadline of the
    sends waiting for them."""

    __slots__ = ("batches", "deadline", "unsettled")

    def __init__(self) -> None:
        self.batches: list[_Batch] = []
        self.unsettled = 0
        self.deadline: asyncio.TimerHandle | None = None


class _Batch:
    """A batch of one partition and the sends waiting for its acknowledgement."""

    __slots__ = ("builder", "generation", "size", "waiters", "where")

    def __init__(
        self, where: tuple[str, int], builder: BatchBuilder, generation: _Generation
    ) -> None:
        self.where, self.builder, self.generation = where, builder, generation
        self.waiters: list[asyncio.Future[None]] = []
        self.size = 0
        """Bytes of its keys and values."""


class Batcher:
    """Records sent one at a time by many concurrent tasks, produced as batches.

    `send` adds its record to the open batch of the record's partition (the one it names, else its
    key's by `partition_for`; records without either all go to one partition of the topic, the next
    generation's to the next partition) and returns once the broker acknowledged that batch, or
    raises what the producer raised for it. The open batches form a generation, handed to the
    producer together (aiokafka's batch API: one `send_batch` each, one produce request per broker)
    `linger_s` after its first record, and not before every batch handed earlier was acknowledged or
    failed: while the broker works on one produce request the next one fills, so batches grow with
    the load rather than their number, and each costs once what its records share (the request, its
    encoding, compression, the acknowledgement). A batch that fills up goes at once. Batches of a
    partition are produced in the order they were opened. A send cancelled while it waits withdraws
    nothing: its record is produced with its batch.

    With `ack_timeout_s`, a send still waiting that long after its generation was opened (so at
    most that long after the send) raises TimeoutError: one timer a generation rather than one
    a send. Its record is not withdrawn (it may still be written), and its bytes stay pending
    until the producer is done with them.

    Memory is bounded: while the records not yet acknowledged (or failed) hold
    `max_pending_bytes` of keys and values, `send` raises Overloaded at once.

    One `producer.send` costs aiokafka ~24 µs; one append to a batch ~1 µs.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        linger_s: float = 0.001,
        max_pending_bytes: int,
        ack_timeout_s: float | None = None,
    ) -> None:
        self._producer, self._linger_s, self._ack_timeout_s = producer, linger_s, ack_timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        """Bytes of keys and values sent and not yet acknowledged or failed."""
        self._generation: _Generation | None = None
        """The open generation, from its first record until it is handed over."""
        self._open: dict[tuple[str, int], _Batch] = {}
        """Its batches being filled, by topic and partition."""
        self._lingered = False
        self._unacked = 0
        """Batches handed to the producer and not yet acknowledged or failed."""
        self._partitions: dict[str, list[int]] = {}
        self._keyless: dict[str, int] = {}
        """The partition of each topic that this generation's records without a key go to."""
        self._turn = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, topic: str, record: OutRecord) -> None:
        """Return once the broker acknowledged `record` (in its batch); raises the producer's
        error for the batch, TimeoutError past `ack_timeout_s`, or Overloaded."""
        if record.partition is None and topic not in self._partitions:
            await self._learn(topic)
        await self.enqueue(topic, record)

    def enqueue(self, topic: str, record: OutRecord) -> Awaitable[None]:
        """`send` for a caller that awaits at once, with no coroutine of its own in between once
        the topic's partitions are known (a coroutine costs a waiting request ~1,500
        instructions): `record` is added now and the future of its acknowledgement returned,
        or Overloaded raised now."""
        if record.partition is None and topic not in self._partitions:
            return self.send(topic, record)
        key, value, headers = record.key, record.value, record.headers
        size = len(key or b"") + len(value or b"")
        if self.pending_bytes and self.pending_bytes + size > self.max_pending_bytes:
            raise Overloaded(
                f"{self.pending_bytes} bytes are waiting for the broker's acknowledgement"
            )
        if (partition := record.partition) is None:
            partition = self._place(topic, key, self._partitions[topic])
        where = (topic, partition)
        batch = self._open.get(where) or self._opened(where)
        if batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            self._hand_over([self._open.pop(where)])  # full; a batch's first record always fits
            batch = self._opened(where)
            batch.builder.append(key=key, value=value, timestamp=None, headers=headers)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        batch.size += size
        self.pending_bytes += size
        return waiter

    async def close(self) -> None:
        """Hand every batch to the producer now and return once the producer has them all (its
        own `stop` then waits for their acks)."""
        self._end_generation()
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def _place(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        """The key's partition, or this generation's for records without a key."""
        if key is not None:
            return partition_for(key, partitions)
        if (partition := self._keyless.get(topic, -1)) < 0:
            partition = self._keyless[topic] = partitions[next(self._turn) % len(partitions)]
        return partition

    async def _learn(self, topic: str) -> list[int]:
        """The partitions of `topic`, as first known: partition counts do not change while
        callstream runs (co-partitioning depends on them)."""
        known = self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
        return known

    def _opened(self, where: tuple[str, int]) -> _Batch:
        generation = self._generation
        if generation is None:
            generation = self._generation = _Generation()
            loop = asyncio.get_running_loop()
            loop.call_later(self._linger_s, self._linger_over, generation)
            if self._ack_timeout_s is not None:
                generation.deadline = loop.call_later(
                    self._ack_timeout_s, _expire, generation, TimeoutError()
                )
        batch = self._open[where] = _Batch(where, self._producer.create_batch(), generation)
        generation.batches.append(batch)
        generation.unsettled += 1
        return batch

    def _linger_over(self, generation: _Generation) -> None:
        if generation is not self._generation:  # handed over already (close)
            return
        self._lingered = True
        if not self._unacked:
            self._end_generation()

    def _end_generation(self) -> None:
        """Hand the open generation's batches to the producer; the next record opens another."""
        batches = list(self._open.values())
        self._generation, self._lingered = None, False
        self._open.clear()
        self._keyless.clear()
        if batches:
            self._hand_over(batches)

    def _hand_over(self, batches: list[_Batch]) -> None:
        self._unacked += len(batches)
        task = asyncio.create_task(self._produce(batches))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _produce(self, batches: list[_Batch]) -> None:
        for batch in batches:
            batch.builder.close()
            topic, partition = batch.where
            try:
                acked = await self._producer.send_batch(batch.builder, topic, partition=partition)
            except Exception as exc:  # every sender of the batch gets it
                self._settle(batch, exc)
            else:
                acked.add_done_callback(lambda ack, batch=batch: self._acked(batch, ack))

    def _acked(self, batch: _Batch, ack: asyncio.Future[Any]) -> None:
        self._settle(batch, ProducerClosed() if ack.cancelled() else ack.exception())

    def _settle(self, batch: _Batch, error: BaseException | None) -> None:
        self.pending_bytes -= batch.size
        generation = batch.generation
        generation.unsettled -= 1
        if not generation.unsettled and generation.deadline is not None:
            generation.deadline.cancel()  # and lets go of the generation
        if error is None:
            for waiter in batch.waiters:
                if not waiter.done():  # else its sender gave up waiting
                    waiter.set_result(None)
        else:
            _fail(batch, error)
        self._unacked -= 1
        if not self._unacked and self._lingered:
            self._end_generation()


def _expire(generation: _Generation, error: BaseException) -> None:
    for batch in generation.batches:
        _fail(batch, error)


def _fail(batch: _Batch, error: BaseException) -> None:
    """`error` raised in every sender of `batch` still waiting (a copy each: one exception
    raised in many tasks would grow one traceback)."""
    for waiter in batch.waiters:
        if not waiter.done():
            waiter.set_exception(copy.copy(error))


async def commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    """Commit, or log that a rebalance took the partitions: their new owner redoes the batch."""
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("commit_failed_rebalance", error=str(exc), partitions=len(offsets))


def dead_letter(record: Record, stage: str, error: str) -> OutRecord:
    """`record` for calls.dlq: same key and value, its headers plus where and why it failed."""
    log.warning(
        "record_dead_lettered",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        stage=stage,
        error=error,
    )
    headers = dead_letter_headers(record.headers, stage=stage, error=error)
    return OutRecord(record.key, record.value or b"", headers)


async def publish(kafka: KafkaSettings, topic: str, records: Iterable[OutRecord]) -> None:
    """Produce `records` to `topic` with a producer of their own and wait for every ack (tools,
    benchmarks)."""
    async with producer(kafka) as client:
        await send_all(client, kafka.topic(topic), records)


async def partitions_of(client: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of `topic`, none if it does not exist.

    Asks for every topic's metadata: asking for this one by name would make some brokers (the
    embedded one included) create it.
    """
    await client.topics()
    return [TopicPartition(topic, p) for p in sorted(client.partitions_for_topic(topic) or ())]


async def at_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    """Whether `tp` is read up to the highwater its last fetch reported.

    Not end_offsets(): the embedded broker answers it with the start of the last batch.
    """
    highwater = consumer.highwater(tp)
    return highwater is not None and await consumer.position(tp) >= highwater


async def committed(
    kafka: KafkaSettings, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """Group `group_id`'s committed offset of each partition (None where it has none), without
    joining the group. `group_id` as a service names it: `consumer` applies `kafka.group`."""
    async with consumer(kafka, group_id=group_id) as client:
        return {tp: await client.committed(tp) for tp in partitions}


LAST: Final = "last"
Start = int | datetime | Literal["last"] | None
"""Where a partition is read from: an offset, the first record at or after a time (a partition
with none is not read), LAST: its last record (and a few before it on the embedded broker,
whose end offset falls within the last batch), or None: its first record."""


class TopicScan:
    """Reads a range of each partition of topic `topic` (a `schemas.topics` name, prefixed here)
    with no consumer group, one bounded batch at a time: what a job scans, a service restores
    its state from.

    `starts` is one Start for every partition of the topic (by default each from its beginning;
    none if the topic does not exist), or a Start for each partition to read, and only those.
    `ends` gives the offsets to stop before, per partition. A partition's end is never past the
    highwater its first fetch reports (not end_offsets(): the embedded broker answers it with the
    start of the last batch): later records are not read, so a job that appends to the topic it
    scans does not read what it wrote. Scanning again with the same object reads up to the same
    ends: they are kept.

    A start offset not within its partition (before its first offset, deleted; or past its
    highwater: the topic was made anew, another cluster) is read from the partition's beginning
    instead, after `on_start_outside(partition)` is called, before any of its records is yielded.

    Records come in unbroken offset order (`Contiguity`): `counted(topic, outcome)` is told of
    each hole met (by default no one: a hole passed over is logged all the same).

    Memory is one batch in hand plus what the consumer has fetched and not yet handed out: one
    fetch response of SCAN_FETCH_BYTES at most (a record batch larger than that still comes
    whole).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        starts: Start | Mapping[int, Start] = None,
        ends: Mapping[int, int] | None = None,
        max_records: int | None = 1_000,
        stall_s: float | None = 30.0,
        on_start_outside: Callable[[int], None] | None = None,
        counted: Callable[[str, str], None] = uncounted,
    ) -> None:
        self.kafka, self.topic, self.max_records, self.stall_s = kafka, topic, max_records, stall_s
        self.counted = counted
        self._asked_starts, self._asked_ends = starts, dict(ends or {})
        self.on_start_outside = on_start_outside
        self.starts: dict[int, int] | None = None
        """Each partition's first offset to read in the scan under way (its beginning once
        restarted there), once known; partitions with nothing to read left out."""
        self.ends: dict[int, int] = {}
        """Each partition's end, once its first fetch reported its highwater."""
        self.read = 0
        """Records yielded by the scan under way."""
        self.complete = False
        """Whether the last scan read every partition to its end (False if `stop` ended it)."""

    @property
    def total(self) -> int | None:
        """Records between the partitions' starts and ends, once every end is known."""
        if self.starts is None or not self.ends.keys() >= self.starts.keys():
            return None
        return sum(max(self.ends[p] - start, 0) for p, start in self.starts.items())

    async def batches(self, stop: asyncio.Event | None = None) -> AsyncIterator[list[Record]]:
        """The records, at most `max_records` a batch (None: what a fetch brings); within a
        batch each partition's records are consecutive, and each partition's come in offset
        order. Once `stop` is set, the scan ends before its next fetch, `complete` False.

        Raises TimeoutError if `stall_s` pass without a record or a partition's end (the time
        the caller holds a batch is not counted); with None, waits as long as it takes.
        """
        self.read, self.complete = 0, False
        if isinstance(self._asked_starts, Mapping) and not self._asked_starts:
            self.starts, self.complete = {}, True
            return  # (a consumer stopped before it ever waited fails in aiokafka 0.14)
        bounded = {
            "max_partition_fetch_bytes": MAX_BATCH_BYTES,
            "fetch_max_bytes": SCAN_FETCH_BYTES,
        }
        async with consumer(
            self.kafka, group_id=None, fetch_max_wait_ms=SCAN_POLL_MS, auto_offset_reset="none",
            **bounded,
        ) as client:  # fmt: skip
            starts = self.starts = await self._start_offsets(client)
            pending = self._assign(client, starts)
            # Records in unbroken offset order, as the consumer runtime reads them.
            named = {self.kafka.topic(self.topic): self.topic}
            unbroken = Contiguity(named, self.counted, log)
            for tp in pending:
                unbroken.expect(tp, starts[tp.partition])
            moved = time.monotonic()
            while pending and not (stop is not None and stop.is_set()):
                batch, done = await self._fetch(client, pending, starts, unbroken)
                client.pause(*done)  # read to their end: fetch them no more
                pending -= done
                if batch or done:
                    moved = time.monotonic()
                elif self.stall_s is not None and time.monotonic() - moved > self.stall_s:
                    raise TimeoutError(f"{self.topic} gave nothing for {self.stall_s:g} s")
                if batch:
                    self.read += len(batch)
                    yield batch
                    moved = time.monotonic()
            self.complete = not pending

    async def _start_offsets(self, client: AIOKafkaConsumer) -> dict[int, int]:
        """The offset of each partition's start, for those with something to read."""
        topic = self.kafka.topic(self.topic)
        asked = self._asked_starts
        if not isinstance(asked, Mapping):
            asked = {tp.partition: asked for tp in await partitions_of(client, topic)}
        offsets = await _offsets(client, {TopicPartition(topic, p): at for p, at in asked.items()})
        return {
            tp.partition: offset
            for tp, offset in offsets.items()
            if offset < self._asked_ends.get(tp.partition, offset + 1)
        }

    def _assign(self, client: AIOKafkaConsumer, starts: dict[int, int]) -> set[TopicPartition]:
        """The partitions of `starts`, assigned to `client`, each at its start."""
        partitions = {TopicPartition(self.kafka.topic(self.topic), p) for p in starts}
        client.assign(list(partitions))
        for tp in partitions:
            client.seek(tp, starts[tp.partition])
        return partitions

    async def _fetch(
        self,
        client: AIOKafkaConsumer,
        pending: set[TopicPartition],
        starts: dict[int, int],
        unbroken: Contiguity,
    ) -> tuple[list[Record], set[TopicPartition]]:
        """One fetch: its records before their partition's end (up to a hole, fetched again
        next), and the partitions read to their end."""
        try:
            fetched = await client.getmany(
                *pending, timeout_ms=SCAN_POLL_MS, max_records=self.max_records
            )
        except OffsetOutOfRangeError as exc:  # Kafka: the offset is not within the partition
            for tp in exc.args[0]:
                await self._restart(client, tp, starts)
            return [], set()
        fetched = unbroken.cut(client, fetched)
        for tp in pending:
            if (highwater := client.highwater(tp)) is None:
                continue
            self.ends.setdefault(
                tp.partition, min(highwater, self._asked_ends.get(tp.partition, highwater))
            )
            if await client.position(tp) > highwater:  # the embedded broker: past it, no error
                await self._restart(client, tp, starts)
        batch = [r for tp, rs in fetched.items() for r in rs if r.offset < self.ends[tp.partition]]
        done = {
            tp
            for tp in pending
            if tp.partition in self.ends and await client.position(tp) >= self.ends[tp.partition]
        }
        return batch, done

    async def _restart(
        self, client: AIOKafkaConsumer, tp: TopicPartition, starts: dict[int, int]
    ) -> None:
        """Read `tp` from its beginning (its start, in `starts`, was not within it)."""
        log.warning(
            "scan_start_not_within_topic", topic=tp.topic, partition=tp.partition,
            offset=starts[tp.partition], detail="reading the partition from its beginning",
        )  # fmt: skip
        if self.on_start_outside is not None:
            self.on_start_outside(tp.partition)
        beginning = (await client.beginning_offsets([tp]))[tp]
        starts[tp.partition] = beginning
        client.seek(tp, beginning)


async def _offsets(
    client: AIOKafkaConsumer, starts: Mapping[TopicPartition, Start]
) -> dict[TopicPartition, int]:
    """Each Start as an offset; partitions with no record at or after their time left out."""
    beginnings = [tp for tp, at in starts.items() if at is None or at == LAST]
    firsts = await client.beginning_offsets(beginnings) if beginnings else {}
    lasts = [tp for tp, at in starts.items() if at == LAST]
    if lasts:
        ends = await client.end_offsets(lasts)
        firsts.update({tp: max(ends[tp] - 1, firsts[tp]) for tp in lasts})
    times = {tp: _ms(at) for tp, at in starts.items() if isinstance(at, datetime)}
    found = await client.offsets_for_times(times) if times else {}
    offsets = {tp: at for tp, at in starts.items() if isinstance(at, int)}
    offsets.update(firsts)
    offsets.update({tp: at.offset for tp, at in found.items() if at is not None})
    return offsets


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


async def read_all(
    kafka: KafkaSettings,
    topic: str,
    *,
    within_s: float = 30.0,
    counted: Callable[[str, str], None] = uncounted,
) -> list[Record]:
    """Every record of `topic` written so far, in offset order per partition (no group);
    `counted` as TopicScan's. All in memory at once, within one time bound: for tests and
    benchmarks of a known size; what reads a topic of any length streams `TopicScan.batches`.

    Raises TimeoutError if the topic cannot be read to its end within `within_s`.
    """
    scan = TopicScan(kafka, topic, counted=counted)
    async with asyncio.timeout(within_s):
        return [record async for batch in scan.batches() for record in batch]
