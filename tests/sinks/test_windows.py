"""One samples partition's windows without Kafka: whatever the interleaving of the calls.sessions
partitions' samples, and wherever the state is written and restored, the same alerts."""

from __future__ import annotations

import random
from datetime import timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from sink_helpers import RECEIVED_AT as T0

from schemas import Status
from schemas.records import Alert, AlertSample, AlertState, AlertWatermark, Scope
from sinks.rules import Asr, Causes, Pdd
from sinks.windows import SamplesRecord, Windows

SOURCES = 3
GRACE_S = 5.0
RULES = [
    Asr(name="asr", scopes=("provider", "account"), window_s=60, min_attempts=5, fire=0.3,
        clear=0.5),
    Causes(name="funds", window_s=30),
    Pdd(name="pdd", scopes=("provider",), window_s=40, min_attempts=4, fire=6.0, clear=4.0),
]  # fmt: skip
END = T0 + timedelta(hours=1)
_state = msgspec.json.Decoder(AlertState)


def _traffic(seed: int, sessions: int = 150) -> list[list[SamplesRecord]]:
    """Each calls.sessions partition's records, in its order: the samples of its sessions (two
    scopes each), received times rising but out of order by less than the grace (as a
    partition's sessions are), bad and good spells by turns, and now and then a watermark (the
    newest received time so far); last, a watermark past every window."""
    rng = random.Random(seed)
    sources: list[list[SamplesRecord]] = [[] for _ in range(SOURCES)]
    clocks = [T0] * SOURCES
    for n in range(sessions):
        q = rng.randrange(SOURCES)
        clocks[q] += timedelta(microseconds=rng.randrange(500_000, 6_000_000))
        at = clocks[q] - timedelta(microseconds=rng.randrange(round(GRACE_S * 900_000)))
        bad = ((at - T0).total_seconds() // 90) % 2 == 0
        provider, account = rng.choice(("p1", "p2")), rng.choice(("a1", "a2", "a3"))
        status = Status.FAILED if bad and rng.random() < 0.8 else Status.COMPLETED
        facts = {
            "session_key": f"{provider}:{account}:s{n}", "at": at, "status": status,
            "duration_s": 30, "pdd_s": round(rng.uniform(0, 12 if bad else 5), 6),
            "cause": "NO_FUNDS" if bad and rng.random() < 0.1 else None,
        }  # fmt: skip
        for scope in (Scope(provider), Scope(provider, account=account)):
            sources[q].append(AlertSample(scope=scope, **facts))  # type: ignore[arg-type]
        if rng.random() < 0.3:
            sources[q].append(AlertWatermark({q: clocks[q]}))
    for q, records in enumerate(sources):
        records.append(AlertWatermark({q: END}))
    return sources


def _interleaved(sources: list[list[SamplesRecord]], seed: int) -> list[SamplesRecord]:
    """The sources' records merged in a random order that keeps each source's own."""
    rng, heads = random.Random(seed), [list(reversed(source)) for source in sources]
    merged = []
    while any(heads):
        merged.append(rng.choice([head for head in heads if head]).pop())
    return merged


def _run(records: list[SamplesRecord], windows: Windows | None = None) -> list[Alert]:
    windows = windows or Windows(RULES, sessions=SOURCES, grace_s=GRACE_S)
    return [alert for offset, record in enumerate(records) for alert in windows.add(record, offset)]


@settings(deadline=None)
@given(traffic=st.integers(0, 2**32), order=st.integers(0, 2**32))
def test_any_interleaving_of_the_sources_gives_the_same_alerts(traffic: int, order: int) -> None:
    sources = _traffic(traffic)
    by_source = _run([record for source in sources for record in source])  # one after the other
    assert _run(_interleaved(sources, order)) == by_source
    by_key: dict[str, list[str]] = {}
    for alert in by_source:
        by_key.setdefault(alert.key, []).append(alert.state)
    assert any(key.startswith("asr:") for key in by_key)  # the spells make episodes
    for states in by_key.values():  # each fires once an episode, and resolves by the end
        assert states == ["firing", "resolved"] * (len(states) // 2)


@settings(deadline=None)
@given(
    traffic=st.integers(0, 2**32),
    order=st.integers(0, 2**32),
    cuts=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
)
def test_a_restore_from_any_state_goes_on_as_if_nothing_happened(
    traffic: int, order: int, cuts: tuple[float, float, float]
) -> None:
    """The state is written after record `written`, the group committed up to `committed`, and
    the instance stopped having handled up to `handled` (a batch it did not commit): the next
    owner restores the state, refills the samples from its restore_from, handles again what was
    committed after it (its alerts were produced), then goes on from the commit."""
    records = _interleaved(_traffic(traffic), order)
    written, committed, handled = sorted(round(cut * len(records)) for cut in cuts)
    original = Windows(RULES, sessions=SOURCES, grace_s=GRACE_S)
    alerts = [a for offset, r in enumerate(records[:written]) for a in original.add(r, offset)]
    state = _state.decode(msgspec.json.encode(original.state()))  # as calls.alerts.state has it
    before_commit = [
        a for offset in range(written, committed) for a in original.add(records[offset], offset)
    ]
    uncommitted = [
        a for offset in range(committed, handled) for a in original.add(records[offset], offset)
    ]

    restored = Windows.restored(RULES, state, sessions=SOURCES, grace_s=GRACE_S)
    for offset in range(state.restore_from, state.offset):
        restored.refill(records[offset], offset)
    restored.refilled()
    again = [
        a for offset in range(written, committed) for a in restored.add(records[offset], offset)
    ]
    after = [
        a
        for offset in range(committed, len(records))
        for a in restored.add(records[offset], offset)
    ]

    assert again == before_commit
    assert after[: len(uncommitted)] == uncommitted  # the same ids: not produced twice
    assert alerts + before_commit + after == _run(records)


def _sample(at_s: float, key: str, status: Status = Status.FAILED) -> AlertSample:
    at = T0 + timedelta(seconds=at_s)
    return AlertSample(
        scope=Scope("p1"), session_key=key, at=at, status=status, duration_s=None, pdd_s=None,
        cause=None,
    )  # fmt: skip


def _mark(at_s: float, *sources: int) -> AlertWatermark:
    return AlertWatermark(dict.fromkeys(sources, T0 + timedelta(seconds=at_s)))


def test_nothing_is_decided_before_every_source_has_passed_it_by_the_grace() -> None:
    windows = Windows(RULES, sessions=2, grace_s=GRACE_S)
    records = [_sample(i, f"k{i}") for i in range(5)]
    assert _run([*records, _mark(100, 0)], windows) == []  # source 1 has said nothing
    assert windows.add(_mark(8, 1), 6) == []  # decided up to 3 s: four samples, one short
    (firing,) = windows.add(_mark(9, 1), 7)
    assert (firing.key, firing.state, firing.at, firing.attempts) == (
        "asr:provider=p1", "firing", T0 + timedelta(seconds=4), 5,
    )  # fmt: skip


def test_a_late_sample_is_counted_at_once_and_a_duplicate_not_at_all() -> None:
    windows = Windows(RULES, sessions=1, grace_s=0)
    assert _run([*(_sample(i, f"k{i}") for i in range(4)), _mark(20, 0)], windows) == []
    (firing,) = windows.add(_sample(10, "late"), 5)  # received at 10 s, decided up to 20 s
    assert (firing.at, firing.since, firing.attempts) == (T0 + timedelta(seconds=20),) * 2 + (5,)
    assert windows.late == 1
    assert windows.add(_sample(11, "k2"), 6) == []  # a later version of a counted session
    assert windows.add(_sample(-100, "old"), 7) == []  # older than every window: out of reach
    assert windows.late == 1
