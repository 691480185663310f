"""`callstream replay` against the embedded broker and a SQLite store: nothing changes, filters."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from helpers import eventually

from callstream import kafka as kafka_io
from callstream import samples, topics
from callstream.kafka import OutRecord
from callstream.progress import Progress
from callstream.records import RawMeta, raw_headers
from callstream.replay import ReplayError, replay
from callstream.settings import KafkaSettings, NormalizerSettings, StoreSettings
from normalize import service
from sinks import store

RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEADLINE_S = 60.0


def raw(provider: str, body: bytes, context: dict[str, str] | None = None) -> OutRecord:
    meta = RawMeta(provider, "webhook", RECEIVED_AT, "req-1", "application/json", context or {})
    return OutRecord(None, body, raw_headers(meta))


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


async def committed(kafka: KafkaSettings, group: str, topic: str) -> int:
    """The sum of `group`'s committed offsets on `topic`."""
    consumer = kafka_io.consumer(kafka, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        return sum([(await consumer.committed(tp)) or 0 for tp in tps])
    finally:
        await consumer.stop()


async def drained(kafka: KafkaSettings, group: str, topic: str, task: asyncio.Task[None]) -> None:
    """Wait until `group` has committed every record `topic` holds now."""
    total = len(await kafka_io.read_all(kafka, topic))

    async def done() -> bool:
        assert not task.done(), task
        return await committed(kafka, group, topic) >= total

    await eventually(done, f"{group} committed {total} records of {topic}", DEADLINE_S)


def normalizer(kafka: KafkaSettings) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    return lambda stop: service.serve(NormalizerSettings(group_id="test-normalizer"), kafka, stop)


def store_sink(
    kafka: KafkaSettings, url: str
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    return lambda stop: store.serve(StoreSettings(url=url, group_id="test-store"), kafka, stop)


def rows(url: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        return db.execute("SELECT * FROM call_events ORDER BY event_id").fetchall()


def quiet() -> Progress:
    return Progress("replay", stream=io.StringIO())


async def test_a_replay_over_a_processed_stream_changes_no_row(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    bodies = [raw("wavecell", body) for body in samples.payloads("wavecell", 40)]
    bodies += [raw("voice_messaging", body) for body in samples.payloads("voice_messaging", 20)]
    await kafka_io.publish(kafka, topics.RAW, bodies)
    async with serving(normalizer(kafka)) as task:
        await drained(kafka, "test-normalizer", topics.RAW, task)
    async with serving(store_sink(kafka, url)) as task:
        await drained(kafka, "test-store", topics.EVENTS, task)
    before = rows(url)
    events = len(await kafka_io.read_all(kafka, topics.EVENTS))
    assert len(before) == events > 0

    result = await replay(
        kafka, since=None, from_beginning=True, provider=None, stop=asyncio.Event(),
        progress=quiet(),
    )  # fmt: skip
    assert result == (len(bodies), 0, events, 0, True)
    assert len(await kafka_io.read_all(kafka, topics.EVENTS)) == 2 * events
    async with serving(store_sink(kafka, url)) as task:
        await drained(kafka, "test-store", topics.EVENTS, task)
    assert rows(url) == before
    assert await committed(kafka, "test-normalizer", topics.RAW) == len(bodies)  # untouched


async def test_replay_since_a_time_and_of_one_provider_only(kafka: KafkaSettings) -> None:
    await kafka_io.publish(
        kafka, topics.RAW, [raw("wavecell", b) for b in samples.payloads("wavecell", 5)]
    )
    last_ms = max(r.timestamp for r in await kafka_io.read_all(kafka, topics.RAW))
    while time.time() * 1000 <= last_ms + 1:  # the next records must be strictly later
        await asyncio.sleep(0.005)
    since = datetime.fromtimestamp((last_ms + 1) / 1000, UTC)
    later = [raw("wavecell", b) for b in samples.payloads("wavecell", 7, seed=1)]
    later += [raw("voice_messaging", b) for b in samples.payloads("voice_messaging", 3)]
    later.append(raw("wavecell", b"[1]"))  # fails: dead-lettered with stage replay
    await kafka_io.publish(kafka, topics.RAW, later)

    result = await replay(
        kafka, since=since, from_beginning=False, provider="wavecell", stop=asyncio.Event(),
        progress=quiet(),
    )  # fmt: skip
    # Kafka starts at the first later record (read 11); the embedded broker earlier (read 16)
    assert (result.read - result.skipped, result.dead_lettered) == (8, 1)
    events = await kafka_io.read_all(kafka, topics.EVENTS)
    assert len(events) == result.produced > 0
    assert {dict(e.headers)["ce_source"] for e in events} == {b"callstream/wavecell"}
    [dead] = await kafka_io.read_all(kafka, topics.DLQ)
    assert (dead.value, dict(dead.headers)[topics.ERROR_STAGE]) == (b"[1]", b"replay")


async def test_replay_reads_only_what_was_there_at_its_start(kafka: KafkaSettings) -> None:
    await kafka_io.publish(
        kafka, topics.RAW, [raw("wavecell", b) for b in samples.payloads("wavecell", 20)]
    )
    stop = asyncio.Event()
    progress = quiet()
    result = await replay(
        kafka, since=None, from_beginning=True, provider=None, stop=stop, progress=progress
    )
    assert (result.read, result.complete, progress.done, progress.total) == (20, True, 20, 20)
    stop.set()  # a replay stopped before it starts reads nothing and says so
    await kafka_io.publish(kafka, topics.RAW, [raw("wavecell", samples.payloads("wavecell", 1)[0])])
    result = await replay(
        kafka, since=None, from_beginning=True, provider=None, stop=stop, progress=quiet()
    )
    assert (result.read, result.complete) == (0, False)


async def test_a_replay_needs_exactly_one_start(kafka: KafkaSettings) -> None:
    with pytest.raises(ReplayError):
        await replay(kafka, since=None, from_beginning=False, provider=None, stop=asyncio.Event())
    with pytest.raises(ReplayError):
        await replay(
            kafka, since=RECEIVED_AT, from_beginning=True, provider=None, stop=asyncio.Event()
        )
