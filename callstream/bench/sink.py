"""`callstream bench sink`: events/s written through each store backend's write path, against a
bare write of the same rows into the same database.

Realistic canonical events (Wavecell `samples` through `normalize()`, distinct event_ids) are
written in batches of 5,000, one transaction each, by `Backend.write` — what the store service
does per batch, without Kafka. SQLite writes a fresh file in a temporary directory; PostgreSQL
a fresh schema (dropped after) of CALLSTREAM_BENCH__POSTGRES_URL, by default the local `test`
database. Each backend writes until `seconds` have passed or the events run out; the rate is
events written over the time spent writing, building the rows included.

The baseline, measured right after in the same database: the same rows, built the same way, in
the same batches and transactions, by the database's bulk path (SQLite `executemany` on a
connection set up as the store's, PostgreSQL binary COPY) into a table of the same columns
without a key, an index or a conflict clause. `*_ratio` is the backend's rate over it: what the
store's keys, indexes and idempotent merge cost, which moves with the machine much less than the
rates themselves.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from callstream import samples
from normalize import normalize
from schemas import CallEvent
from sinks import backend, sqlite
from sinks.postgres import PostgresBackend
from sinks.sqlite import SqliteBackend
from sinks.stores import backend_for

BATCH = 5_000
MAX_RATE = 60_000
"""Events generated per second of run: more than either backend writes, so time runs out first."""
POSTGRES_URL = os.environ.get(
    "CALLSTREAM_BENCH__POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def run(seconds: float = 3.0) -> dict[str, float]:
    """Events/s into each backend: `postgres_per_s`, `sqlite_per_s`, and the batch size."""
    received_at = datetime.now(UTC)
    events = [
        event
        for body in samples.payloads("wavecell", max(int(seconds * MAX_RATE) // 2, BATCH))
        for event in normalize("wavecell", body, received_at=received_at)
    ]
    return asyncio.run(_run(events, seconds))


async def _run(events: list[CallEvent], seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="callstream-bench-") as directory:
        path = Path(directory) / "bench.sqlite3"
        sqlite_rate = await _measure(f"sqlite:///{path}", events, seconds)
        sqlite_bare = await _bare_sqlite(path, events, seconds)
    schema = f"bench_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in POSTGRES_URL else "?"
        url = f"{POSTGRES_URL}{separator}search_path={schema}"
        postgres_rate = await _measure(url, events, seconds)
        postgres_bare = await _bare_postgres(url, events, seconds)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
    return {
        "postgres_per_s": round(postgres_rate),
        "postgres_bare_per_s": round(postgres_bare),
        "postgres_ratio": round(postgres_rate / postgres_bare, 2),
        "sqlite_per_s": round(sqlite_rate),
        "sqlite_bare_per_s": round(sqlite_bare),
        "sqlite_ratio": round(sqlite_rate / sqlite_bare, 2),
        "batch": BATCH,
    }


async def _rate(
    events: list[CallEvent], seconds: float, write: Callable[[list[CallEvent]], Awaitable[int]]
) -> float:
    """Events/s that `write` (one batch, the rows it wrote) takes, in batches of BATCH, until
    `seconds` of writing have passed or the events run out."""
    written, elapsed = 0, 0.0
    for start in range(0, len(events), BATCH):
        began = time.perf_counter()
        written += await write(events[start : start + BATCH])
        elapsed += time.perf_counter() - began
        if elapsed >= seconds:
            break
    return written / elapsed


async def _measure(url: str, events: list[CallEvent], seconds: float) -> float:
    store = backend_for(url)
    await store.open()

    async def write(batch: list[CallEvent]) -> int:
        return (await store.write(batch, [])).events

    try:
        return await _rate(events, seconds, write)
    finally:
        await store.close()


async def _bare_sqlite(path: Path, events: list[CallEvent], seconds: float) -> float:
    """The baseline in the store's SQLite file, written from a thread of its own as the store's
    (a connection is used in the thread that made it)."""
    loop = asyncio.get_running_loop()
    insert = f"INSERT INTO bare_events VALUES ({', '.join('?' * len(backend.EVENT_COLUMNS))})"  # noqa: S608 - identifiers are ours
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-bare") as writer:
        db = await loop.run_in_executor(writer, sqlite.connect, path)

        def write_rows(rows: list[tuple[object, ...]]) -> int:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert, rows)
            db.execute("COMMIT")
            return len(rows)

        async def write(batch: list[CallEvent]) -> int:
            rows = [backend.event_row(event, SqliteBackend.dialect.time) for event in batch]
            return await loop.run_in_executor(writer, write_rows, rows)

        try:
            await loop.run_in_executor(
                writer, db.execute, "CREATE TABLE bare_events AS SELECT * FROM call_events WHERE 0"
            )
            return await _rate(events, seconds, write)
        finally:
            await loop.run_in_executor(writer, db.close)


async def _bare_postgres(url: str, events: list[CallEvent], seconds: float) -> float:
    """The baseline in the store's PostgreSQL schema, on one connection."""
    db = await asyncpg.connect(url)

    async def write(batch: list[CallEvent]) -> int:
        rows = [backend.event_row(event, PostgresBackend.dialect.time) for event in batch]
        async with db.transaction():
            await db.copy_records_to_table(
                "bare_events", records=rows, columns=backend.EVENT_COLUMNS
            )
        return len(rows)

    try:
        await db.execute("CREATE TABLE bare_events (LIKE call_events)")
        return await _rate(events, seconds, write)
    finally:
        await db.close()


def report(results: dict[str, float]) -> str:
    lines = [
        f"store write path, batches of {results['batch']:,.0f} events, one transaction each,"
        " against the same rows into a bare table of the same database"
    ]
    for name, key in (("postgresql", "postgres"), ("sqlite", "sqlite")):
        lines.append(
            f"  {name:<10}  {results[f'{key}_per_s']:>9,.0f} events/s"
            f"  bare {results[f'{key}_bare_per_s']:>9,.0f}/s  ratio {results[f'{key}_ratio']:.2f}"
        )
    return "\n".join(lines)
