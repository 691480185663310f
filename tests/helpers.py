"""What integration tests share beyond fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.settings import KafkaSettings, NormalizerSettings, StoreSettings
from normalize import service
from schemas.raw import RawMeta, raw_headers
from sinks import store

RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

DEADLINE_S = 60.0


def settings_for(bootstrap: str, topic_prefix: str = "") -> KafkaSettings:
    """Settings for a test's broker, with group timings short enough for rebalance tests: the
    embedded broker makes a member that joins a group just left wait out the old member's
    session (a rejoin takes 4 s with these 2 s, 18 s with the default 10 s). Shorter sessions
    expire under a loaded machine's stalls and rebalance tests that do not expect it."""
    return KafkaSettings(
        bootstrap=bootstrap,
        topic_prefix=topic_prefix,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=200,
        request_timeout_ms=5_000,
    )


def env_for(kafka: KafkaSettings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a `callstream` process that is to use `kafka` as this one does: its
    topic prefix, group and request timings (the bootstrap goes in `--kafka`); then `extra`."""
    same = {
        "TOPIC_PREFIX": kafka.topic_prefix,
        "SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
        "HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
        "REQUEST_TIMEOUT_MS": str(kafka.request_timeout_ms),
    }
    kafka_env = {f"CALLSTREAM_KAFKA__{name}": value for name, value in same.items()}
    return {**os.environ, **kafka_env, **(extra or {})}


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, within_s: float = DEADLINE_S
) -> None:
    """Poll `check` until it holds; fail naming `what` if it does not within `within_s`."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {within_s:.0f}s: {what}"
        await asyncio.sleep(0.1)


async def committed(
    kafka: KafkaSettings, group: str, *topic_names: str
) -> dict[TopicPartition, int]:
    """`group`'s committed offset of every partition of `topic_names` (0 where none)."""
    async with kafka_io.consumer(kafka, group_id=group) as consumer:
        partitions = [
            tp
            for topic in topic_names
            for tp in await kafka_io.partitions_of(consumer, kafka.topic(topic))
        ]
        return {tp: (await consumer.committed(tp)) or 0 for tp in partitions}


def raw(
    provider: str, body: bytes, context: dict[str, str] | None = None, key: bytes | None = None
) -> OutRecord:
    """A raw record as the ingress or a poller writes it to calls.raw."""
    meta = RawMeta(provider, "webhook", RECEIVED_AT, "req-1", "application/json", context or {})
    return OutRecord(key, body, raw_headers(meta))


@contextlib.asynccontextmanager
async def serving(
    serve: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Task[None]]:
    """`serve(stop)` as a task of this process, stopped and awaited on leaving the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


async def drained(kafka: KafkaSettings, group: str, topic: str, task: asyncio.Task[None]) -> None:
    """Wait until `group` has committed every record `topic` holds now."""
    total = len(await kafka_io.read_all(kafka, topic))

    async def done() -> bool:
        assert not task.done(), task
        return sum((await committed(kafka, group, topic)).values()) >= total

    await eventually(done, f"{group} committed {total} records of {topic}")


def normalizer(kafka: KafkaSettings) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    return lambda stop: service.serve(NormalizerSettings(group_id="test-normalizer"), kafka, stop)


def store_sink(
    kafka: KafkaSettings, url: str
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    return lambda stop: store.serve(StoreSettings(url=url, group_id="test-store"), kafka, stop)
