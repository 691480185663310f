"""Alert rules over final sessions: their configuration, sliding windows, hysteresis. Pure: the
only I/O is reading the rules file.

Each final session is counted once (the first final version of its key; later versions and
duplicates are ignored) into the windows of every rule that takes a sample from it, once per
scope: its provider, its provider+account, its provider+destination country. Time is received
time (contract 1.1), the session's `received_at`, so a replay evaluates as the live run did and
nothing a provider writes moves the clock; the clock is the latest `received_at` seen (the
watermark), and a window holds the samples of its last `window_s`. A provider that reports late
is counted when its reports are received.

Hysteresis: a (rule, scope) fires once when its window holds at least `min_attempts` samples and
the value is past `fire`, and resolves once, when the value is back past `clear` (with at least
`min_attempts` samples) or the scope has had no sample for `window_s`. Below the minimum and
between the two thresholds the state stays as it is, so a value oscillating around `fire` gives
one episode, not a flood.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

import msgspec

from foundation.settings import SettingsError
from schemas import CALL_LEG, SessionRecord, Status, deciding_leg
from schemas.records import Alert, Scope, ScopeKind

DEFAULT_RULES = resources.files(__package__) / "default_rules.toml"
COUNTED_KEYS = 200_000
"""How many counted session keys are remembered: enough to cover the versions that follow a
session's first final one (the aggregator publishes them within minutes), bounded in memory."""
COUNTRY_KEYS = 200_000
"""How many sessions' destination countries are remembered until their final record comes."""

FAILED = frozenset({Status.FAILED, Status.REJECTED})


class Window:
    """The samples of one (rule, scope) by event time, with their running sum."""

    __slots__ = ("last", "samples", "total")

    def __init__(self, last: float = -math.inf) -> None:
        self.samples: list[tuple[float, float]] = []
        self.total = 0.0
        self.last = last
        """Event time of the latest sample (or of the restored firing alert)."""

    @property
    def count(self) -> int:
        return len(self.samples)

    def add(self, at: float, value: float) -> None:
        insort(
            self.samples, (at, value)
        )  # sessions of different partitions come slightly out of order
        self.total += value
        self.last = max(self.last, at)

    def prune(self, since: float) -> None:
        cut = bisect_left(self.samples, (since,))
        self.total -= sum(value for _, value in self.samples[:cut])
        del self.samples[:cut]


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """One rule of the rules file; `kind` picks the metric."""

    name: str
    window_s: float = 300.0
    min_attempts: int = 20
    scopes: tuple[ScopeKind, ...] = ("provider", "account", "country")

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"rule {self.name!r}: window_s must be > 0")
        if self.min_attempts < 1:
            raise ValueError(f"rule {self.name!r}: min_attempts must be ≥ 1")

    def sample(self, session: SessionRecord) -> float | None:
        """What `session` adds to the window, or None when the rule does not count it."""
        raise NotImplementedError

    @property
    def threshold(self) -> float:
        raise NotImplementedError

    def value(self, window: Window) -> float | None:
        """The measured value; None when the window is empty."""
        raise NotImplementedError

    def fires(self, window: Window) -> bool:
        raise NotImplementedError

    def clears(self, window: Window) -> bool:
        raise NotImplementedError


