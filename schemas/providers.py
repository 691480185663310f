"""The providers callstream knows and how their reports arrive: the ids used in routes, headers,
CLI flags and canonical events. Each layer registers one module per provider against this list
(normalize's adapters, the ingress routes, the pollers)."""

from __future__ import annotations

from schemas.events import Source

PROVIDERS: dict[str, Source] = {
    "wavecell": "webhook",
    "mobile_agent": "poll",
    "vpbx": "poll",
    "voice_messaging": "webhook",
}
WEBHOOK = frozenset(name for name, source in PROVIDERS.items() if source == "webhook")
"""Providers that POST their reports to the ingress."""
POLLED = frozenset(name for name, source in PROVIDERS.items() if source == "poll")
"""Providers whose reports a poller fetches."""
