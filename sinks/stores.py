"""The one place a store URL becomes a backend: SQLite or PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from foundation.errors import Unavailable
from foundation.settings import SettingsError
from sinks.backend import Backend
from sinks.postgres import PostgresBackend
from sinks.sqlite import SqliteBackend

TABLE = "call_sessions"
"""What a store has once the store service has started on it (migration 001)."""


class StoreMissing(Unavailable):
    """No store at that URL, or it does not answer: what reads a store never creates one."""


def backend_for(url: str) -> Backend:
    """The backend of a store URL (not yet opened): `sqlite:///relative/path`,
    `sqlite:////absolute/path`, or `postgresql://…` / `postgres://…` (asyncpg's DSN; query
    parameters other than libpq's are server settings, e.g. `?search_path=my_schema`)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite" and rest.startswith("/") and rest != "/":
        return SqliteBackend(Path(rest[1:]))
    if sep and scheme in ("postgresql", "postgres") and rest:
        return PostgresBackend(url)
    raise SettingsError(
        f"CALLSTREAM_STORE__URL: {url!r} is not sqlite:///PATH or postgresql://USER@HOST/DB"
    )


async def open_existing(url: str) -> Backend:
    """The store at `url`, opened, for reading (`calls`, `stats`, `status`).

    Raises StoreMissing, before anything is created, when there is no store there (no SQLite
    file, or a database without callstream's tables) or the database does not answer.
    """
    store = backend_for(url)
    where = redacted(url)
    hint = "`callstream up` or `callstream store` creates it; --store or --data-dir choose another"
    if isinstance(store, SqliteBackend):
        if not _sqlite_has_table(store.path):
            raise StoreMissing(f"no store at {store.path} ({hint})")
    elif not await _postgres_has_table(url, where):
        raise StoreMissing(f"no callstream tables in {where} ({hint})")
    try:
        await store.open()
    except store.transient as exc:
        await store.close()
        raise StoreMissing(f"the store at {where} does not answer ({exc})") from exc
    return store


def _sqlite_has_table(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        found = db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone()
    except sqlite3.DatabaseError:  # not an SQLite file
        return False
    finally:
        db.close()
    return found is not None


async def _postgres_has_table(url: str, where: str) -> bool:
    try:
        db = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreMissing(f"the store at {where} does not answer ({exc})") from exc
    try:
        return await db.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
    finally:
        await db.close()


def redacted(url: str) -> str:
    """`url` without its password, to be shown."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not (sep and at and ":" in credentials):
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
