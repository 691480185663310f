"""The store service against the real broker and each real store: rows, dead letters, crash."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import msgspec
from helpers import committed, drained, eventually, normalizer, raw, serving, store_sink
from sink_helpers import Query, events_of, sessions_of

from callstream import samples
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import KafkaSettings, StoreSettings
from schemas import CallEvent, SessionRecord, topics
from schemas.raw import read_raw_headers
from sinks import store

_encoder = msgspec.json.Encoder()
GOLDEN = Path(__file__).parent.parent / "golden"


def _records(items: list[CallEvent] | list[SessionRecord]) -> list[OutRecord]:
    return [OutRecord(item.session_key.encode(), _encoder.encode(item), []) for item in items]


async def _counts(query: Query) -> tuple[int, int]:
    try:
        [(events,)] = await query("SELECT count(*) FROM call_events")
        [(sessions,)] = await query("SELECT count(*) FROM call_sessions")
    except Exception:  # the service has not migrated the store yet
        return -1, -1
    return events, sessions


async def test_events_and_sessions_become_rows_and_garbage_is_dead_lettered(
    kafka: KafkaSettings, store_url: str, query: Query
) -> None:
    events = events_of(samples.payloads("wavecell", 300))
    sessions = sessions_of(events)
    await kafka_io.publish(kafka, topics.EVENTS, _records(events))
    await kafka_io.publish(kafka, topics.SESSIONS, _records(sessions))
    await kafka_io.publish(kafka, topics.EVENTS, [OutRecord(b"k", b"not json", [])])
    stop, metrics = asyncio.Event(), Metrics("store")
    settings = StoreSettings(url=store_url, group_id="test-store", max_batch=200)
    serving = asyncio.create_task(store.serve(settings, kafka, stop, metrics))
    try:
        latest = {session.session_key: session for session in sessions}
        expected = (len(events), len(latest))

        async def stored() -> bool:
            assert not serving.done(), serving
            return await _counts(query) == expected

        await eventually(stored, f"{expected} rows")
        [(count,)] = await query("SELECT count(*) FROM call_sessions WHERE event_count = 2")
        assert count == len(latest)  # every session at its newest version
    finally:
        stop.set()
        await serving
    dead = await kafka_io.read_all(kafka, topics.DLQ)
    assert [(m.value, dict(m.headers)[topics.ERROR_STAGE]) for m in dead] == [
        (b"not json", b"store")
    ]
    sample = metrics.registry.get_sample_value
    assert sample("callstream_store_written_rows_total", {"service": "store", "table": "events"})
    assert metrics.total("dead_lettered") == 1


async def _start_store(kafka: KafkaSettings, url: str, log: Path) -> asyncio.subprocess.Process:
    env = os.environ | {
        "CALLSTREAM_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "CALLSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "200",
        "CALLSTREAM_STORE__MAX_BATCH": "100",
    }
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "store", "--kafka", kafka.bootstrap,
            "--store", url, env=env, stdout=stderr, stderr=stderr,
        )  # fmt: skip


async def _committed(kafka: KafkaSettings) -> int:
    return sum(
        (await committed(kafka, "callstream-store", topics.EVENTS, topics.SESSIONS)).values()
    )


async def test_a_killed_store_loses_no_row_and_doubles_none(
    kafka: KafkaSettings, store_url: str, query: Query, tmp_path: Path
) -> None:
    events = events_of(samples.payloads("wavecell", 3_000))
    log = tmp_path / "store.log"
    process = await _start_store(kafka, store_url, log)
    try:
        for start in range(0, 3_000, 100):  # fed while it runs
            await kafka_io.publish(kafka, topics.EVENTS, _records(events[start : start + 100]))

        async def some_committed() -> bool:
            return await _committed(kafka) > 0

        await eventually(some_committed, f"the first commits; see {log}")
        process.kill()  # SIGKILL: between some write and its commit, most likely
        await process.wait()
        await kafka_io.publish(kafka, topics.EVENTS, _records(events[3_000:]))
        process = await _start_store(kafka, store_url, log)

        async def all_committed() -> bool:
            return await _committed(kafka) >= len(events)

        await eventually(all_committed, f"every event committed; see {log}")
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
    assert await query("SELECT count(*), count(DISTINCT event_id) FROM call_events") == [
        (len({event.event_id for event in events}),) * 2
    ]


async def test_a_duration_past_2_63_is_dead_lettered_at_normalize_and_the_calls_after_it_are_stored(
    kafka: KafkaSettings, store_url: str, query: Query
) -> None:
    """Issue 15, finding 1: a Wavecell callback with `"duration": 9223372036854775808` reached
    the store, which cannot hold the integer. Now the normalizer refuses it (contract 1.1,
    plausible values) and the 100 good callbacks sent after it are stored."""
    bad = (GOLDEN / "wavecell" / "error_duration_past_2_63.json").read_bytes()
    assert b'"duration": 9223372036854775808' in bad
    good = samples.payloads("wavecell", 100)
    await kafka_io.publish(kafka, topics.RAW, [raw("wavecell", body) for body in [bad, *good]])
    expected = len(events_of(good))  # two legs each

    async with serving(normalizer(kafka)) as normalizing, serving(store_sink(kafka, store_url)):
        await drained(kafka, "test-normalizer", topics.RAW, normalizing)

        async def stored() -> bool:
            return (await _counts(query))[0] == expected

        await eventually(stored, f"{expected} events in the store")

    (letter,) = await kafka_io.read_all(kafka, topics.DLQ)
    headers = dict(letter.headers)
    assert letter.value == bad
    assert headers[topics.ERROR_STAGE] == b"normalize"
    assert headers[topics.ERROR].decode() == (
        "wavecell: $.details.callB.duration: 9223372036854775808 is outside 0 to 604800 seconds"
    )
    assert read_raw_headers(letter.headers).provider == "wavecell"
    assert await query("SELECT count(*) FROM call_events WHERE duration_s > 604800") == [(0,)]
