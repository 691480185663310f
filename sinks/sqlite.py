"""The SQLite backend: one file, WAL mode, one writer.

The stdlib `sqlite3` runs in a single thread of our own rather than through aiosqlite: a whole
batch (its executemany calls and the commit) is one hop to that thread instead of one per
statement, and it needs no extra dependency. One thread also serializes every use of the
connection, which sqlite3 requires.
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from schemas import CallEvent, SessionRecord
from sinks import backend
from sinks.backend import (
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    TIME_COLUMNS,
    Backend,
    Dialect,
    Row,
    StoreTaken,
    Written,
    stored_time,
    time_text,
)

T = TypeVar("T")
BUSY_TIMEOUT_S = 30.0
"""How long a statement waits for another connection's lock (a reader's checkpoint, a CLI)."""
CACHE_MIB = 64
"""The writer's page cache. The indexes on random keys (event ids, session keys, numbers) are
read at random pages; SQLite's default 2 MiB cache sends most of those reads to the OS."""
CHECKPOINT_PAGES = 10_000
"""WAL pages (4 KiB each) after which a commit copies the WAL back into the database
(SQLite's default is 1,000). Each item dirties ~4 index pages, so a batch of a few hundred
items passed the default at nearly every other commit, and every checkpoint syncs the WAL and
the database; ten times fewer checkpoints also copy a page dirtied by many commits once."""


_DIALECT = Dialect(
    param=lambda _: "?",
    seconds=lambda start, end: f"(julianday({end}) - julianday({start})) * 86400.0",
    time=time_text,
)
_INSERT_EVENTS = (
    f"INSERT INTO call_events ({', '.join(EVENT_COLUMNS)})"  # noqa: S608 - identifiers are ours; values are bound
    f" VALUES ({', '.join('?' * len(EVENT_COLUMNS))}) ON CONFLICT (event_id) DO NOTHING"
)
_UPSERT_SESSIONS = (
    f"INSERT INTO call_sessions ({', '.join(SESSION_COLUMNS)})"  # noqa: S608 - identifiers are ours; values are bound
    f" VALUES ({', '.join('?' * len(SESSION_COLUMNS))}) ON CONFLICT (session_key) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SESSION_COLUMNS[1:])
    + " WHERE call_sessions.event_count < excluded.event_count"
)


class SqliteBackend(Backend):
    dialect = _DIALECT
    transient = (OSError, sqlite3.OperationalError)  # locked, busy, disk I/O

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._writer_lock: IO[bytes] | None = None

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path}: the store is not open")
        return self._db

    async def open(self) -> list[int]:
        self._db = await self._run(connect, self.path)  # made in the thread that will use it
        return await self.migrate()

    async def claim(self) -> None:
        """Hold an exclusive lock on `<path>.lock` until `close` (or this process's end): one
        writer a file. Writes are serialized by SQLite anyway, and two processes writing and
        checkpointing one WAL can lose committed rows to SQLite's WAL-reset bug
        (https://www.sqlite.org/wal.html#walresetbug; SQLite 3.7.0 to 3.51.2)."""
        lock = self.path.with_name(self.path.name + ".lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreTaken(
                f"{self.path} is written by another store: one store a SQLite file"
                " (PostgreSQL takes several)"
            ) from None
        self._writer_lock = lock

    async def migrate(self) -> list[int]:
        return await self._run(self._migrate)

    def _migrate(self) -> list[int]:
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = {
                version for (version,) in db.execute("SELECT version FROM schema_migrations")
            }
            missing = [m for m in backend.migrations("sqlite") if m.version not in applied]
            for migration in missing:
                for statement in _statements(migration.sql):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.name, time_text(datetime.now(UTC))),
                )
        return [migration.version for migration in missing]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock at once, so a concurrent writer waits at the
        start instead of failing at its first write."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def write(
        self, events: Sequence[CallEvent], sessions: Sequence[SessionRecord]
    ) -> Written:
        event_rows = [backend.event_row(event, time_text) for event in events]
        session_rows = [
            backend.session_row(session, time_text) for session in backend.latest(sessions)
        ]
        return await self._run(self._write, event_rows, session_rows)

    def _write(self, events: list[tuple[Any, ...]], sessions: list[tuple[Any, ...]]) -> Written:
        with self._transaction() as db:
            written_events = db.executemany(_INSERT_EVENTS, events).rowcount if events else 0
            written_sessions = (
                db.executemany(_UPSERT_SESSIONS, sessions).rowcount if sessions else 0
            )
        return Written(written_events, written_sessions)

    async def fetch(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        return await self._run(lambda: self.db.execute(sql, args).fetchall())

    def typed(self, row: Row) -> Row:
        """Times are stored as text (`time_text`) and booleans as integers: read them back."""
        for name in TIME_COLUMNS.intersection(row):
            row[name] = stored_time(row[name])
        row["final"] = bool(row["final"])
        return row

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        if self._writer_lock is not None:
            self._writer_lock.close()  # releases the lock
            self._writer_lock = None
        self._thread.shutdown()


def connect(path: Path) -> sqlite3.Connection:
    """The store's writing connection to `path` (made if absent): WAL, synchronous NORMAL
    (durable across a process crash), the cache and checkpoints above, and transactions left
    to the caller (BEGIN IMMEDIATE … COMMIT, DDL included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"PRAGMA cache_size = -{CACHE_MIB * 1024}")
    db.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
    return db


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration, split where sqlite3 says one is complete: executescript
    would commit first, and a migration must run inside the runner's transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():  # a last statement without ";", or a trailing comment (a no-op)
        yield statement
