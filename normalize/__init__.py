"""Raw provider reports → canonical call events: pure decoders, one per provider."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec

from callstream.errors import NormalizeError
from normalize.providers import ADAPTERS
from normalize.report import Report
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
    report = Report(provider, adapter.source, received_at, context or {}, raw)
    try:
        return adapter.decode(body, report)
    except msgspec.ValidationError as exc:
        reason, at, path = str(exc).rpartition(" - at `")
        if not at:
            reason, path = path, "$"
        raise NormalizeError(provider, path.rstrip("`"), reason[:1].lower() + reason[1:]) from exc
    except msgspec.DecodeError as exc:
        raise NormalizeError(provider, "$", f"not valid JSON: {exc}") from exc
