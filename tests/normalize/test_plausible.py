"""Contract 1.1, plausible values: whatever one field of a real report holds, the normalizer gives
events that a real call could have (plausible.py, the contract's reading) or a NormalizeError.

The reports are the golden bodies that give events; one field of one of them (any node of the
JSON, an object or a list included, or a context value) is replaced by any JSON value: an
integer of any size, a float, a time of any year and offset, epoch seconds or milliseconds, a
string with control characters or bidirectional overrides, a string of hundreds of characters,
null, a bool, a nested object. Each golden error case of a bound (tests/golden/*/error_*) pins
the verdict; this test looks for what they missed.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from plausible import REFUSED, violations

from normalize import ADAPTERS, NormalizeError, normalize
from normalize.report import plain_text
from schemas import CallEvent

GOLDEN = Path(__file__).parent.parent / "golden"
RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_events = msgspec.json.Decoder(list[CallEvent])

Path_ = tuple[str | int, ...]


@functools.cache
def _cases(provider: str) -> list[tuple[Any, dict[str, str]]]:
    """The golden bodies of `provider` that give events, decoded, with their contexts."""
    cases = []
    for body in sorted((GOLDEN / provider).glob("*.json")):
        if body.name.endswith((".expected.json", ".context.json")):
            continue
        if not body.with_name(body.stem + ".expected.json").exists():
            continue
        context = body.with_name(body.stem + ".context.json")
        cases.append(
            (
                json.loads(body.read_text()),
                json.loads(context.read_text()) if context.exists() else {},
            )
        )
    return cases


def _paths(node: Any, at: Path_ = ()) -> list[Path_]:
    """The path of every node below `node` (not `node` itself)."""
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    else:
        return []
    found: list[Path_] = []
    for key, child in children:
        found += [(*at, key), *_paths(child, (*at, key))]
    return found


def _replaced(doc: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[head] = _replaced(doc[head], tuple(rest), value)  # type: ignore[index]
    return copy


_refused = st.sampled_from(sorted(REFUSED))
_times = st.builds(
    lambda moment, offset, sep: moment.replace(tzinfo=offset).isoformat(sep=sep),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12)), None]),
    st.sampled_from(["T", " "]),
)
_near = st.datetimes(  # around the bounds: 1970 and received_at + 24 h
    min_value=datetime(1969, 12, 31), max_value=datetime(2026, 11, 3), timezones=st.just(UTC)
).map(lambda moment: moment.isoformat().replace("+00:00", "Z"))
_epochs = st.integers(-(10**13), 10**14) | st.sampled_from(
    [0, -1, 1_793_620_800, 1_793_620_801, 1_793_620_800_000, 1_793_620_801_000]
)
_strings = (
    st.text()
    | st.text(alphabet=_refused | st.sampled_from("a0:% \u00a0\u200e\u00e9"), max_size=8)
    | st.builds(lambda text, extra: text + extra, st.text(min_size=250, max_size=260), st.text())
    | st.sampled_from(["x" * 5_000, "9" * 256, "9" * 257, ""])
    | _times
    | _near
    | _epochs.map(str)
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([604_800, 604_801, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400])
    | _epochs
    | st.floats()
    | _strings
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _reports(draw: st.DrawFn, provider: str) -> tuple[bytes, dict[str, str]]:
    """A golden report of `provider` with one field, or one context value, replaced."""
    doc, context = draw(st.sampled_from(_cases(provider)))
    targets = [("body", path) for path in _paths(doc)] + [("context", key) for key in context]
    where, path = draw(st.sampled_from(targets))
    if where == "context":
        context = {**context, path: draw(_strings)}
    else:
        doc = _replaced(doc, path, draw(_values))
    try:  # escaped (\u202e) or raw UTF-8: the normalizer must read both the same
        body = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    except ValueError:  # an integer past Python's 4,300 digits for str(): no one can send it
        body = json.dumps(doc).encode()
    return body, context


@pytest.mark.slow
@pytest.mark.parametrize("provider", sorted(ADAPTERS))
@given(data=st.data())
def test_any_value_in_any_field_gives_plausible_events_or_a_normalize_error(
    provider: str, data: st.DataObject
) -> None:
    body, context = data.draw(_reports(provider))
    try:
        events = normalize(provider, body, received_at=RECEIVED_AT, context=context)
    except NormalizeError as exc:
        rejection = exc
    else:
        rejection = None
    if rejection is not None:  # naming where in the report: each adapter maps what it passes
        assert rejection.verdict.startswith(f"{provider}: ")
        assert rejection.path.startswith(("$", "context.")), rejection.verdict
        return
    assert _events.decode(msgspec.json.encode(events)) == events
    for event in events:
        assert violations(event) == [], event
        assert _unescaped(event.session_key) == [
            event.provider,
            event.account or "",
            event.session_id,
        ]


def _unescaped(key: str) -> list[str]:
    return [segment.replace("%3A", ":").replace("%25", "%") for segment in key.split(":")]


def test_the_checker_passes_the_golden_cases_at_the_bounds() -> None:
    for provider in sorted(ADAPTERS):
        case = GOLDEN / provider / "at_the_bounds.json"
        context = case.with_name("at_the_bounds.context.json")
        events = normalize(
            provider,
            case.read_bytes(),
            received_at=RECEIVED_AT,
            context=json.loads(context.read_text()) if context.exists() else {},
        )
        assert events
        assert [violations(event) for event in events] == [[]] * len(events)


@pytest.mark.parametrize("character", sorted(REFUSED), ids=lambda c: f"U+{ord(c):04X}")
def test_every_refused_character_is_seen_escaped_or_raw(character: str) -> None:
    """The normalizer's quick path trusts two shortcuts; each refused character defeats both:
    str.isprintable() is false for it, and a body holding it is never `plain_text`."""
    assert not character.isprintable()
    for ascii_only in (True, False):
        body = json.dumps({"id": f"a{character}b"}, ensure_ascii=ascii_only).encode()
        assert not plain_text(body, {})
    assert not plain_text(b"{}", {"account": f"a{character}"})
    assert plain_text(b'{"id": "ordinary-id-1"}', {"callSerialNo": "645735364434067472"})


def test_a_report_received_before_1970_is_refused_whatever_it_holds() -> None:
    """received_at is a time of every event too (its occurred_at when the report has none)."""
    body = (GOLDEN / "wavecell" / "doc_sample.json").read_bytes()
    with pytest.raises(NormalizeError) as refused:
        normalize("wavecell", body, received_at=datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert refused.value.verdict == (
        "wavecell: received_at: 1969-12-31T23:59:59Z is before 1970-01-01T00:00:00Z"
    )
