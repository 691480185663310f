"""The one place a store URL becomes a backend: SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from foundation.settings import SettingsError
from sinks.backend import Backend
from sinks.postgres import PostgresBackend
from sinks.sqlite import SqliteBackend


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
