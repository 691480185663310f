"""One samples partition's windows without Kafka: whatever the interleaving of the calls.sessions
partitions' samples, and wherever the state is written and restored, the same alerts; and no
two transitions with one id."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from sink_helpers import RECEIVED_AT as T0

from schemas import Status
from schemas.records import Alert, AlertSample, AlertState, AlertWatermark, Scope
from sinks.rules import Asr, Causes, Pdd
from sinks.windows import SamplesRecord, Windows, implausible

SOURCES = 3
GRACE_S = 5.0
RULES = [
    Asr(name="asr", scopes=("provider", "account"), window_s=60, min_attempts=5, fire=0.3,
        clear=0.5),
    Causes(name="funds", window_s=30),
    Pdd(name="pdd", scopes=("provider",), window_s=40, min_attempts=4, fire=6.0, clear=4.0),
    Asr(name="flapping", scopes=("account",), window_s=5, min_attempts=3, fire=0.55,
        clear=0.6),
]  # fmt: skip
"""`flapping`: with hostile traffic's ASR about 0.55, episodes start and end all the time."""
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
        status = Status.FAILED if bad and rng.random() < 0.8 else Status.COMPLETED
        sources[q] += _samples(rng, f"s{n}", at, status, bad)
        if rng.random() < 0.3:
            sources[q].append(AlertWatermark({q: clocks[q]}))
    for q, records in enumerate(sources):
        records.append(AlertWatermark({q: END}))
    return sources


def _hostile(seed: int, sessions: int = 300) -> list[SamplesRecord]:
    """A samples partition as faults leave it: samples late by up to 40 s (their pipeline
    stalled past the grace), batches written again (an instance killed before its commit),
    watermarks 10 s ahead of any sample (a calls.sessions partition read to its end while the
    stage before it lags), and an ASR about 0.55, on which `flapping` fires and resolves all
    the time."""
    rng = random.Random(seed)
    records: list[SamplesRecord] = []
    clocks = [T0] * SOURCES
    for n in range(sessions):
        q = rng.randrange(SOURCES)
        clocks[q] += timedelta(microseconds=rng.randrange(100_000, 3_000_000))
        at = clocks[q] - timedelta(microseconds=rng.randrange(round(GRACE_S * 900_000)))
        if rng.random() < 0.05:
            at -= timedelta(seconds=rng.uniform(GRACE_S, 40))
        status = Status.FAILED if rng.random() < 0.45 else Status.COMPLETED
        records += _samples(rng, f"s{n}", at, status, bad=rng.random() < 0.5)
        if rng.random() < 0.05:
            records += records[-rng.randrange(1, 10) :]
        if rng.random() < 0.3:
            records.append(AlertWatermark({q: clocks[q]}))
        if rng.random() < 0.02:
            ahead = max(clocks) + timedelta(seconds=rng.uniform(0, 10))
            records.append(AlertWatermark(dict.fromkeys(range(SOURCES), ahead)))
    records.append(AlertWatermark(dict.fromkeys(range(SOURCES), END)))
    return records


def _samples(
    rng: random.Random, session: str, at: datetime, status: Status, bad: bool
) -> list[SamplesRecord]:
    """A session's samples: its provider's and its account's."""
    provider, account = rng.choice(("p1", "p2")), rng.choice(("a1", "a2", "a3"))
    facts = {
        "session_key": f"{provider}:{account}:{session}", "at": at, "status": status,
        "duration_s": 30, "pdd_s": round(rng.uniform(0, 12 if bad else 5), 6),
        "cause": "NO_FUNDS" if bad and rng.random() < 0.1 else None,
    }  # fmt: skip
    return [
        AlertSample(scope=scope, **facts)  # type: ignore[arg-type]
        for scope in (Scope(provider), Scope(provider, account=account))
    ]


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
    cuts=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
)
def test_a_restore_from_any_state_goes_on_as_if_nothing_happened(
    traffic: int, cuts: tuple[float, float, float]
) -> None:
    """The state is written after record `written`, the group committed up to `committed`, and
    the instance stopped having handled up to `handled` (a batch it did not commit): the next
    owner restores the state, refills the samples from its restore_from, handles again what was
    committed after it (its alerts were produced), then goes on from the commit, dropping the
    alerts on calls.alerts it may decide again, as the alert sink does. calls.alerts then holds
    the transitions of one uninterrupted run, each once, in order."""
    records = _hostile(traffic)
    written, committed, handled = sorted(round(cut * len(records)) for cut in cuts)
    original = Windows(RULES, sessions=SOURCES, grace_s=GRACE_S)
    alerts = [a for offset, r in enumerate(records[:written]) for a in original.add(r, offset)]
    state = original.state()
    before_commit = [
        a for offset in range(written, committed) for a in original.add(records[offset], offset)
    ]
    uncommitted = [
        a for offset in range(committed, handled) for a in original.add(records[offset], offset)
    ]

    restored = _restored(state, records, sessions=SOURCES, grace_s=GRACE_S)
    again = [
        a for offset in range(written, committed) for a in restored.add(records[offset], offset)
    ]
    on_topic = alerts + before_commit + uncommitted
    produced = {alert.alert_id for alert in on_topic if restored.may_decide(alert)}
    after = [
        a
        for offset in range(committed, len(records))
        for a in restored.add(records[offset], offset)
    ]

    assert again == before_commit
    assert after[: len(uncommitted)] == uncommitted  # the same ids: not produced twice
    assert on_topic + [a for a in after if a.alert_id not in produced] == _run(records)


