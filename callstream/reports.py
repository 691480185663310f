"""`callstream calls` and `callstream stats`: what the store holds, as tables for people."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from foundation.text import printable
from sinks.backend import Backend, time_text
from sinks.stores import open_existing

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
CALL_TABLE = ("started_at", "provider", "account", "session_id", "status", "from_number",
              "to_number", "duration_s", "cause_label")  # fmt: skip


def since(text: str) -> datetime:
    """`15m`, `2h`, `7d` ago, or an RFC 3339 time (UTC when it has no offset)."""
    if match := _AGO.match(text):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    moment = msgspec.convert(text, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def calls(url: str, **filters: Any) -> str:
    rows = await _query(url, "calls", **filters)
    return table(CALL_TABLE, [[row[column] for column in CALL_TABLE] for row in rows])


async def stats(url: str, **filters: Any) -> str:
    rows = await _query(url, "stats", **filters)
    statuses = sorted({status for row in rows for status in row["statuses"]})
    header = ("group", "attempts", *statuses, "asr", "acd_s", "pdd_s")
    return table(
        header,
        [
            [row["group"] or "all", row["attempts"], *(row["statuses"].get(s, 0) for s in statuses),
             _percent(row["asr"]), _round(row["acd_s"]), _round(row["pdd_s"])]
            for row in rows
        ],
    )  # fmt: skip


async def _query(url: str, method: str, **filters: Any) -> list[dict[str, Any]]:
    store: Backend = await open_existing(url)
    try:
        return await getattr(store, method)(**filters)
    finally:
        await store.close()


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns; numbers right-aligned; `-` for unknown; control characters escaped
    (`foundation.text.printable`): every table for people is printed by this function."""
    cells = [list(header), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in rows) and rows for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if numeric[i] else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return time_text(value)
    return printable(str(value))


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.1%}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
