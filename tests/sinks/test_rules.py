"""Alert rules without Kafka: episodes, minimums, hysteresis, account causes, rules files.

Sessions go through what the sink does with them (`samples`, then one partition's `Windows`),
with a watermark after each feed: every sample fed is decided."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from sink_helpers import RECEIVED_AT as T0
from sink_helpers import make_session

from foundation.settings import SettingsError
from schemas import SessionRecord, Status
from schemas.records import Alert, AlertState, AlertWatermark, Episode, Scope
from sinks.rules import Acd, AnyRule, Asr, Causes, FailureRatio, Pdd, load_rules, samples
from sinks.windows import Windows


class _Evaluator:
    """One samples partition's windows fed sessions, one calls.sessions partition's worth."""

    def __init__(self, rules: Sequence[AnyRule], state: AlertState | None = None) -> None:
        self.windows = Windows.restored(rules, state, sessions=1, grace_s=0)
        self.offset = 0

    def feed(self, session: SessionRecord) -> list[Alert]:
        return _feed(self, [session])

    def add(self, record: object) -> list[Alert]:
        self.offset += 1
        return self.windows.add(record, self.offset)  # type: ignore[arg-type]


def _feed(evaluator: _Evaluator, sessions: list[SessionRecord]) -> list[Alert]:
    """Each final session's samples, then a watermark at the last one's received time."""
    alerts = [
        alert
        for session in sessions
        if session.final
        for sample in samples(session)
        for alert in evaluator.add(sample)
    ]
    mark = AlertWatermark({0: max(session.received for session in sessions)})
    return alerts + evaluator.add(mark)


def _states(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(alert.key, alert.state) for alert in alerts]


PROVIDER = ("provider",)
EPISODES: list[tuple[AnyRule, dict[str, object], dict[str, object]]] = [
    (
        Asr(name="asr", scopes=PROVIDER, fire=0.3, clear=0.4),
        {"status": Status.FAILED},
        {"status": Status.COMPLETED},
    ),
    (
        FailureRatio(name="fail", scopes=PROVIDER, fire=0.5, clear=0.4),
        {"status": Status.REJECTED},
        {"status": Status.BUSY},
    ),
    (
        Acd(name="acd", scopes=PROVIDER, min_attempts=10, fire=10, clear=15),
        {"duration_s": 3},
        {"duration_s": 60},
    ),
    (
        Pdd(name="pdd", scopes=PROVIDER, min_attempts=10, fire=8, clear=6),
        {"pdd_s": 12.0},
        {"pdd_s": 2.0},
    ),
]


@pytest.mark.parametrize(("rule", "bad", "good"), EPISODES, ids=lambda p: getattr(p, "name", ""))
def test_an_episode_fires_once_and_resolves_once(
    rule: AnyRule, bad: dict[str, object], good: dict[str, object]
) -> None:
    evaluator = _Evaluator([rule])
    sessions = [make_session(i, **bad) for i in range(60)]  # type: ignore[arg-type]
    sessions += [make_session(60 + i, **good) for i in range(150)]  # type: ignore[arg-type]
    alerts = _feed(evaluator, sessions)
    assert _states(alerts) == [
        (f"{rule.name}:provider=wavecell", "firing"),
        (f"{rule.name}:provider=wavecell", "resolved"),
    ]
    firing, resolved = alerts
    assert firing.attempts == rule.min_attempts  # fires as soon as the minimum is reached
    assert firing.threshold == rule.fire
    assert resolved.since == firing.since == firing.at
    assert resolved.alert_id == f"{resolved.key}:resolved:{firing.at:%Y-%m-%dT%H:%M:%SZ}"


def test_no_alert_below_the_minimum_of_attempts() -> None:
    rule = Asr(name="asr", scopes=PROVIDER, min_attempts=20, fire=0.3, clear=0.4)
    evaluator = _Evaluator([rule])
    assert _feed(evaluator, [make_session(i, Status.FAILED) for i in range(19)]) == []
    assert _states(evaluator.feed(make_session(19, Status.FAILED))) == [
        ("asr:provider=wavecell", "firing")
    ]


def test_hysteresis_keeps_an_oscillating_value_to_one_alert() -> None:
    """Three completed in ten: an 11 s window holds 3 or 4 of 11 (0.27 or 0.36), around 0.3.
    Without a margin (clear == fire) the same stream floods; with one it is one firing."""
    pattern = [Status.COMPLETED] * 3 + [Status.FAILED] * 7
    statuses = list(itertools.islice(itertools.cycle(pattern), 500))
    sessions = [make_session(i, status) for i, status in enumerate(statuses)]

    def alerts(clear: float) -> list[Alert]:
        rule = Asr(name="asr", scopes=PROVIDER, window_s=10, min_attempts=10, fire=0.3, clear=clear)
        return _feed(_Evaluator([rule]), sessions)

    assert _states(alerts(clear=0.4)) == [("asr:provider=wavecell", "firing")]
    assert len(alerts(clear=0.3)) > 50


def test_account_causes_fire_at_once_and_resolve_after_a_quiet_window() -> None:
    rule = Causes(name="account", window_s=300)
    evaluator = _Evaluator([rule])
    key = "account:provider=wavecell,account=acc1"
    assert _states(evaluator.feed(make_session(0, Status.FAILED, cause="NO_FUNDS"))) == [
        (key, "firing")
    ]
    more = [make_session(10 + i, Status.FAILED, cause="NO_FUNDS") for i in range(5)]
    assert _feed(evaluator, more) == []  # the same episode
    calm = [make_session(20 + i * 10, account="other") for i in range(40)]  # time moves on
    alerts = _feed(evaluator, calm)
    assert _states(alerts) == [(key, "resolved")]
    (resolved,) = alerts
    assert resolved.at == T0 + timedelta(seconds=14 + 300)  # 300 s after the last cause
    assert resolved.value == 0
    assert resolved.since == T0


def test_a_session_is_counted_once() -> None:
    """Non-final versions, duplicates and later versions of a final session add nothing."""
    evaluator = _Evaluator([Causes(name="account", min_attempts=2)])
    versions = [
        make_session(0, Status.RINGING, key="x", cause="NO_FUNDS", final=False),
        make_session(1, Status.FAILED, key="x", cause="NO_FUNDS"),
        make_session(1, Status.FAILED, key="x", cause="NO_FUNDS"),
        make_session(2, Status.REJECTED, key="x", cause="NO_FUNDS"),
    ]
    assert _feed(evaluator, versions) == []
    scope = evaluator.windows.scopes[Scope("wavecell", account="acc1")]
    assert scope.tracks["account"].window.count == 1
    assert evaluator.feed(make_session(3, Status.FAILED, key="y", cause="NO_FUNDS")) != []


def test_a_restored_firing_alert_is_not_fired_again() -> None:
    rule = Asr(name="asr", scopes=PROVIDER, fire=0.3, clear=0.4)
    since = T0 - timedelta(seconds=30)
    episode = Episode("asr", Scope("wavecell"), since=since, last=since)
    state = AlertState(offset=0, restore_from=0, decided=since, watermarks={}, firing=[episode])
    evaluator = _Evaluator([rule], state)
    evaluator.windows.refilled()
    assert _feed(evaluator, [make_session(i, Status.FAILED) for i in range(40)]) == []
    alerts = _feed(evaluator, [make_session(40 + i) for i in range(40)])
    assert _states(alerts) == [("asr:provider=wavecell", "resolved")]
    assert alerts[0].since == since


def test_country_scope_follows_the_deciding_leg() -> None:
    session = make_session(0, Status.FAILED, cause="NO_COVERAGE")
    leg = session.legs["call"]
    legs = {"a": msgspec.structs.replace(leg, to_country="FR")}
    legs["b"] = msgspec.structs.replace(leg, to_country="GB")
    session = msgspec.structs.replace(session, legs=legs)
    assert [str(sample.scope) for sample in samples(session)] == [
        "provider=wavecell",
        "provider=wavecell,account=acc1",
        "provider=wavecell,country=GB",
    ]
    evaluator = _Evaluator([Causes(name="cov", scopes=("provider", "account", "country"))])
    assert sorted(alert.key for alert in evaluator.feed(session)) == [
        "cov:provider=wavecell",
        "cov:provider=wavecell,account=acc1",
        "cov:provider=wavecell,country=GB",
    ]


def test_the_default_rules_load() -> None:
    rules = load_rules(None)
    assert {type(rule) for rule in rules} == {Asr, FailureRatio, Acd, Pdd, Causes}
    (causes,) = (rule for rule in rules if isinstance(rule, Causes))
    assert causes.causes == {"NO_FUNDS", "PAYMENT_ERROR", "NO_COVERAGE", "SERVER_TOO_BUSY"}
    assert causes.scopes == ("account",)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('name = "a"\nkind = "asr"\nfire = 0.3\nclear = 0.4\nfier = 0.2\n', "fier"),
        ('name = "a"\nkind = "asr"\nfire = 0.3\nclear = 0.2\n', "clear must be ≥ fire"),
        ('name = "a"\nkind = "nope"\n', "kind"),
        ('name = "a"\nkind = "acd"\nfire = 10\n', "clear"),
        ('name = "a"\nkind = "causes"\nwindow_s = inf\n', "window_s must be"),
        ('name = "a"\nkind = "causes"\nwindow_s = nan\n', "window_s must be"),
        ('name = "a"\nkind = "causes"\nwindow_s = 86401\n', "window_s must be"),
        ('name = "a"\nkind = "asr"\nfire = nan\nclear = 0.4\n', "finite"),
        ('name = "a"\nkind = "pdd"\nfire = inf\nclear = inf\n', "finite"),
        ('name = "asr:provider=x"\nkind = "causes"\n', "rule name"),
        ('name = ""\nkind = "causes"\n', "rule name"),
    ],
)
def test_a_bad_rules_file_names_the_file_and_the_key(tmp_path: Path, body: str, names: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rules]]\n" + body)
    with pytest.raises(SettingsError, match=names) as error:
        load_rules(str(path))
    assert str(path) in str(error.value)


def test_a_missing_rules_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"missing\.toml"):
        load_rules(str(tmp_path / "missing.toml"))


def test_a_provider_timestamp_moves_no_alert_clock() -> None:
    """Issue 15, finding 2: a session its provider dated 9999 (received now, as the store or an
    older writer may still hold) neither resolves a firing alert nor keeps later failures of a
    new account from firing: windows run on received time."""
    rule = Asr(name="asr", scopes=("account",), min_attempts=5, fire=0.3, clear=0.4)
    evaluator = _Evaluator([rule])
    fired = _feed(evaluator, [make_session(i, Status.FAILED) for i in range(5)])
    assert _states(fired) == [("asr:provider=wavecell,account=acc1", "firing")]
    dated = msgspec.structs.replace(
        make_session(6, Status.FAILED),
        updated_at=T0.replace(year=9999),
        received_at=T0 + timedelta(seconds=6),
    )
    assert evaluator.feed(dated) == []  # still firing: nothing was resolved by the year 9999
    others = [make_session(7 + i, Status.FAILED, account="acc2") for i in range(5)]
    assert _states(_feed(evaluator, others)) == [("asr:provider=wavecell,account=acc2", "firing")]
