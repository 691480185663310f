"""TopicScan, the one reader of a bounded range of a topic, on the real broker: its starts (the
beginning, an offset, a time, the last record), its ends, a start not within the topic, `stop`
and the stall timeout."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from itertools import groupby

import pytest
from servers import Broker

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord, Record, TopicScan
from foundation.settings import KafkaSettings
from schemas import topics


async def _publish(kafka: KafkaSettings, counts: dict[int, int]) -> None:
    """`counts[p]` records in partition p of calls.raw, valued "p:offset"."""
    await kafka_io.publish(
        kafka,
        topics.RAW,
        [
            OutRecord(None, b"%d:%d" % (p, n), [], partition=p)
            for p, c in counts.items()
            for n in range(c)
        ],
    )


async def _offsets(scan: TopicScan) -> dict[int, list[int]]:
    """Each partition's offsets as `scan` yields them, in order; a batch's records of a
    partition are consecutive."""
    read: dict[int, list[int]] = {}
    async for batch in scan.batches():
        assert len(batch) <= (scan.max_records or len(batch))
        runs = [partition for partition, _ in groupby(r.partition for r in batch)]
        assert len(runs) == len(set(runs))
        for record in batch:
            read.setdefault(record.partition, []).append(record.offset)
    return read


async def _drain(batches: AsyncIterator[list[Record]]) -> None:
    async for _ in batches:
        pass


async def test_each_partition_is_read_from_its_start_to_before_its_end(
    kafka: KafkaSettings,
) -> None:
    await _publish(kafka, {0: 10, 1: 5, 2: 3})
    scan = TopicScan(
        kafka, topics.RAW, starts={0: 3, 1: None, 2: 1}, ends={0: 7, 2: 100}, max_records=2
    )
    assert await _offsets(scan) == {0: [3, 4, 5, 6], 1: [0, 1, 2, 3, 4], 2: [1, 2]}
    assert (scan.read, scan.total, scan.complete) == (11, 11, True)
    assert scan.ends == {0: 7, 1: 5, 2: 3}  # an end is never past the highwater

    everything = TopicScan(kafka, topics.RAW)  # every partition, from its beginning
    assert await _offsets(everything) == {0: list(range(10)), 1: list(range(5)), 2: [0, 1, 2]}
    assert everything.total == 18


async def test_a_second_scan_reads_up_to_the_ends_of_the_first(kafka: KafkaSettings) -> None:
    await _publish(kafka, {0: 4})
    scan = TopicScan(kafka, topics.RAW, starts={0: None})
    assert await _offsets(scan) == {0: [0, 1, 2, 3]}
    await _publish(kafka, {0: 2})  # what a job appends to the topic it scans
    assert await _offsets(scan) == {0: [0, 1, 2, 3]}
    assert await _offsets(TopicScan(kafka, topics.RAW, starts={0: None})) == {0: list(range(6))}


async def test_a_start_at_a_time_reads_from_the_first_record_at_or_after_it(
    kafka: KafkaSettings,
) -> None:
    async with kafka_io.producer(kafka) as producer:
        for n, ms in enumerate((1_000, 2_000, 3_000)):
            await producer.send_and_wait(
                kafka.topic(topics.RAW), b"%d" % n, partition=0, timestamp_ms=ms
            )
    since = datetime.fromtimestamp(2, UTC)
    later = datetime.fromtimestamp(4, UTC)
    scan = TopicScan(kafka, topics.RAW, starts={0: since, 1: later, 2: None})
    read = await _offsets(scan)  # partition 1: no record at or after its time; 2: empty
    assert scan.starts is not None
    # Kafka starts at offset 1; the embedded broker answers an earlier offset
    assert read == {0: list(range(scan.starts[0], 3))}
    assert scan.starts[0] <= 1
    assert scan.total == scan.read == len(read[0])


async def test_a_start_at_last_reads_the_last_record_and_not_the_history_before(
    kafka: KafkaSettings,
) -> None:
    await _publish(kafka, {0: 10, 1: 1})
    await _publish(kafka, {0: 3})  # a last batch of three
    read = await _offsets(TopicScan(kafka, topics.RAW, starts=kafka_io.LAST))
    # Kafka reads the last record alone; the embedded broker answers an end offset short of
    # the highwater (within the last batch), so it reads some of that batch too
    assert read[0][-1] == 12
    assert len(read[0]) <= 4
    assert read[1] == [0]
    assert 2 not in read  # empty


async def test_a_start_past_the_end_is_read_from_the_beginning_after_the_caller_is_told(
    kafka: KafkaSettings,
) -> None:
    await _publish(kafka, {0: 5, 1: 3})
    seen: list[str] = []
    scan = TopicScan(
        kafka, topics.RAW, starts={0: 50, 1: 1}, on_start_outside=lambda p: seen.append(f"{p}")
    )
    async for batch in scan.batches():
        seen += [f"{r.partition}:{r.offset}" for r in batch if r.partition == 0]
    assert seen == ["0", "0:0", "0:1", "0:2", "0:3", "0:4"]
    assert (scan.starts, scan.total) == ({0: 0, 1: 1}, 7)


async def test_stop_ends_the_scan_before_its_next_fetch(kafka: KafkaSettings) -> None:
    await _publish(kafka, {0: 5})
    stop = asyncio.Event()
    scan = TopicScan(kafka, topics.RAW, max_records=2)
    read: list[Record] = []
    async for batch in scan.batches(stop):
        read += batch
        stop.set()
    assert (len(read), scan.read, scan.complete) == (2, 2, False)
    stop.set()
    assert [batch async for batch in scan.batches(stop)] == []


async def test_a_scan_that_gets_nothing_for_its_stall_timeout_raises(
    own_broker: Broker, own_kafka: KafkaSettings
) -> None:
    # 6 MB that do not compress: more than the consumer fetches ahead of a one-record batch
    records = [OutRecord(None, os.urandom(500 << 10), [], partition=0) for _ in range(12)]
    await kafka_io.publish(own_kafka, topics.RAW, records)
    scan = TopicScan(own_kafka, topics.RAW, starts={0: None}, max_records=1, stall_s=0.5)
    async with aclosing(scan.batches()) as batches:
        assert len(await anext(batches)) == 1
        own_broker.pause()
        try:
            with pytest.raises(TimeoutError, match=r"calls\.raw gave nothing for 0\.5 s"):
                await asyncio.wait_for(_drain(batches), 20)
        finally:
            own_broker.resume()