def _restored(state: AlertState, records: list[SamplesRecord], **windows: Any) -> Windows:
    """Windows restored from `state` as the alert sink restores them: the samples refilled from
    its restore_from (`windows`: Windows' keywords)."""
    state = _state.decode(msgspec.json.encode(state))  # as calls.alerts.state has it
    restored = Windows.restored(RULES, state, **windows)
    for offset in range(state.restore_from, state.offset):
        restored.refill(records[offset], offset)
    restored.refilled()
    return restored


def test_a_restore_forgets_a_key_out_of_reach_as_an_uninterrupted_run_does() -> None:
    """A session key counted again, at another time, once its first time is out of every window:
    whether the uninterrupted run has swept the key yet or not, both runs count it."""

    def funds(key: str, at_s: float) -> AlertSample:
        return msgspec.structs.replace(
            _sample(at_s, key), scope=Scope("p1", account="a1"), cause="NO_FUNDS"
        )

    records = [
        _mark(0.5, 0),  # decided 0.5, swept; the next sweep 60 s on
        funds("k", 0.2),  # late: counted at 0.5, fires funds
        _mark(60.3, 0),  # the key out of reach (60 s, the longest window), not swept yet
        funds("k", 60.4),  # the key again, at another time
        _mark(100, 0),
    ]
    original = Windows(RULES, sessions=1, grace_s=0)
    before = _run(records[:3], original)
    restored = _restored(original.state(), records, sessions=1, grace_s=0)
    after = [a for offset in (3, 4) for a in original.add(records[offset], offset)]
    assert [a for offset in (3, 4) for a in restored.add(records[offset], offset)] == after
    assert [(a.rule, a.state, a.since) for a in before + after] == [
        ("funds", "firing", T0 + timedelta(seconds=0.5)),
        ("funds", "resolved", T0 + timedelta(seconds=0.5)),
        ("funds", "firing", T0 + timedelta(seconds=60.4)),
        ("funds", "resolved", T0 + timedelta(seconds=60.4)),
    ]


@settings(deadline=None)
@given(traffic=st.integers(0, 2**32))
def test_no_two_transitions_have_one_id(traffic: int) -> None:
    """An episode lasts a positive time, so the episodes of a (rule, scope) start at distinct
    times, even where late samples, all counted at the decided time, flip its window."""
    alerts = _run(_hostile(traffic))
    assert len({alert.alert_id for alert in alerts}) == len(alerts)
    assert all(alert.at > alert.since for alert in alerts if alert.state == "resolved")


def test_hostile_traffic_makes_episodes_come_and_go() -> None:
    """What the properties above run on: `flapping` fires and resolves all the time, with late
    samples among its counts (checked on fixed seeds: one drawn seed may make few episodes)."""
    for seed in range(20):
        windows = Windows(RULES, sessions=SOURCES, grace_s=GRACE_S)
        alerts = _run(_hostile(seed), windows)
        assert sum(alert.rule == "flapping" for alert in alerts) >= 10
        assert windows.late > 0


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


def test_an_episode_does_not_resolve_at_the_instant_it_fired() -> None:
    """Late samples are counted at the decided time, one after another: the one that would clear
    the episode they fired waits for a later instant, else the next could fire an episode that
    starts when the first did, with its id."""
    windows = Windows(RULES, sessions=1, grace_s=0)
    assert _run([*(_sample(i, f"k{i}") for i in range(4)), _mark(20, 0)], windows) == []
    (firing,) = windows.add(_sample(10, "late"), 5)  # asr 0 of 5: fires at 20 s
    assert firing.since == T0 + timedelta(seconds=20)
    completed = [_sample(11 + i, f"ok{i}", Status.COMPLETED) for i in range(5)]
    assert _run(completed, windows) == []  # asr 5 of 10 would clear it, but at 20 s still
    assert windows.add(_sample(21, "next", Status.COMPLETED), 11) == []  # pending
    (resolved,) = windows.add(_mark(22, 0), 12)
    assert (resolved.state, resolved.since, resolved.at) == (
        "resolved", T0 + timedelta(seconds=20), T0 + timedelta(seconds=21),
    )  # fmt: skip


def test_records_no_window_can_take_are_named() -> None:
    """The alert sink writes neither; one written by hand is dead-lettered with this reason."""
    assert implausible(_sample(0, "k"), sessions=2) is None
    assert implausible(_mark(0, 0, 1), sessions=2) is None
    for at in (datetime(1969, 12, 31, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)):
        far = msgspec.structs.replace(_sample(0, "k"), at=at)
        assert implausible(far, sessions=2) == "a time outside 1970 to 9000"
        assert implausible(AlertWatermark({0: at}), sessions=2) == "a time outside 1970 to 9000"
    assert implausible(_mark(0, 2), sessions=2) == "a watermark of partitions [2] of 2"
    for pdd_s in (-1.0, 1e303, float("nan")):
        slow = msgspec.structs.replace(_sample(0, "k"), pdd_s=pdd_s)
        assert (implausible(slow, sessions=2) or "").startswith("a pdd_s outside 0 to")
