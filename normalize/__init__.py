"""Raw provider reports → canonical call events: pure decoders, one per provider."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from foundation.errors import NormalizeError
from normalize.providers import ADAPTERS
from normalize.report import Report, plain_text
from schemas import CallEvent, RawRef

__all__ = ["ADAPTERS", "NormalizeError", "normalize"]


def normalize(
    provider: str,
    body: bytes,
    *,
    received_at: datetime,
    context: Mapping[str, str] | None = None,
    raw: RawRef | None = None,
) -> list[CallEvent]:
    """Decode one raw report of `provider` into its canonical events (none for an empty report).

    Pure and deterministic for the same arguments. Raises NormalizeError, and only that, for an
    unknown provider, a body that is not JSON or not of the provider's shape, a provider error
    response, or missing context.
    """
    adapter = ADAPTERS.get(provider)
    if adapter is None:
        raise NormalizeError(provider, "provider", "unknown provider")
    context = context or {}
    plain = plain_text(body, context)
    report = Report(provider, adapter.source, received_at, context, raw, plain)
    return adapter.decode(body, report)
