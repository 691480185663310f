"""Alert rules: their configuration, what a final session gives their windows, and hysteresis.
Pure: the only I/O is reading the rules file.

A final session is a sample of each of its scopes (`samples`): its provider, its
provider+account, its provider+destination country (the deciding leg's `to_country`, where
known). A rule takes a value from a sample (`Rule.sample`), or none when it does not count it,
into the sliding window of its (rule, scope); `sinks.windows` keeps the windows, in received
time. Values are integers (PDD in microseconds), so a window's sum is exact whatever order it was
added and pruned in: a restored window measures what the original did.

Hysteresis: a (rule, scope) fires once when its window holds at least `min_attempts` samples and
the value is past `fire`, and resolves once, when the value is back past `clear` (with at least
`min_attempts` samples) or the scope has had no sample for `window_s`. Below the minimum and
between the two thresholds the state stays as it is, so a value oscillating around `fire` gives
one episode, not a flood.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections import deque
from importlib import resources
from pathlib import Path
from typing import ClassVar

import msgspec

from foundation.settings import SettingsError
from schemas import SessionRecord, Status, deciding_leg
from schemas.records import AlertSample, Scope, ScopeKind

DEFAULT_RULES = resources.files(__package__) / "default_rules.toml"
FAILED = frozenset({Status.FAILED, Status.REJECTED})


class Window:
    """The samples of one (rule, scope): (received time in µs, value), sorted, with their sum.
    Samples mostly come in order: they are appended, and pruned from the front."""

    __slots__ = ("samples", "total")

    def __init__(self) -> None:
        self.samples: deque[tuple[int, int]] = deque()
        self.total = 0

    @property
    def count(self) -> int:
        return len(self.samples)

    def add(self, at: int, value: int) -> None:
        samples, sample = self.samples, (at, value)
        if samples and sample < samples[-1]:
            samples.insert(bisect_right(samples, sample), sample)
        else:
            samples.append(sample)
        self.total += value

    def prune(self, since: int) -> None:
        """Drop the samples older than `since`."""
        samples = self.samples
        while samples and samples[0][0] < since:
            self.total -= samples.popleft()[1]

    def clear(self) -> None:
        self.samples.clear()
        self.total = 0


MAX_WINDOW_S = 86_400.0
"""A rule's longest window: a day (a window holds each of its samples in memory)."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """One rule of the rules file; `kind` picks the metric."""

    name: str
    window_s: float = 300.0
    min_attempts: int = 20
    scopes: tuple[ScopeKind, ...] = ("provider", "account", "country")

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"rule name {self.name!r}: 1 to 64 letters, digits, '_', '-' or '.' (it is part "
                "of the alerts' keys and ids, `<name>:<scope>`)"
            )
        if not 0 < self.window_s <= MAX_WINDOW_S:  # False for NaN too
            raise ValueError(f"rule {self.name!r}: window_s must be > 0 and ≤ {MAX_WINDOW_S:g}")
        if self.min_attempts < 1:
            raise ValueError(f"rule {self.name!r}: min_attempts must be ≥ 1")

    scale: ClassVar[int] = 1
    """Sample values are the measure times this (PDD: microseconds), so that they are integers."""

    def sample(self, sample: AlertSample) -> int | None:
        """What `sample` adds to the window, or None when the rule does not count it."""
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
        if not (math.isfinite(self.fire) and math.isfinite(self.clear)):
            raise ValueError(f"rule {self.name!r}: fire and clear must be finite numbers")
        if (self.clear < self.fire) if self.below else (self.clear > self.fire):
            side = "≥" if self.below else "≤"
            raise ValueError(f"rule {self.name!r}: clear must be {side} fire (hysteresis)")

    @property
    def threshold(self) -> float:
        return self.fire

    def value(self, window: Window) -> float | None:
        return window.total / (window.count * self.scale) if window.count else None

    def fires(self, window: Window) -> bool:
        if window.count < self.min_attempts:
            return False
        value = window.total / (window.count * self.scale)
        return value < self.fire if self.below else value > self.fire

    def clears(self, window: Window) -> bool:
        if window.count < self.min_attempts:
            return False
        value = window.total / (window.count * self.scale)
        return value >= self.clear if self.below else value <= self.clear


class Asr(Threshold, tag="asr"):
    """Answer-seizure ratio: completed ÷ final sessions."""

    below: ClassVar[bool] = True

    def sample(self, sample: AlertSample) -> int | None:
        return int(sample.status is Status.COMPLETED)


class FailureRatio(Threshold, tag="failure_ratio"):
    """(failed + rejected) ÷ final sessions."""

    def sample(self, sample: AlertSample) -> int | None:
        return int(sample.status in FAILED)


class Acd(Threshold, tag="acd"):
    """Average call duration: mean duration_s of completed sessions that report one."""

    below: ClassVar[bool] = True

    def sample(self, sample: AlertSample) -> int | None:
        if sample.status is Status.COMPLETED and sample.duration_s is not None:
            return sample.duration_s
        return None


class Pdd(Threshold, tag="pdd"):
    """Post-dial delay: ringing_at - initiated_at of the deciding leg, where both are known.

    answered_at is not used in their place: it includes the time the phone rang.
    """

    scale: ClassVar[int] = 1_000_000

    def sample(self, sample: AlertSample) -> int | None:
        return None if sample.pdd_s is None else round(sample.pdd_s * self.scale)


class Causes(Rule, tag="causes"):
    """Account problems: fires on the first session ending with one of `causes`, resolves after
    `window_s` without one."""

    min_attempts: int = 1
    scopes: tuple[ScopeKind, ...] = ("account",)
    causes: frozenset[str] = frozenset(
        {"NO_FUNDS", "PAYMENT_ERROR", "NO_COVERAGE", "SERVER_TOO_BUSY"}
    )

    def sample(self, sample: AlertSample) -> int | None:
        return 1 if sample.cause in self.causes else None

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


def samples(session: SessionRecord) -> list[AlertSample]:
    """What a final session gives the windows: a sample of each of its scopes, at the received
    time it became final. Every final version of a session gives the same scopes and time; the
    windows count the first of them."""
    provider, at = session.provider, session.final_received
    deciding = session.legs[deciding_leg(session.legs)]
    scopes = [Scope(provider)]
    if session.account is not None:
        scopes.append(Scope(provider, account=session.account))
    if deciding.to_country is not None:
        scopes.append(Scope(provider, country=deciding.to_country))
    pdd = None
    if deciding.ringing_at is not None and deciding.initiated_at is not None:
        delay = (deciding.ringing_at - deciding.initiated_at).total_seconds()
        pdd = delay if delay >= 0 else None
    cause = session.cause.label if session.cause is not None else None
    return [
        AlertSample(
            scope=scope, session_key=session.session_key, at=at, status=session.status,
            duration_s=session.duration_s, pdd_s=pdd, cause=cause,
        )
        for scope in scopes
    ]  # fmt: skip
