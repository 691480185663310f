"""`callstream replay` against the real broker and a SQLite store: nothing changes, filters."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import RECEIVED_AT, committed, drained, normalizer, raw, serving, store_sink

from callstream import samples
from callstream.progress import Progress
from callstream.replay import ReplayError, replay
from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from schemas import topics


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
    offsets = await committed(kafka, "test-normalizer", topics.RAW)
    assert sum(offsets.values()) == len(bodies)  # untouched


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
