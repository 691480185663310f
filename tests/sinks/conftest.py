"""Stores for the sink tests: every backend, each test in a store of its own.

PostgreSQL is a real server (the session's `postgres_url`: see tests/servers.py); each test
gets a fresh schema, reached through the store URL's `search_path` parameter, dropped after.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from sink_helpers import Query

from sinks.backend import Backend
from sinks.stores import backend_for


@pytest_asyncio.fixture(loop_scope="function", params=["sqlite", "postgres"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store/callstream.sqlite3"  # an absolute path: sqlite:////…
        return
    schema = f"t_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{postgres_url}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest_asyncio.fixture(loop_scope="function")
async def store(store_url: str) -> AsyncIterator[Backend]:
    backend = backend_for(store_url)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
def query(store_url: str) -> Query:
    """Run SQL on the test's store directly, around the backend under test."""

    async def run(sql: str) -> list[tuple[Any, ...]]:
        if store_url.startswith("sqlite"):
            with closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as lite:
                return lite.execute(sql).fetchall()
        db = await asyncpg.connect(store_url)
        try:
            return [tuple(row) for row in await db.fetch(sql)]
        finally:
            await db.close()

    return run
