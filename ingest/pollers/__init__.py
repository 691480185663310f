"""Pollers for the providers that do not push (seeds 001 mobile_agent, 002 vpbx).

One module per provider, registered below; what they share: `http` (rate limit, retries with
backoff and jitter, tokens), `tokens`, `state` (durable state on a compacted topic, split by a
consumer group), `common` (publishing answers). `service` is `callstream poll`.
"""

from __future__ import annotations

from types import ModuleType

from ingest.pollers import mobile_agent, vpbx

POLLERS: dict[str, ModuleType] = {vpbx.PROVIDER: vpbx, mobile_agent.PROVIDER: mobile_agent}
"""provider → its module: `check(settings)` raises SettingsError for incomplete settings,
`run(settings, plumbing, stop)` polls until `stop`; its settings are PollSettings.<provider>."""
