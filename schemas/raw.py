"""Raw and dead-letter records: their headers as the contract names them, built and read here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec

from schemas import topics
from schemas.events import UtcTime
from schemas.topics import Headers


class RawMeta(msgspec.Struct, frozen=True, gc=False):
    """What the headers of a raw record say about its body (read once per raw record)."""

    provider: str
    source: str
    received_at: datetime
    request_id: str
    content_type: str
    context: dict[str, str]

    @classmethod
    def received_now(
        cls,
        provider: str,
        source: str,
        content_type: str,
        context: Mapping[str, str] | None = None,
        *,
        at: datetime | None = None,
    ) -> RawMeta:
        """The metadata of a body received just now (`at`, by default the wall clock's now),
        under a new request id: 128 random bits in hex (uuid4's text costs ~3 µs more)."""
        now = at or datetime.now(UTC)
        return cls(provider, source, now, os.urandom(16).hex(), content_type, dict(context or {}))


def raw_headers(meta: RawMeta) -> Headers:
    headers = [
        (topics.PROVIDER, meta.provider.encode()),
        (topics.SOURCE, meta.source.encode()),
        (topics.RECEIVED_AT, msgspec.json.encode(meta.received_at)[1:-1]),
        (topics.REQUEST_ID, meta.request_id.encode()),
        (topics.CONTENT_TYPE, meta.content_type.encode()),
    ]
    if meta.context:
        headers.append((topics.CONTEXT, msgspec.json.encode(meta.context)))
    return headers


_received_at = msgspec.json.Decoder(UtcTime)
_context = msgspec.json.Decoder(dict[str, str])


class HeadersError(ValueError):
    """A raw record whose headers are missing or malformed; it goes to the dead-letter topic."""


def read_raw_headers(headers: Headers | tuple[tuple[str, bytes | None], ...]) -> RawMeta:
    """The headers' meaning; raises HeadersError for missing, null or malformed ones.

    Kafka allows a null header value: it counts as absent; of a header given twice, the last
    counts. `received_at` must carry its offset (a naive time would reach calls.events and fail
    its readers); it is returned in UTC.
    """
    return raw_meta(dict(headers))


def raw_meta(found: Mapping[str, bytes | None]) -> RawMeta:
    """`read_raw_headers` of headers already in a dict (name → value), for a caller that reads
    other headers too: the normalizer's hot path (positional, with decoders built once)."""
    provider, received_at = found.get(topics.PROVIDER), found.get(topics.RECEIVED_AT)
    if provider is None or received_at is None:
        raise HeadersError(
            f"raw record headers: {topics.PROVIDER} and {topics.RECEIVED_AT} are required"
        )
    context = found.get(topics.CONTEXT)
    try:
        return RawMeta(
            provider.decode(),
            (found.get(topics.SOURCE) or b"").decode(),
            _read_received_at(received_at),
            (found.get(topics.REQUEST_ID) or b"").decode(),
            (found.get(topics.CONTENT_TYPE) or b"").decode(),
            {} if context is None else _read_context(context),
        )
    except UnicodeDecodeError:
        raise HeadersError("raw record headers: a header is not UTF-8") from None


def received_at_of(headers: Headers | tuple[tuple[str, bytes | None], ...]) -> datetime | None:
    """The `cs-received-at` of a record (raw records, events and sessions carry it), or None
    when it has none or it cannot be read."""
    for name, value in headers:
        if name == topics.RECEIVED_AT and value is not None:
            try:
                return _read_received_at(value)
            except HeadersError:
                return None
    return None


def _read_received_at(value: bytes) -> datetime:
    try:
        return _utc(_received_at.decode(b'"' + value + b'"'))
    except (msgspec.DecodeError, OverflowError, UnicodeDecodeError):
        raise HeadersError(
            f"raw record headers: {topics.RECEIVED_AT} is not an RFC 3339 time with an offset"
        ) from None


def _read_context(value: bytes) -> dict[str, str]:
    try:
        return _context.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise HeadersError(
            f"raw record headers: {topics.CONTEXT} is not a JSON object of strings"
        ) from None


def _utc(moment: datetime) -> datetime:
    """Events carry UTC times (written with Z); the ingress writes UTC, another writer may not."""
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def dead_letter_headers(
    headers: Headers | tuple[tuple[str, bytes], ...], stage: str, error: str
) -> Headers:
    """The raw record's own headers plus where and why it failed (value stays the raw body)."""
    kept = [(k, v) for k, v in headers if k not in (topics.ERROR_STAGE, topics.ERROR)]
    return [*kept, (topics.ERROR_STAGE, stage.encode()), (topics.ERROR, error.encode())]
