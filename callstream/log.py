"""Structured logging, configured once per process: JSON lines unless stderr is a terminal."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import msgspec
import structlog

_NUMBER = re.compile(r"\+?\d{7,15}")
_NUMBER_FIELDS = frozenset({"from_number", "to_number", "number", "caller", "called"})


def configure_logging(
    *, json: bool | None = None, level: str = "info", mask_numbers: bool = False
) -> None:
    """`json=None` picks JSON when stderr is not a terminal; `mask_numbers` hides phone numbers."""
    if json is None:
        json = not sys.stderr.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if mask_numbers:
        processors.append(_mask_numbers)
    if json:
        processors.append(structlog.processors.JSONRenderer(serializer=_json))
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def _json(event: dict[str, Any], **_: Any) -> bytes:
    return msgspec.json.encode(event, enc_hook=str)


def mask(number: str) -> str:
    """+6583891703225 → +65*******3225: enough to tell calls apart, not enough to dial."""
    return number[:3] + "*" * max(len(number) - 7, 0) + number[-4:]


def _mask_numbers(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for field in _NUMBER_FIELDS & event.keys():
        if isinstance(event[field], str):
            event[field] = mask(event[field])
    if isinstance(event.get("event"), str):
        event["event"] = _NUMBER.sub(lambda m: mask(m.group()), event["event"])
    return event