class Threshold(Rule):
    """A mean over the window compared with `fire`, and with `clear` to resolve."""

    fire: float
    clear: float
    below: ClassVar[bool] = False
    """Whether the bad side is below the threshold (ASR, ACD) rather than above it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.clear < self.fire) if self.below else (self.clear > self.fire):
            side = "≥" if self.below else "≤"
            raise ValueError(f"rule {self.name!r}: clear must be {side} fire (hysteresis)")

    @property
    def threshold(self) -> float:
        return self.fire

    def value(self, window: Window) -> float | None:
        return window.total / window.count if window.count else None

    def fires(self, window: Window) -> bool:
        if window.count < self.min_attempts:
            return False
        value = window.total / window.count
        return value < self.fire if self.below else value > self.fire

    def clears(self, window: Window) -> bool:
        if window.count < self.min_attempts:
            return False
        value = window.total / window.count
        return value >= self.clear if self.below else value <= self.clear


class Asr(Threshold, tag="asr"):
    """Answer-seizure ratio: completed ÷ final sessions."""

    below: ClassVar[bool] = True

    def sample(self, session: SessionRecord) -> float | None:
        return float(session.status is Status.COMPLETED)


class FailureRatio(Threshold, tag="failure_ratio"):
    """(failed + rejected) ÷ final sessions."""

    def sample(self, session: SessionRecord) -> float | None:
        return float(session.status in FAILED)


class Acd(Threshold, tag="acd"):
    """Average call duration: mean duration_s of completed sessions that report one."""

    below: ClassVar[bool] = True

    def sample(self, session: SessionRecord) -> float | None:
        if session.status is Status.COMPLETED and session.duration_s is not None:
            return float(session.duration_s)
        return None


class Pdd(Threshold, tag="pdd"):
    """Post-dial delay: ringing_at - initiated_at of the deciding leg, where both are known.

    answered_at is not used in their place: it includes the time the phone rang.
    """

    def sample(self, session: SessionRecord) -> float | None:
        leg = session.legs[deciding_leg(session.legs)]
        if leg.ringing_at is None or leg.initiated_at is None:
            return None
        delay = (leg.ringing_at - leg.initiated_at).total_seconds()
        return delay if delay >= 0 else None


class Causes(Rule, tag="causes"):
    """Account problems: fires on the first session ending with one of `causes`, resolves after
    `window_s` without one."""

    min_attempts: int = 1
    scopes: tuple[ScopeKind, ...] = ("account",)
    causes: frozenset[str] = frozenset(
        {"NO_FUNDS", "PAYMENT_ERROR", "NO_COVERAGE", "SERVER_TOO_BUSY"}
    )

    def sample(self, session: SessionRecord) -> float | None:
        cause = session.cause
        return 1.0 if cause is not None and cause.label in self.causes else None

    @property
    def threshold(self) -> float:
        return float(self.min_attempts)

    def value(self, window: Window) -> float | None:
        return float(window.count)

    def fires(self, window: Window) -> bool:
        return window.count >= self.min_attempts

    def clears(self, window: Window) -> bool:  # noqa: ARG002
        return False  # only a quiet period without such causes resolves it


AnyRule = Asr | FailureRatio | Acd | Pdd | Causes


class RulesFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rules: tuple[AnyRule, ...] = ()

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")


def load_rules(path: str | None) -> tuple[AnyRule, ...]:
    """The rules of the TOML file at `path`, or the shipped defaults when None.

    Raises SettingsError naming the file and the key (unknown keys are typos, so errors).
    """
    source = Path(path) if path is not None else DEFAULT_RULES
    try:
        return msgspec.toml.decode(source.read_bytes(), type=RulesFile).rules
    except OSError as exc:
        raise SettingsError(f"rules file {source}: {exc.strerror or exc}") from exc
    except msgspec.DecodeError as exc:
        raise SettingsError(f"rules file {source}: {exc}") from exc


class Countries:
    """Destination country of each session's legs, from calls.events: sessions do not carry it.

    Only legs with a country are remembered (only some providers report one), the oldest first
    forgotten beyond COUNTRY_KEYS sessions.
    """

    def __init__(self, limit: int = COUNTRY_KEYS) -> None:
        self.limit = limit
        self.by_session: dict[str, dict[str, str]] = {}

    def note(self, session_key: str, leg: str | None, country: str | None) -> None:
        if country is None:
            return
        self.by_session.setdefault(session_key, {})[leg or CALL_LEG] = country
        if len(self.by_session) > self.limit:
            del self.by_session[next(iter(self.by_session))]

    def of(self, session: SessionRecord) -> str | None:
        return self.by_session.get(session.session_key, {}).get(deciding_leg(session.legs))


class _Track:
    __slots__ = ("rule", "scope", "window")

    def __init__(self, rule: AnyRule, scope: Scope, window: Window) -> None:
        self.rule, self.scope, self.window = rule, scope, window


class Evaluator:
    """The windows and alert states of every (rule, scope); `feed` sessions, get transitions."""

    def __init__(
        self,
        rules: Sequence[AnyRule],
        restored: Iterable[Alert] = (),
        counted_keys: int = COUNTED_KEYS,
    ) -> None:
        """`restored`: the latest alert of each key (from calls.alerts), so that an episode
        already firing before a restart is not fired again."""
        self.rules = rules
        self.counted_keys = counted_keys
        self.counted: dict[str, None] = {}
        self.tracks: dict[str, _Track] = {}
        self.firing: dict[str, datetime] = {}
        """alert key → start of its episode."""
        self.watermark = -math.inf
        self.next_sweep = -math.inf
        by_name = {rule.name: rule for rule in rules}
        for alert in restored:
            rule = by_name.get(alert.rule)
            if alert.state == "firing" and rule is not None:
                self.tracks[alert.key] = _Track(rule, alert.scope, Window(alert.at.timestamp()))
                self.firing[alert.key] = alert.since

    def feed(self, session: SessionRecord, country: str | None = None) -> list[Alert]:
        """Count `session` if it is final for the first time; return the alert transitions."""
        at = session.received.timestamp()
        self.watermark = max(self.watermark, at)
        transitions: list[Alert] = []
        if session.final and session.session_key not in self.counted:
            self.counted[session.session_key] = None
            if len(self.counted) > self.counted_keys:
                del self.counted[next(iter(self.counted))]
            scopes = _scopes(session, country)
            for rule in self.rules:
                value = rule.sample(session)
                if value is not None:
                    transitions.extend(self._add(rule, scopes, at, value))
        transitions.extend(self._quiet())
        if self.watermark >= self.next_sweep:
            self._sweep()
        return transitions

    def _add(
        self, rule: AnyRule, scopes: dict[str, Scope], at: float, value: float
    ) -> Iterable[Alert]:
        since = self.watermark - rule.window_s
        for kind in rule.scopes:
            scope = scopes.get(kind)
            if scope is None:
                continue
            key = f"{rule.name}:{scope}"
            track = self.tracks.get(key) or self.tracks.setdefault(
                key, _Track(rule, scope, Window())
            )
            track.window.prune(since)
            if at < since:
                continue  # older than its window: the watermark has moved past it
            track.window.add(at, value)
            if key not in self.firing and rule.fires(track.window):
                self.firing[key] = self._now()
                yield self._alert(key, track, "firing")
            elif key in self.firing and rule.clears(track.window):
                yield self._alert(key, track, "resolved")

    def _quiet(self) -> Iterable[Alert]:
        """Resolve the firing (rule, scope)s that had no sample for their window."""
        for key in list(self.firing):
            track = self.tracks[key]
            if self.watermark - track.window.last > track.rule.window_s:
                track.window.prune(self.watermark - track.rule.window_s)
                yield self._alert(key, track, "resolved")

    def _sweep(self) -> None:
        """Forget the windows of quiet scopes that are not firing, once per longest window."""
        longest = max((rule.window_s for rule in self.rules), default=0.0)
        self.next_sweep = self.watermark + longest
        for key, track in list(self.tracks.items()):
            track.window.prune(self.watermark - track.rule.window_s)
            if not track.window.count and key not in self.firing:
                del self.tracks[key]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.watermark, UTC)

    def _alert(self, key: str, track: _Track, state: Literal["firing", "resolved"]) -> Alert:
        since = self.firing[key] if state == "firing" else self.firing.pop(key)
        rule, window = track.rule, track.window
        return Alert(
            alert_id=f"{key}:{state}:{_iso(since)}",
            rule=rule.name,
            kind=type(rule).__struct_config__.tag,
            scope=track.scope,
            state=state,
            value=rule.value(window),
            threshold=rule.threshold,
            window_s=rule.window_s,
            attempts=window.count,
            at=self._now(),
            since=since,
        )


def _scopes(session: SessionRecord, country: str | None) -> dict[str, Scope]:
    provider = session.provider
    scopes = {"provider": Scope(provider)}
    if session.account is not None:
        scopes["account"] = Scope(provider, account=session.account)
    if country is not None:
        scopes["country"] = Scope(provider, country=country)
    return scopes


def _iso(at: datetime) -> str:
    return msgspec.json.encode(at)[1:-1].decode()
