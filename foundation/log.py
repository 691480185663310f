"""Structured logging, configured once per process: JSON lines unless stderr is a terminal.

structlog's own loggers and the standard-library loggers of libraries (aiokafka, aiohttp) go
through one formatter, so every line of a process has the same shape.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from foundation.text import printable

_NUMBER = re.compile(r"\+?\d{7,15}")
_NUMBER_FIELDS = frozenset({"from_number", "to_number", "number", "caller", "called"})
_EXTRA_FIELDS = ("error", "status")
"""Fields a standard-library record may carry in `extra` (ingest.app's http_request_malformed)."""
_TRACEBACKS = frozenset({"exception", "stack"})
"""Rendered tracebacks: several lines by design, and written by Python, not by a provider."""


def configure_logging(
    *, json: bool | None = None, level: str = "info", mask_numbers: bool = False
) -> None:
    """`json=None` picks JSON when stderr is not a terminal; `mask_numbers` hides phone numbers."""
    if json is None:
        json = not sys.stderr.isatty()
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=_EXTRA_FIELDS),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if mask_numbers:
        chain.append(_mask_numbers)
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if json else _keep,
                *([] if json else [_printable]),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
    structlog.configure(
        processors=[*chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _keep(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return event


def _printable(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, text values with control characters escaped (foundation.text): a
    provider's session id must not recolour, rewrite or reorder the console. Other values are
    shown by repr(), which escapes them already; exc_info is the renderer's own."""
    for key, value in event.items():
        if isinstance(value, str) and key not in _TRACEBACKS:
            event[key] = printable(value)
    return event


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
