"""Random and mutated payloads never crash a normalizer: they normalize or raise NormalizeError."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalize import ADAPTERS, NormalizeError, normalize
from schemas import CallEvent

GOLDEN = Path(__file__).parent.parent / "golden"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
CONTEXTS = st.sampled_from(
    [
        {},
        {"callSerialNo": "645"},
        {"callSerialNo": "645", "reason_table": "q850"},
        {"client_id": "7"},
    ]
)
_events = msgspec.json.Decoder(list[CallEvent])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "0", "1", "NULL", "Completed", "2020-06-17T04:08:37Z", "1621823865000"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _seeds(provider: str) -> list[Any]:
    """The valid golden payloads of a provider, as decoded JSON to mutate."""
    seeds = []
    for path in sorted((GOLDEN / provider).glob("*.json")):
        if path.name.startswith("error_") or path.name.endswith(
            (".expected.json", ".context.json")
        ):
            continue
        seeds.append(msgspec.json.decode(path.read_bytes()))
    return seeds


@st.composite
def mutated(draw: st.DrawFn, provider: str) -> bytes:
    """A golden payload with a few nodes replaced by random JSON, deleted, or retyped."""
    doc = draw(st.sampled_from(_seeds(provider)))
    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a private copy
    for _ in range(draw(st.integers(1, 4))):
        doc = _mutate(draw, doc)
    return msgspec.json.encode(doc)


def _mutate(draw: st.DrawFn, node: Any) -> Any:
    """Walk down a random path and replace, drop or retype what is found there."""
    if isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node)))
        action = draw(st.sampled_from(["descend", "delete", "replace"]))
        if action == "delete":
            del node[key]
        elif action == "replace":
            node[key] = draw(json_values)
        else:
            node[key] = _mutate(draw, node[key])
        return node
    if isinstance(node, list) and node and draw(st.booleans()):
        index = draw(st.integers(0, len(node) - 1))
        node[index] = _mutate(draw, node[index])
        return node
    return draw(json_values)


def _normalizes_or_rejects(provider: str, body: bytes, context: dict[str, str]) -> None:
    try:
        events = normalize(provider, body, received_at=NOW, context=context)
    except NormalizeError as exc:
        rejection = str(exc)
    else:
        assert _events.decode(msgspec.json.encode(events)) == events
        return
    assert rejection.startswith(f"{provider}: ")


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@given(data=st.data())
def test_mutated_payloads(provider: str, data: st.DataObject) -> None:
    _normalizes_or_rejects(provider, data.draw(mutated(provider)), data.draw(CONTEXTS))


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@given(body=st.binary(max_size=200) | json_values.map(msgspec.json.encode), context=CONTEXTS)
def test_random_bodies(provider: str, body: bytes, context: dict[str, str]) -> None:
    _normalizes_or_rejects(provider, body, context)
