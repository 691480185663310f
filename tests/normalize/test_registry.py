from __future__ import annotations

from datetime import UTC, datetime

import pytest

from normalize import ADAPTERS, NormalizeError, normalize
from normalize.providers import _registry


def test_the_four_documented_providers_are_registered() -> None:
    assert set(ADAPTERS) == {"wavecell", "mobile_agent", "vpbx", "voice_messaging"}
    assert {name: a.source for name, a in ADAPTERS.items()} == {
        "wavecell": "webhook",
        "voice_messaging": "webhook",
        "mobile_agent": "poll",
        "vpbx": "poll",
    }


def test_a_provider_registered_twice_is_an_error_at_import() -> None:
    with pytest.raises(RuntimeError, match="'wavecell' is registered twice"):
        _registry(ADAPTERS["wavecell"], ADAPTERS["wavecell"])


def test_unknown_provider_is_a_normalize_error() -> None:
    with pytest.raises(NormalizeError, match=r"^acme: provider: unknown provider$"):
        normalize("acme", b"{}", received_at=datetime.now(UTC))
