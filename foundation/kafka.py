"""Kafka plumbing every service shares: clients, the topic bootstrap, key partitioning, batches.

Producers wait for acks=all; idempotence is a setting (Apache Kafka: on; the embedded broker
cannot). Consumers never auto-commit: services commit after what they produced is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
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
MAX_BATCH_BYTES = 1 << 20


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
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "client_id": kafka.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        # "earliest": a new group must not skip what was written before it joined. (The embedded
        # broker also answers "latest" wrongly for multi-record batches.)
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "request_timeout_ms": kafka.request_timeout_ms,
        "max_partition_fetch_bytes": 4 * MAX_BATCH_BYTES,
    }
    return Consumer(*subscribe, **(options | overrides))


async def ensure_topics(kafka: KafkaSettings, names: Iterable[str] = topics.ALL) -> None:
    """Create the topics that do not exist yet; idempotent, safe to run from every service.

    Run it before any other client touches a topic: a metadata request for a missing topic
    makes some brokers (the embedded one included) auto-create it with their defaults.
    """
    client = admin(kafka)
    await client.start()
    try:
        response = await client.create_topics(
            [
                NewTopic(
                    name,
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
    """Produce `records` with the batch API, each to its key's partition; return when all are
    acked, with the offset of the last record written in each partition that got some.

    One `send` per record costs aiokafka ~25 µs; appending to a per-partition batch ~1 µs. A full
    batch is sent at once and a new one opened. Raises what the producer raises if any batch is
    not acknowledged.
    """
    partitions = sorted(await client.partitions_for(topic))
    open_batches: dict[int, BatchBuilder] = {}
    acks: list[tuple[int, int, asyncio.Future[Any]]] = []
    for record in records:
        key, value, headers = record.key, record.value, record.headers
        partition = partition_for(key, partitions) if key is not None else random.choice(partitions)
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
    """Produce `records` with a producer of their own and wait for every ack (tools, benchmarks)."""
    async with producer(kafka) as client:
        await send_all(client, topic, records)


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


async def read_all(kafka: KafkaSettings, topic: str, *, within_s: float = 30.0) -> list[Record]:
    """Every record of `topic` written so far, in offset order per partition (no group).

    Raises TimeoutError if the topic cannot be read to its end within `within_s`.
    """
    records: list[Record] = []
    async with consumer(kafka, group_id=None, fetch_max_wait_ms=50) as client:
        partitions = await partitions_of(client, topic)
        client.assign(partitions)
        await client.seek_to_beginning(*partitions)
        async with asyncio.timeout(within_s):
            pending = set(partitions)
            while pending:
                for batch in (await client.getmany(*pending, timeout_ms=50)).values():
                    records.extend(batch)
                pending = {tp for tp in pending if not await at_end(client, tp)}
    return records
