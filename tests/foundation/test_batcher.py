"""The Batcher on the real broker: sends made together go as one batch per partition and return
only once it is acknowledged; a broker that does not answer fails them (in time, with an ack
timeout), and a full buffer refuses at once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiokafka.errors import KafkaError
from servers import Broker

from foundation import kafka as kafka_io
from foundation.kafka import Batcher, OutRecord, Overloaded
from foundation.settings import KafkaSettings
from schemas import topics

BODY = b'{"n": 1}'


@pytest.fixture
def broker(own_broker: Broker) -> Broker:
    """A broker of the module's tests' own: they pause it."""
    return own_broker


@pytest.fixture
def kafka(own_kafka: KafkaSettings) -> KafkaSettings:
    return own_kafka


@pytest_asyncio.fixture(loop_scope="function")  # its sender runs in the test's loop
async def producer(kafka: KafkaSettings) -> AsyncIterator[kafka_io.Producer]:
    async with kafka_io.producer(kafka) as client:
        yield client


async def _pending(batcher: Batcher, pending: int) -> None:
    """Until `pending` bytes were sent and are not acknowledged yet."""
    async with asyncio.timeout(10):
        while batcher.pending_bytes < pending:
            await asyncio.sleep(0.01)


async def test_sends_within_a_linger_go_as_one_batch_per_partition_and_all_land(
    kafka: KafkaSettings, producer: kafka_io.Producer
) -> None:
    batcher = Batcher(producer, linger_s=0.5, max_pending_bytes=1 << 20)
    keyless = [OutRecord(None, b'{"n": %d}' % n, [("n", b"%d" % n)]) for n in range(300)]
    keyed = [OutRecord(b"key-%d" % n, b'{"k": %d}' % n, []) for n in range(100)]
    placed = [OutRecord(b"key-%d" % n, b'{"p": %d}' % n, [], partition=2) for n in range(20)]
    sent = keyless + keyed + placed
    await asyncio.gather(*(batcher.send(topics.RAW, record) for record in sent))
    assert batcher.pending_bytes == 0

    landed = await kafka_io.read_all(kafka, topics.RAW)
    assert sorted(r.value for r in landed) == sorted(r.value for r in sent)
    assert {r.partition for r in landed if r.value.startswith(b'{"p"')} == {2}
    assert all(dict(r.headers)["n"] == r.value[6:-1] for r in landed if r.key is None)
    # Records without a key share one partition while a batch is open: here, one batch.
    assert len(Counter(r.partition for r in landed if r.key is None)) == 1
    partitions = sorted(await producer.partitions_for(topics.RAW))
    keys = [r for r in landed if r.value.startswith(b'{"k"')]
    assert all(r.partition == kafka_io.partition_for(r.key, partitions) for r in keys)


async def test_a_send_returns_only_once_the_broker_acknowledged_its_batch(
    broker: Broker, kafka: KafkaSettings, producer: kafka_io.Producer
) -> None:
    batcher = Batcher(producer, linger_s=0.001, max_pending_bytes=1 << 20)
    await batcher.send(topics.RAW, OutRecord(None, BODY, []))  # metadata known, connection up
    broker.pause()
    try:
        sends = [
            asyncio.create_task(batcher.send(topics.RAW, OutRecord(None, b"%d" % n, [])))
            for n in range(50)
        ]
        await _pending(batcher, 50 * 1)
        # Hold them past the point where a send answered before its ack would have returned.
        await asyncio.sleep(0.3)
        assert not any(send.done() for send in sends)
    finally:
        broker.resume()
    await asyncio.wait_for(asyncio.gather(*sends), 30)
    assert len(await kafka_io.read_all(kafka, topics.RAW)) == 51


async def test_past_the_ack_timeout_a_send_raises_and_its_record_may_still_land(
    broker: Broker, kafka: KafkaSettings, producer: kafka_io.Producer
) -> None:
    batcher = Batcher(producer, max_pending_bytes=1 << 20, ack_timeout_s=0.5)
    await batcher.send(topics.RAW, OutRecord(None, BODY, []))
    broker.pause()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.send(topics.RAW, OutRecord(None, BODY, [])), 5)
        assert batcher.pending_bytes == len(BODY)  # the producer still holds it
    finally:
        broker.resume()
    await batcher.close()
    await producer.flush()
    assert batcher.pending_bytes == 0
    assert len(await kafka_io.read_all(kafka, topics.RAW)) == 2


async def test_while_the_pending_bytes_are_at_the_bound_a_send_is_refused_at_once(
    broker: Broker, producer: kafka_io.Producer
) -> None:
    batcher = Batcher(producer, max_pending_bytes=len(BODY))
    await batcher.send(topics.RAW, OutRecord(None, BODY, []))
    broker.pause()
    try:
        first = asyncio.create_task(batcher.send(topics.RAW, OutRecord(None, BODY, [])))
        await _pending(batcher, len(BODY))
        with pytest.raises(Overloaded):
            await asyncio.wait_for(batcher.send(topics.RAW, OutRecord(None, BODY, [])), 1)
    finally:
        broker.resume()
    await asyncio.wait_for(first, 30)
    await batcher.send(topics.RAW, OutRecord(None, BODY, []))  # room again


async def test_a_killed_broker_fails_the_sends_waiting(
    broker: Broker, producer: kafka_io.Producer
) -> None:
    batcher = Batcher(producer, max_pending_bytes=1 << 20, ack_timeout_s=3)
    await batcher.send(topics.RAW, OutRecord(None, BODY, []))
    broker.kill()
    sends = [batcher.send(topics.RAW, OutRecord(None, BODY, [])) for _ in range(20)]
    failed = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 10)
    assert all(isinstance(error, KafkaError | TimeoutError) for error in failed), failed
