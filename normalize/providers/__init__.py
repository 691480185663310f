"""The one list of provider adapters. Adding a provider = one module here + one line below."""

from __future__ import annotations

from normalize.providers import mobile_agent, voice_messaging, vpbx, wavecell
from normalize.report import Adapter


def _registry(*adapters: Adapter) -> dict[str, Adapter]:
    registry: dict[str, Adapter] = {}
    for adapter in adapters:
        if adapter.name in registry:
            raise RuntimeError(f"provider {adapter.name!r} is registered twice")
        registry[adapter.name] = adapter
    return registry


ADAPTERS: dict[str, Adapter] = _registry(
    wavecell.ADAPTER,
    mobile_agent.ADAPTER,
    vpbx.ADAPTER,
    voice_messaging.ADAPTER,
)
