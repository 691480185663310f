"""The store service against the real broker and each real store: rows, dead letters, crash."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest
from helpers import committed, drained, env_for, eventually, normalizer, raw, serving, store_sink
from sink_helpers import Query, events_of, sessions_of

from callstream import samples
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import KafkaSettings, StoreSettings
from schemas import CallEvent, SessionRecord, topics
from schemas.raw import read_raw_headers
from sinks import store
from sinks.backend import StoreTaken
from sinks.sqlite import SqliteBackend

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

        async def stored() -> bool:  # a session's newer version may come a batch later
            assert not serving.done(), serving
            if await _counts(query) != expected:
                return False
            [(newest,)] = await query("SELECT count(*) FROM call_sessions WHERE event_count = 2")
            return newest == len(latest)

        await eventually(stored, f"{expected} rows, every session at its newest version")
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
    env = env_for(kafka, {"CALLSTREAM_STORE__MAX_BATCH": "100"})
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


async def _serve_until_stored(
    kafka: KafkaSettings, url: str, query: Query, expected: tuple[int, int], metrics: Metrics
) -> None:
    settings = StoreSettings(url=url, group_id="test-store", max_batch=50)
    async with serving(lambda stop: store.serve(settings, kafka, stop, metrics)) as task:

        async def stored() -> bool:
            assert not task.done(), task
            return await _counts(query) == expected

        await eventually(stored, f"{expected} rows")


async def test_a_value_the_store_cannot_write_is_dead_lettered_and_the_rest_is_stored(
    kafka: KafkaSettings, store_url: str, query: Query
) -> None:
    """A duration past 2^63 fits no INTEGER column (SQLite: OverflowError; PostgreSQL: bigint
    out of range): that one event is dead-lettered at stage `store`, every other row is written."""
    events = events_of(samples.payloads("wavecell", 100))
    poisoned = msgspec.structs.replace(events[37], duration_s=2**63)
    events[37] = poisoned
    await kafka_io.publish(kafka, topics.EVENTS, _records(events))
    metrics = Metrics("store")
    await _serve_until_stored(kafka, store_url, query, (len(events) - 1, 0), metrics)
    [letter] = await kafka_io.read_all(kafka, topics.DLQ)
    assert letter.value == _encoder.encode(poisoned)
    assert dict(letter.headers)[topics.ERROR_STAGE] == b"store"
    assert metrics.total("dead_lettered") == 1


class _Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (connections closed, new ones refused) and
    restore: the database going away and coming back, as the store sees it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.close()
        await self.server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links -= {writer, up_writer}


async def test_a_database_that_goes_away_is_waited_for_with_nothing_lost_or_dead_lettered(
    kafka: KafkaSettings, postgres_url: str
) -> None:
    parts = urlsplit(postgres_url)
    proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.up()
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    schema = f"t_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        url = f"{url}?search_path={schema}"
        events = events_of(samples.payloads("wavecell", 200))
        await kafka_io.publish(kafka, topics.EVENTS, _records(events[:100]))
        metrics = Metrics("store")
        settings = StoreSettings(url=url, group_id="test-store", max_batch=50)

        async def rows() -> int:
            try:
                return await admin.fetchval(f"SELECT count(*) FROM {schema}.call_events")  # noqa: S608
            except asyncpg.UndefinedTableError:  # not migrated yet
                return -1

        async with serving(lambda stop: store.serve(settings, kafka, stop, metrics)) as task:

            async def first_half() -> bool:
                assert not task.done(), task
                return await rows() == 100

            await eventually(first_half, "the first 100 events stored")
            await proxy.down()  # the database goes away while the second half arrives
            await kafka_io.publish(kafka, topics.EVENTS, _records(events[100:]))

            async def retrying() -> bool:
                return metrics.total("errors") > 0

            await eventually(retrying, "a failed write retried")
            await proxy.up()

            async def all_stored() -> bool:
                assert not task.done(), task
                return await rows() == len(events)

            await eventually(all_stored, f"{len(events)} events stored")
        assert await kafka_io.read_all(kafka, topics.DLQ) == []
    finally:
        await proxy.down()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


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


async def test_a_second_store_on_a_sqlite_file_stops_at_once_and_says_why(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    path = tmp_path / "callstream.sqlite3"
    first = SqliteBackend(path)
    await first.claim()
    try:
        with pytest.raises(StoreTaken, match=f"{path} is written by another store"):
            async with asyncio.timeout(30):  # a store that took the file would serve on
                await store_sink(kafka, f"sqlite:///{path}")(asyncio.Event())
    finally:
        await first.close()
