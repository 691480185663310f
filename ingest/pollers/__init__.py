"""Pollers for the providers that do not push (seeds 001 mobile_agent, 002 vpbx).

One module per provider, registered below; what they share: `http` (rate limit, retries with
backoff and jitter, tokens), `tokens`, `state` (durable state on a compacted topic, split by a
consumer group), `common` (publishing answers). `service` is `callstream poll`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ingest.pollers import mobile_agent, vpbx

POLLERS: dict[str, Callable[..., Awaitable[None]]] = {
    vpbx.PROVIDER: vpbx.run,
    mobile_agent.PROVIDER: mobile_agent.run,
}
"""provider → `run(settings, plumbing, stop)`; its settings are PollSettings.<provider>."""
