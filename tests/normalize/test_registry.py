from __future__ import annotations

import dis
import importlib
import inspect
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


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_adapter_calls_call_event_without_a_dict_of_keywords(adapter: str) -> None:
    """A call of more than 30 slots (a positional argument one, a keyword two) is compiled into
    building and unpacking a dict of its keywords, ~0.65 µs more per event (call_event)."""
    module = importlib.import_module(f"normalize.providers.{adapter}")
    callers = [
        function
        for _, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__ and "call_event" in function.__code__.co_names
    ]
    assert callers
    for function in callers:
        opnames = {instruction.opname for instruction in dis.get_instructions(function)}
        assert "CALL_FUNCTION_EX" not in opnames, function.__qualname__
