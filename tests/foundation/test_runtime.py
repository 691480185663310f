"""The consumer runtime's error policy, on the real broker, with a handler and a sink of the test's
own whose failures the test decides: a record that fails is dead-lettered and the rest flows, a
sink that rejects a batch is bisected down to the record, transient trouble is retried and never
dead-lettered, and a flood stops the service (and the runtimes run beside it). A hole in a
partition's offsets is fetched again, so producers writing one partition together lose nothing to
the consumer. And the clocks a handler's tick is given."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

import msgspec
import pytest
import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError
from helpers import committed, eventually
from servers import Broker

from foundation import kafka as kafka_io
from foundation.kafka import HOLE_REFETCHES, Contiguity, OutRecord
from foundation.runtime import (
    FLOOD_MIN,
    BaseHandler,
    Clocks,
    Emit,
    Flood,
    Handled,
    Metrics,
    Record,
    Rejected,
    Runtime,
    run_together,
)
from foundation.settings import KafkaSettings
from schemas import topics
from schemas.raw import RawMeta, raw_headers
from schemas.topics import Stage

COUNT = 60


class Copier(BaseHandler[bytes]):
    """calls.raw → calls.events unchanged; `b"bug …"` makes it raise, `b"bad …"` is rejected."""

    service = "copier"
    stage = Stage.NORMALIZE
    subscribe = (topics.RAW,)
    group_id = "test-copier"

    def __init__(self, max_batch: int = 25, sink: Sink | None = None) -> None:
        self.max_batch, self.sink = max_batch, sink

    def handle(self, record: Record) -> Handled[bytes]:
        value = record.value or b""
        if value.startswith(b"bug"):
            raise ValueError(f"cannot handle {value!r}")
        if value.startswith(b"bad"):
            raise Rejected(f"not a record: {value!r}")
        if self.sink is not None:
            return Handled(item=value)
        return Handled([(topics.EVENTS, OutRecord(record.key, value, []))])


class Sink:
    """Keeps what it is given; refuses any batch holding `b"unwritable …"` as a whole (as a
    database refuses a transaction), and fails `transient_failures` writes with ConnectionError."""

    transient = ()

    def __init__(self, transient_failures: int = 0) -> None:
        self.written: list[bytes] = []
        self.transient_failures = transient_failures

    async def write(self, items: Sequence[bytes]) -> None:
        if self.transient_failures:
            self.transient_failures -= 1
            raise ConnectionError("the database went away")
        if any(item.startswith(b"unwritable") for item in items):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        self.written.extend(items)


def _values(*odd: tuple[int, bytes]) -> list[bytes]:
    values = [b"ok %d" % n for n in range(COUNT)]
    for at, value in odd:
        values[at] = value
    return values


async def _publish(kafka: KafkaSettings, values: list[bytes]) -> None:
    await kafka_io.publish(kafka, topics.RAW, (OutRecord(v, v, []) for v in values))


async def _run_until_committed(
    kafka: KafkaSettings,
    handler: Copier,
    count: int,
    metrics: Metrics | None = None,
    *,
    runtime_kafka: KafkaSettings | None = None,
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(Runtime(handler, runtime_kafka or kafka, metrics=metrics).run(stop))
    try:

        async def all_committed() -> bool:
            assert not task.done(), task
            try:
                offsets = await committed(kafka, handler.group_id, topics.RAW)
            except KafkaConnectionError:  # the broker is paused
                return False
            return sum(offsets.values()) >= count

        await eventually(all_committed, f"{count} records committed")
    finally:
        stop.set()
        await task


async def _letters(kafka: KafkaSettings) -> dict[bytes, tuple[bytes, bytes]]:
    """Dead letters by value: (stage, reason)."""
    return {
        r.value: (dict(r.headers)[topics.ERROR_STAGE], dict(r.headers)[topics.ERROR])
        for r in await kafka_io.read_all(kafka, topics.DLQ)
    }


async def test_a_record_that_fails_or_is_rejected_is_dead_lettered_and_the_rest_flows(
    kafka: KafkaSettings,
) -> None:
    values = _values((7, b"bug 7"), (30, b"bad 30"))
    await _publish(kafka, values)
    metrics = Metrics("copier")
    await _run_until_committed(kafka, Copier(), COUNT, metrics)
    assert await _letters(kafka) == {
        b"bug 7": (b"normalize", b"ValueError: cannot handle b'bug 7'"),
        b"bad 30": (b"normalize", b"not a record: b'bad 30'"),
    }
    copied = sorted(r.value for r in await kafka_io.read_all(kafka, topics.EVENTS))
    assert copied == sorted(v for v in values if v.startswith(b"ok"))
    assert metrics.total("dead_lettered") == 2
    assert metrics.total("received") == COUNT


class Acknowledging(Copier):
    """A Copier that keeps the offsets `acknowledged` is told (each past the one before)."""

    group_id = "test-acknowledging"

    def __init__(self) -> None:
        super().__init__()
        self.acknowledged_offsets: dict[TopicPartition, int] = {}

    def acknowledged(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            assert offset > self.acknowledged_offsets.get(tp, -1)
            self.acknowledged_offsets[tp] = offset


async def test_acknowledged_is_told_the_offset_of_the_last_record_written_in_each_partition(
    kafka: KafkaSettings,
) -> None:
    values = _values((7, b"bad 7"))
    await _publish(kafka, values)
    handler = Acknowledging()
    await _run_until_committed(kafka, handler, COUNT)
    last: dict[TopicPartition, int] = {}
    for record in await kafka_io.read_all(kafka, topics.EVENTS):
        last[TopicPartition(topics.EVENTS, record.partition)] = record.offset
    for record in await kafka_io.read_all(kafka, topics.DLQ):
        last[TopicPartition(topics.DLQ, record.partition)] = record.offset
    assert handler.acknowledged_offsets == last


async def test_a_batch_the_sink_refuses_is_bisected_down_to_the_record(
    kafka: KafkaSettings,
) -> None:
    values = _values((11, b"unwritable 11"), (12, b"unwritable 12"), (40, b"bad 40"))
    await _publish(kafka, values)
    sink = Sink()
    await _run_until_committed(kafka, Copier(max_batch=COUNT, sink=sink), COUNT)
    letters = await _letters(kafka)
    assert set(letters) == {b"unwritable 11", b"unwritable 12", b"bad 40"}
    assert letters[b"unwritable 11"][1].startswith(b"OverflowError: Python int too large")
    assert sorted(sink.written) == sorted(v for v in values if v.startswith(b"ok"))


async def test_transient_sink_failures_are_retried_and_never_dead_lettered(
    kafka: KafkaSettings,
) -> None:
    await _publish(kafka, _values())
    sink, metrics = Sink(transient_failures=3), Metrics("copier")
    await _run_until_committed(kafka, Copier(sink=sink), COUNT, metrics)
    assert await _letters(kafka) == {}
    assert sorted(sink.written) == sorted(_values())
    assert metrics.total("errors") == 3  # each retry counted, by stage and type


async def test_a_paused_broker_is_waited_for_and_nothing_is_lost_or_dead_lettered(
    own_broker: Broker, own_kafka: KafkaSettings
) -> None:
    broker, kafka = own_broker, own_kafka
    await _publish(kafka, _values())
    # A produce times out within the pause (and the group's session, 2 s, expires too).
    short = msgspec.structs.replace(kafka, request_timeout_ms=1_500)
    pause_s = 3.0
    metrics = Metrics("copier")

    class PausingCopier(Copier):
        paused = False

        def handle(self, record: Record) -> Handled[bytes]:
            if not self.paused:  # the broker stops answering while the first batch is in hand
                self.paused = True
                broker.pause()
                asyncio.get_running_loop().call_later(pause_s, broker.resume)
            return super().handle(record)

    try:
        await _run_until_committed(kafka, PausingCopier(), COUNT, metrics, runtime_kafka=short)
    finally:
        broker.resume()
    assert await _letters(kafka) == {}
    assert metrics.total("errors") >= 1  # the produce that timed out, retried
    copied = [r.value for r in await kafka_io.read_all(kafka, topics.EVENTS)]
    assert sorted(set(copied)) == sorted(_values())  # all there; a redo may have doubled some


async def test_a_flood_stops_the_service_and_commits_nothing(kafka: KafkaSettings) -> None:
    await _publish(kafka, [b"bug %d" % n for n in range(FLOOD_MIN * 2)])
    with pytest.raises(Flood, match="20 of 20 records of one batch failed"):
        await Runtime(Copier(max_batch=100), kafka).run(asyncio.Event())
    assert sum((await committed(kafka, "test-copier", topics.RAW)).values()) == 0
    assert await _letters(kafka) == {}


async def test_a_flood_in_one_runtime_stops_those_beside_it(kafka: KafkaSettings) -> None:
    await _publish(kafka, [b"bug %d" % n for n in range(FLOOD_MIN * 2)])
    idle = Runtime(Ticker(), kafka)
    with pytest.raises(Flood):
        await run_together(asyncio.Event(), Runtime(Copier(max_batch=100), kafka), idle)


class Ticker(BaseHandler[None]):
    """Reads calls.raw and, at each tick, notes the clock of each partition it owns."""

    service = "ticker"
    stage = Stage.NORMALIZE
    subscribe = (topics.RAW,)
    group_id = "test-ticker"
    max_batch = 10
    tick_every_s = 0.05

    def __init__(self) -> None:
        self.owned: set[TopicPartition] = set()
        self.clocks: dict[int, float] = {}

    def handle(self, record: Record) -> Handled[None]:
        del record
        return Handled()

    async def tick(self, clocks: Clocks) -> list[Emit]:
        self.clocks = {tp.partition: clocks.now(tp) for tp in self.owned}
        return []

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.owned.update(partitions)


async def test_a_partition_read_to_its_end_follows_the_wall_clock_records_or_not(
    kafka: KafkaSettings,
) -> None:
    """Contract 1.1: a partition's clock is the newest received time read there, the wall clock
    while it is read to its end; a partition that never had a record is read to its end too."""
    wall = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    ahead = datetime(2031, 1, 1, tzinfo=UTC)
    behind = datetime(2026, 1, 1, tzinfo=UTC)
    partitions = range(kafka.partitions)
    keys = {kafka_io.partition_for(b"k%d" % n, partitions): b"k%d" % n for n in range(9, -1, -1)}
    (_, behind_key), (p_ahead, ahead_key) = list(keys.items())[:2]
    assert kafka.partitions > 2  # and some partitions have no record
    await kafka_io.publish(
        kafka,
        topics.RAW,
        [
            OutRecord(key, b"{}", raw_headers(RawMeta("wavecell", "webhook", at, "r", "", {})))
            for key, at in ((behind_key, behind), (ahead_key, ahead))
        ],
    )
    ticker, stop = Ticker(), asyncio.Event()
    task = asyncio.create_task(Runtime(ticker, kafka, wall=lambda: wall).run(stop))
    expected = dict.fromkeys(partitions, wall)
    expected[p_ahead] = ahead.timestamp()
    try:

        async def ticked() -> bool:
            assert not task.done(), task
            return ticker.clocks == expected

        await eventually(ticked, f"the clocks {expected}")
    finally:
        stop.set()
        await task


def _records(tp: TopicPartition, *offsets: int) -> list[Record]:
    return [
        ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"%d" % offset, None, 0, 0, ())
        for offset in offsets
    ]


async def test_a_hole_in_a_partitions_offsets_is_fetched_again_then_passed_over(
    kafka: KafkaSettings,
) -> None:
    await kafka_io.ensure_topics(kafka)
    tp = TopicPartition(kafka.topic(topics.RAW), 0)
    met: Counter[tuple[str, str]] = Counter()
    contiguity = Contiguity(
        {tp.topic: topics.RAW}, lambda *hole: met.update([hole]), structlog.get_logger("test")
    )
    async with kafka_io.consumer(kafka, group_id=None) as consumer:
        consumer.assign([tp])
        contiguity.expect(tp, await consumer.position(tp))  # as the runtime does when assigned

        def holes(outcome: str) -> int:
            return met[topics.RAW, outcome]

        # 3 and 4 are not readable yet: the records before them go on, the rest is fetched again.
        assert contiguity.cut(consumer, {tp: _records(tp, 0, 1, 2, 5, 6)}) == {
            tp: _records(tp, 0, 1, 2)
        }
        assert await consumer.position(tp) == 3
        for refetch in range(2, HOLE_REFETCHES + 1):  # the hole is still there
            assert contiguity.cut(consumer, {tp: _records(tp, 5, 6)}) == {}
            assert (await consumer.position(tp), holes("refetched")) == (3, refetch)
        # Fetched again HOLE_REFETCHES times: a hole for good (a transaction's markers, say).
        assert contiguity.cut(consumer, {tp: _records(tp, 5, 6)}) == {tp: _records(tp, 5, 6)}
        assert holes("passed") == 1
        # The next hole is fetched again, and once filled nothing is left out.
        assert contiguity.cut(consumer, {tp: _records(tp, 9)}) == {}
        assert contiguity.cut(consumer, {tp: _records(tp, 7, 8, 9)}) == {tp: _records(tp, 7, 8, 9)}
        assert (holes("refetched"), holes("passed")) == (HOLE_REFETCHES + 1, 1)
        # Records before the expected offset are the consumer set back (a reset): no hole.
        assert contiguity.cut(consumer, {tp: _records(tp, 4, 5)}) == {tp: _records(tp, 4, 5)}
        assert contiguity.cut(consumer, {tp: _records(tp, 6, 8)}) == {tp: _records(tp, 6)}


async def test_producers_writing_one_partition_together_lose_no_record_to_the_consumer(
    kafka: KafkaSettings,
) -> None:
    # The embedded broker may serve one producer's batch before an earlier one of another is
    # readable (a few times in 100,000 records read live): the runtime fetches the hole again.
    producers, batches, size = 4, 1_500, 10
    total = producers * batches * size
    await kafka_io.ensure_topics(kafka)

    async def produce(who: int) -> None:
        async with kafka_io.producer(kafka) as producer:
            for batch in range(batches):
                values = (b"%d-%d-%d" % (who, batch, n) for n in range(size))
                records = [OutRecord(None, value, [], partition=0) for value in values]
                await kafka_io.send_all(producer, kafka.topic(topics.RAW), records)

    async def owned() -> bool:
        return bool(runtime.owned)

    async def copied_all() -> bool:
        assert not copying.done(), copying
        return sum((await committed(kafka, Copier.group_id, topics.RAW)).values()) >= total

    metrics = Metrics("copier")
    runtime = Runtime(Copier(max_batch=500), kafka, metrics=metrics)
    stop = asyncio.Event()
    copying = asyncio.create_task(runtime.run(stop))
    try:
        await eventually(owned, "the copier owns the partitions")
        await asyncio.gather(*(produce(who) for who in range(producers)))  # read live meanwhile
        await eventually(copied_all, f"{total} records copied")
    finally:
        stop.set()
        await copying
    copied = {record.value for record in await kafka_io.read_all(kafka, topics.EVENTS)}
    assert len(copied) == total
    assert metrics.holes.labels("copier", topics.RAW, "passed")._value.get() == 0
