"""Hostile input never crashes the normalizer: every report is normalized, into plausible events
(contract 1.1, plausible.py), or raises NormalizeError, and every raw record becomes events or
one dead letter with a reason.

The inputs are golden payloads mutated in their JSON and in their bytes (mutations.py), random
JSON and bytes, and raw records with mutated headers. CI runs each test with 300 examples;
`HYPOTHESIS_PROFILE=deep` with 20,000 (tests/conftest.py). Each kind of failure these found has
a golden case of its own (tests/golden/*/error_*), so it stays fixed without luck.
"""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from aiokafka import ConsumerRecord
from helpers import raw
from hypothesis import given
from hypothesis import strategies as st
from mutations import EDGE_VALUES, mutate, mutate_context, mutate_headers, seeds
from plausible import violations

from normalize import ADAPTERS, NormalizeError, normalize
from normalize.service import route
from schemas import CallEvent, topics

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 1, tzinfo=UTC)
ATHERIS_HARNESS = Path(__file__).with_name("fuzz_atheris.py")
CONTEXTS = st.sampled_from(
    [
        {},
        {"callSerialNo": "645"},
        {"callSerialNo": "645", "reason_table": "q850"},
        {"client_id": "7"},
    ]
)
RNGS = st.randoms(use_true_random=False)
_events = msgspec.json.Decoder(list[CallEvent])
_event = msgspec.json.Decoder(CallEvent)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from([value for value in EDGE_VALUES if not isinstance(value, list | dict)]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _normalizes_or_rejects(provider: str, body: bytes, context: dict[str, str]) -> None:
    try:
        events = normalize(provider, body, received_at=NOW, context=context)
    except NormalizeError as exc:
        rejection = str(exc)
    else:
        assert _events.decode(msgspec.json.encode(events)) == events
        assert [violations(event) for event in events] == [[]] * len(events)
        return
    assert rejection.startswith(f"{provider}: ")


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@given(rng=RNGS)
def test_mutated_payloads(provider: str, rng: random.Random) -> None:
    seed = rng.choice(seeds(provider))
    _normalizes_or_rejects(provider, mutate(rng, seed.body), mutate_context(rng, seed.context))


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@given(body=st.binary(max_size=200) | json_values.map(msgspec.json.encode), context=CONTEXTS)
def test_random_bodies(provider: str, body: bytes, context: dict[str, str]) -> None:
    _normalizes_or_rejects(provider, body, context)


@given(rng=RNGS)
def test_raw_records_with_hostile_headers_give_events_or_one_dead_letter(
    rng: random.Random,
) -> None:
    provider = rng.choice(sorted(ADAPTERS))
    seed = rng.choice(seeds(provider))
    body = mutate(rng, seed.body) if rng.random() < 0.5 else seed.body
    headers = mutate_headers(rng, raw(provider, body, seed.context).headers)
    size = len(body)
    record = ConsumerRecord(topics.RAW, 0, 7, 0, 0, None, body, None, 0, size, headers)

    events, dead = route([record])

    if dead:
        (letter,) = dead
        assert not events
        assert letter.value == body
        error = dict(letter.headers)[topics.ERROR].decode()
        assert error
        assert not error.startswith("unexpected"), error  # what route() calls a bug
    for event in events:  # readable by every consumer of calls.events, and plausible
        decoded = _event.decode(event.value)
        assert decoded.received_at.tzinfo is UTC
        assert violations(decoded) == []


def test_a_short_atheris_round_finds_nothing(tmp_path: Path) -> None:
    """The coverage-guided harness works and finds no crash in 20,000 inputs (~1 s), and no
    input that takes 10 s (libFuzzer's -timeout: a report that slow would stall the
    normalizer); long rounds are run by hand (docs/reliability.md)."""
    runs = 20_000
    done = subprocess.run(
        [
            sys.executable, ATHERIS_HARNESS, f"-runs={runs}", "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    seed = next((line for line in done.stderr.splitlines() if "Seed:" in line), "")
    assert done.returncode == 0, f"{seed}\n{done.stderr[-3000:]}"
    assert f"Done {runs} runs" in done.stderr
    assert not list(tmp_path.iterdir())  # no crash- file
