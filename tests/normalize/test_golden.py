"""Golden files: tests/golden/<provider>/<case>.json is a raw body exactly as a provider sends it;
beside it <case>.expected.json holds the canonical events it must yield, or <case>.error.txt the
error it must raise, and <case>.context.json the context it comes with, if any.

`pytest --update-golden` rewrites the expectations; review the diff like code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from normalize import NormalizeError, normalize
from schemas import CallEvent

GOLDEN = Path(__file__).parent.parent / "golden"
RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CASES = sorted(
    path
    for path in GOLDEN.glob("*/*.json")
    if not path.name.endswith((".expected.json", ".context.json"))
)
_events = msgspec.json.Decoder(list[CallEvent])


def _sibling(case: Path, suffix: str) -> Path:
    return case.with_name(case.name.removesuffix(".json") + suffix)


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(case: Path, request: pytest.FixtureRequest) -> None:
    context_file = _sibling(case, ".context.json")
    context = msgspec.json.decode(context_file.read_bytes()) if context_file.exists() else {}
    expected_file, error_file = _sibling(case, ".expected.json"), _sibling(case, ".error.txt")
    try:
        events = normalize(
            case.parent.name, case.read_bytes(), received_at=RECEIVED_AT, context=context
        )
    except NormalizeError as exc:
        outcome, produced = error_file, f"{exc.verdict}\n"  # callstream's words, not the detail
    else:
        # Round-trip through the canonical decoder: a wrong type cannot slip into the golden file.
        encoded = msgspec.json.encode(events)
        assert _events.decode(encoded) == events
        outcome, produced = expected_file, msgspec.json.format(encoded).decode() + "\n"
    if request.config.getoption("--update-golden"):
        for stale in (expected_file, error_file):
            stale.unlink(missing_ok=True)
        outcome.write_text(produced)
    assert outcome.exists(), f"{case.name} gave {outcome.name.split('.', 1)[1]}: {produced[:300]}"
    assert produced == outcome.read_text()


def test_every_provider_has_golden_cases() -> None:
    from normalize import ADAPTERS  # noqa: PLC0415

    assert {case.parent.name for case in CASES} == set(ADAPTERS)
