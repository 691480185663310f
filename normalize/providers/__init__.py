"""The one list of provider adapters. Adding a provider = one module here + one line below."""

from __future__ import annotations

from normalize.providers import mobile_agent, voice_messaging, vpbx, wavecell
from normalize.report import Adapter
from schemas.providers import PROVIDERS


def _registry(*adapters: Adapter) -> dict[str, Adapter]:
    """The adapters by provider id: exactly one for each provider of the contract, of its source."""
    registry: dict[str, Adapter] = {}
    for adapter in adapters:
        if adapter.name in registry:
            raise RuntimeError(f"provider {adapter.name!r} is registered twice")
        if PROVIDERS.get(adapter.name) != adapter.source:
            raise RuntimeError(f"provider {adapter.name!r} is not a {adapter.source} provider")
        registry[adapter.name] = adapter
    if missing := PROVIDERS.keys() - registry.keys():
        raise RuntimeError(f"providers without an adapter: {sorted(missing)}")
    return registry


ADAPTERS: dict[str, Adapter] = _registry(
    wavecell.ADAPTER,
    mobile_agent.ADAPTER,
    vpbx.ADAPTER,
    voice_messaging.ADAPTER,
)
