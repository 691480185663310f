"""`callstream bench sink`: events/s written through each store backend's write path.

Realistic canonical events (Wavecell `samples` through `normalize()`, distinct event_ids) are
written in batches of 5,000, one transaction each, by `Backend.write` — what the store service
does per batch, without Kafka. SQLite writes a fresh file in a temporary directory; PostgreSQL
a fresh schema (dropped after) of CALLSTREAM_BENCH__POSTGRES_URL, by default the local `test`
database. Each backend writes until `seconds` have passed or the events run out; the rate is
events written over the time spent in `write`, building the rows included.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from callstream import samples
from normalize import normalize
from schemas import CallEvent
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
        sqlite_rate = await _measure(f"sqlite:///{Path(directory)}/bench.sqlite3", events, seconds)
    schema = f"bench_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in POSTGRES_URL else "?"
        postgres_rate = await _measure(
            f"{POSTGRES_URL}{separator}search_path={schema}", events, seconds
        )
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
    return {"postgres_per_s": postgres_rate, "sqlite_per_s": sqlite_rate, "batch": BATCH}


async def _measure(url: str, events: list[CallEvent], seconds: float) -> float:
    store = backend_for(url)
    await store.open()
    try:
        written, elapsed = 0, 0.0
        for start in range(0, len(events), BATCH):
            began = time.perf_counter()
            written += (await store.write(events[start : start + BATCH], [])).events
            elapsed += time.perf_counter() - began
            if elapsed >= seconds:
                break
        return round(written / elapsed)
    finally:
        await store.close()


def report(results: dict[str, float]) -> str:
    return "\n".join(
        [
            f"store write path, batches of {results['batch']:,.0f} events, one transaction each",
            f"  postgresql  {results['postgres_per_s']:>9,.0f} events/s  (target >= 20,000)",
            f"  sqlite      {results['sqlite_per_s']:>9,.0f} events/s",
        ]
    )
