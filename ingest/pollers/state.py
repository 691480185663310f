"""Pollers' durable state: a compacted topic that a consumer group splits among instances.

Each instance owns the partitions the group assigns to it and the keys they hold (the tracked
calls of calls.track, the accounts' checkpoints of calls.checkpoints). On assignment a
partition is read again from its beginning (compaction keeps about one record per key), and
the owner starts working on its keys once the partition is read to its end; on revocation the
owner stops working on them before the group moves them on. Offsets are never committed: every
assignment is a full re-read, so a restart or a rebalance resumes from the last record written.
Scaling out is Kafka's: more instances in the group, up to the partition count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import POLL_MS, Record
from foundation.settings import KafkaSettings

log = structlog.get_logger("callstream.poll")

FETCH_WAIT_MS = 50


class PollerCrashedError(CallstreamError):
    """A poller's work failed in a way it does not handle (a bug): the service stops."""


class Background:
    """An owner's background tasks, and the first unexpected failure of one (follow() raises it:
    a bug must stop the service rather than leave keys unpolled)."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None

    def start(self, work: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()


class Owner(Protocol):
    """What a poller does with the partitions it owns."""

    background: Background

    def apply(self, record: Record) -> None:
        """A record of an owned partition, in offset order (also the owner's own writes)."""
        ...

    async def start(self, partition: int) -> None:
        """`partition` is read to its end: start working on its keys."""
        ...

    async def stop(self, partitions: Collection[int]) -> None:
        """Stop working on the keys of `partitions` and forget them; return once stopped."""
        ...


async def follow(
    kafka: KafkaSettings,
    topic: str,
    group_id: str,
    owner: Owner,
    stop: asyncio.Event,
    *,
    counted: Callable[[str, str], None] = kafka_io.uncounted,
) -> None:
    """Feed `owner` the partitions of `topic` (a `schemas.topics` name) that group `group_id`
    assigns, until `stop`, each partition's records in unbroken offset order (`counted` is told
    of each hole met, as the consumer runtime's metrics are).

    Raises PollerCrashedError when the owner's work failed.
    """
    consumer = kafka_io.consumer(kafka, group_id=group_id, fetch_max_wait_ms=FETCH_WAIT_MS)
    contiguity = kafka_io.Contiguity({kafka.topic(topic): topic}, counted, log)
    listener = _Listener(owner, consumer, contiguity, kafka.request_timeout_ms / 1000)
    consumer.subscribe([kafka.topic(topic)], listener=listener)
    async with consumer:  # stopping it leaves the group: the partitions move on at once
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=POLL_MS)
                if (failure := owner.background.failure) is not None:
                    raise PollerCrashedError(f"{group_id}: {failure!r}") from failure
                owned = {tp: records for tp, records in batch.items() if tp in listener.owned}
                for records in contiguity.cut(consumer, owned).values():
                    for record in records:
                        owner.apply(record)
                await listener.start_caught_up()
        finally:
            await owner.stop(sorted(tp.partition for tp in listener.owned))


class _Listener(ConsumerRebalanceListener):
    def __init__(
        self,
        owner: Owner,
        consumer: AIOKafkaConsumer,
        contiguity: kafka_io.Contiguity,
        request_timeout_s: float,
    ) -> None:
        self.owner, self.consumer, self.contiguity = owner, consumer, contiguity
        self.request_timeout_s = request_timeout_s
        self.owned: set[TopicPartition] = set()
        self.restoring: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        mine = self.owned & set(revoked)
        await self.owner.stop(sorted(tp.partition for tp in mine))
        self.owned -= mine
        self.restoring -= mine
        for tp in revoked:
            self.contiguity.forget(tp)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.owned |= set(assigned)
        self.restoring |= set(assigned)
        if assigned:
            await self.consumer.seek_to_beginning(*assigned)
            await self.contiguity.expect_positions(self.consumer, assigned, self.request_timeout_s)
        log.info("poll_partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def start_caught_up(self) -> None:
        """Start the owner on each restoring partition that is now read to its end."""
        for tp in sorted(self.restoring):
            if await kafka_io.at_end(self.consumer, tp):
                self.restoring.discard(tp)
                await self.owner.start(tp.partition)
