"""The alert windows of one calls.alerts.samples partition. Pure: no I/O.

The samples of a partition's scopes come from every calls.sessions partition, interleaved as the
instances reading those happened to write them, and that order differs between a live run, a
replay, and a run with a restart or a rebalance. So samples are not counted as they arrive: each
calls.sessions partition's watermark (`AlertWatermark`, its received-time clock once its samples
are written) is kept, and the samples are counted in received-time order (`at`, then scope, then
session key) once the slowest of those clocks has passed them by `grace_s`. Up to there
(`decided`), what is counted and decided is the same whatever the interleaving; the alerts'
times are those of the samples (`at` of the sample that fired or cleared it, `last` +
`window_s` for a quiet resolution), so their ids and contents are the same too.

A sample that comes after its time was decided (a pipeline stalled for longer than `grace_s`, or
a calls.sessions partition read to its end while the stage before it lagged) is late: it is
counted at once, at `decided`, if it is still inside a window (`late` counts them), and that is
the one case in which another run may decide differently. A session is counted once per scope:
a sample of a session key already counted is a duplicate (a later version of the session, or a
batch written again after a crash), and one older than every window is out of reach. A counted
key is remembered as long as its time may be in a window (`decided` less the longest window),
and no longer, whenever the sweep that forgets it comes: a restore, which cannot know when the
sweeps came, then holds the same keys. (A key coming back with another time once its first is
out of reach counts again; `sinks.rules.samples` gives every version of a session one time.)

An episode lasts a positive time: it does not resolve at the instant it fired (late samples are
all counted at `decided`, and a burst of them could otherwise fire, resolve and fire again at
one instant), and a quiet one resolves a microsecond after it fired at the earliest. So the
episodes of a (rule, scope) start at distinct times, and an alert's id (key, state, start)
names one transition: the alert sink, restored, drops as already produced exactly the
transitions that were.

Everything is a function of the partition's records in offset order, so the state is restored
by taking the last `AlertState` (`state`: firing episodes, clocks, offsets) and reading the
samples partition again from its `restore_from` (`refill`, which decides nothing): the windows
then hold what they held.

Times are integers, microseconds since the epoch, so that no sum or comparison depends on
floating-point order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from schemas.records import Alert, AlertSample, AlertState, AlertWatermark, Episode, Scope
from sinks.rules import AnyRule, Window

NEVER = -(2**63)
"""The time before everything: nothing decided, no watermark."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
SamplesRecord = AlertSample | AlertWatermark
"""What calls.alerts.samples carries."""


LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""The latest time the windows take: a window or the grace past it stays within datetime's
range (a window is at most a day)."""
MAX_PDD_S = (LATEST - EPOCH).total_seconds()
"""The longest post-dial delay a sample may carry: the span of the times the windows take."""


def micros(at: datetime) -> int:
    return (at - EPOCH) // MICROSECOND


def moment(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


def implausible(record: SamplesRecord, sessions: int) -> str | None:
    """Why the windows of a topic whose calls.sessions has `sessions` partitions cannot take
    `record`, or None: a time before 1970 or after LATEST, a post-dial delay longer than the
    times between, or a watermark of a calls.sessions partition that does not exist. (The alert
    sink writes none such: such a record was written by hand.)"""
    if isinstance(record, AlertSample):
        if record.pdd_s is not None and not 0 <= record.pdd_s <= MAX_PDD_S:  # NaN too
            return f"a pdd_s outside 0 to {MAX_PDD_S:.0f}"
        times = [record.at]
    else:
        if not all(0 <= partition < sessions for partition in record.sessions):
            return f"a watermark of partitions {sorted(record.sessions)} of {sessions}"
        times = list(record.sessions.values())
    if not all(EPOCH <= at <= LATEST for at in times):
        return f"a time outside {EPOCH.year} to {LATEST.year}"
    return None


class _Track:
    """One (rule, scope): its window, and its episode while it fires."""

    __slots__ = ("key", "last", "rule", "scope", "since", "span", "window")

    def __init__(self, rule: AnyRule, scope: Scope, span: int) -> None:
        self.rule, self.scope, self.span = rule, scope, span
        self.key = f"{rule.name}:{scope}"
        self.window = Window()
        self.last = NEVER
        """The received time of its latest sample."""
        self.since: int | None = None
        """When its episode started, while it fires."""

    def quiet_at(self) -> int:
        """When its episode resolves for want of samples: its window emptied, and never at the
        instant it fired."""
        assert self.since is not None  # noqa: S101 - asked of firing tracks only
        return max(self.last + self.span, self.since + 1)


class _Scope:
    """One scope's tracks, and the session keys it has counted (or holds pending)."""

    __slots__ = ("name", "scope", "seen", "tracks")

    def __init__(self, scope: Scope) -> None:
        self.scope, self.name = scope, str(scope)
        self.seen: dict[str, int] = {}
        """session key → the received time it counts at."""
        self.tracks: dict[str, _Track] = {}


class Windows:
    """The windows, episodes and clocks of one calls.alerts.samples partition. `add` each record
    in offset order; get the alert transitions it decides."""

    def __init__(self, rules: Sequence[AnyRule], *, sessions: int, grace_s: float) -> None:
        """`sessions`: how many partitions calls.sessions has (each sends watermarks)."""
        self.rules = {rule.name: rule for rule in rules}
        self.spans = {rule.name: round(rule.window_s * 1_000_000) for rule in rules}
        self.by_kind = {
            kind: [(rule, self.spans[rule.name]) for rule in rules if kind in rule.scopes]
            for kind in ("provider", "account", "country")
        }
        self.longest = max(self.spans.values(), default=0)
        self.sessions = sessions
        self.grace = round(grace_s * 1_000_000)
        self.offset = 0
        """The next offset of the partition: every record before it is reflected here."""
        self.decided = NEVER
        self.marks: dict[int, int] = {}
        """calls.sessions partition → its latest watermark."""
        self.pending: list[tuple[int, str, str, AlertSample]] = []
        """A heap of samples not yet decided: (at, scope name, session key, sample)."""
        self.scopes: dict[Scope, _Scope] = {}
        self.firing: dict[str, _Track] = {}
        self.quiet: list[tuple[int, str]] = []
        """A heap of (when a firing track goes quiet, its key); an entry whose track has had a
        later sample or resolved since is skipped."""
        self.held: deque[tuple[int, int]] = deque()
        """(offset, at) of the samples taken, in offset order: `restore_from` is the first that
        may still be in a window."""
        self.next_sweep = NEVER
        self.late = 0
        """Samples counted after their time was decided."""

    def add(self, record: SamplesRecord, offset: int) -> list[Alert]:
        """Take the partition's record at `offset`; return the transitions it decides."""
        self.offset = offset + 1
        if isinstance(record, AlertWatermark):
            return self._watermark(record)
        at = micros(record.at)
        scope = self._take(record, at, offset)
        if scope is None or at > self.decided:
            return []
        self.late += 1
        return self._count(scope, record, at, self.decided)

    def skip(self, offset: int) -> None:
        """A record at `offset` that is not a samples record (dead-lettered elsewhere)."""
        self.offset = offset + 1

    def _take(self, sample: AlertSample, at: int, offset: int) -> _Scope | None:
        """Note a sample; pending if its time is not decided yet. None for a duplicate, or a
        sample older than every window."""
        scope = self.scopes.get(sample.scope) or self._scope(sample.scope)
        reach = self.decided - self.longest
        counted = scope.seen.get(sample.session_key)
        if at < reach or (counted is not None and counted >= reach):
            return None
        scope.seen[sample.session_key] = at
        self.held.append((offset, at))
        if at > self.decided:
            heapq.heappush(self.pending, (at, scope.name, sample.session_key, sample))
        return scope

    def _scope(self, scope: Scope) -> _Scope:
        return self.scopes.setdefault(scope, _Scope(scope))

    def _track(self, scope: _Scope, rule: AnyRule) -> _Track:
        track = scope.tracks.get(rule.name)
        if track is None:
            track = scope.tracks[rule.name] = _Track(rule, scope.scope, self.spans[rule.name])
        return track

    def _watermark(self, mark: AlertWatermark) -> list[Alert]:
        for partition, at in mark.sessions.items():
            self.marks[partition] = max(self.marks.get(partition, NEVER), micros(at))
        slowest = min((self.marks.get(p, NEVER) for p in range(self.sessions)), default=NEVER)
        if slowest == NEVER or slowest - self.grace <= self.decided:
            return []
        return self._advance(slowest - self.grace)

    def _advance(self, until: int) -> list[Alert]:
        """Decide up to `until`: the pending samples in order, and the quiet periods between."""
        alerts: list[Alert] = []
        pending = self.pending
        while pending and pending[0][0] <= until:
            at, _, _, sample = heapq.heappop(pending)
            alerts += self._resolve_quiet(before=at)
            alerts += self._count(self.scopes[sample.scope], sample, at, at)
        alerts += self._resolve_quiet(before=until)
        self.decided = until
        if until >= self.next_sweep:
            self._sweep()
        return alerts

    def _count(self, scope: _Scope, sample: AlertSample, at: int, now: int) -> list[Alert]:
        """Count `sample` (received at `at`) into its scope's windows at time `now`."""
        alerts: list[Alert] = []
        for rule, span in self.by_kind[sample.scope.kind]:
            value = rule.sample(sample)
            if value is None or at < now - span:
                continue
            track = scope.tracks.get(rule.name) or self._track(scope, rule)
            track.window.prune(now - span)
            track.window.add(at, value)
            track.last = max(track.last, at)
            if track.since is None:
                if rule.fires(track.window):
                    track.since = now
                    self.firing[track.key] = track
                    alerts.append(self._alert(track, "firing", now, now))
            elif now > track.since and rule.clears(track.window):
                alerts.append(self._resolve(track, track.since, now))
            if track.since is not None:
                heapq.heappush(self.quiet, (track.quiet_at(), track.key))
        return alerts

    def _resolve_quiet(self, before: int) -> list[Alert]:
        """Resolve the episodes whose window emptied before `before`, at the time it did."""
        alerts: list[Alert] = []
        quiet = self.quiet
        while quiet and quiet[0][0] < before:
            due, key = heapq.heappop(quiet)
            track = self.firing.get(key)
            if track is None or track.since is None or track.quiet_at() != due:
                continue
            track.window.clear()
            alerts.append(self._resolve(track, track.since, due))
        return alerts

    def _resolve(self, track: _Track, since: int, now: int) -> Alert:
        track.since = None
        del self.firing[track.key]
        return self._alert(track, "resolved", since, now)

    def _alert(
        self, track: _Track, state: Literal["firing", "resolved"], started: int, now: int
    ) -> Alert:
        since = moment(started)
        rule, window = track.rule, track.window
        return Alert(
            alert_id=f"{track.key}:{state}:{_iso(since)}",
            rule=rule.name,
            kind=type(rule).__struct_config__.tag,
            scope=track.scope,
            state=state,
            value=rule.value(window),
            threshold=rule.threshold,
            window_s=rule.window_s,
            attempts=window.count,
            at=moment(now),
            since=since,
        )

    def _sweep(self) -> None:
        """Forget what no window can hold any more, once per longest window: session keys and
        samples older than every window, and the scopes left with nothing."""
        self.next_sweep = self.decided + self.longest
        cut = self.decided - self.longest
        for key, scope in list(self.scopes.items()):
            scope.seen = {key: at for key, at in scope.seen.items() if at >= cut}
            for track in scope.tracks.values():
                track.window.prune(self.decided - track.span)
            scope.tracks = {
                rule: track
                for rule, track in scope.tracks.items()
                if track.window.count or track.since is not None
            }
            if not scope.seen and not scope.tracks:
                del self.scopes[key]

    def state(self) -> AlertState:
        """What `restored` needs to go on from here."""
        cut, held = self.decided - self.longest, self.held
        while held and held[0][1] < cut:
            held.popleft()
        return AlertState(
            offset=self.offset,
            restore_from=held[0][0] if held else self.offset,
            decided=None if self.decided == NEVER else moment(self.decided),
            watermarks={partition: moment(at) for partition, at in self.marks.items()},
            firing=[
                Episode(track.rule.name, track.scope, moment(track.since), moment(track.last))
                for track in self.firing.values()
                if track.since is not None
            ],
        )

    @classmethod
    def restored(
        cls,
        rules: Sequence[AnyRule],
        state: AlertState | None,
        *,
        sessions: int,
        grace_s: float,
    ) -> Windows:
        """The windows as `state` left them, before `refill`: the episodes of rules that still
        exist (one whose rule is gone is dropped), the clocks and offsets."""
        windows = cls(rules, sessions=sessions, grace_s=grace_s)
        if state is None:
            return windows
        windows.offset = state.offset
        windows.decided = NEVER if state.decided is None else micros(state.decided)
        windows.marks = {partition: micros(at) for partition, at in state.watermarks.items()}
        for episode in state.firing:
            rule = windows.rules.get(episode.rule)
            if rule is None:
                continue
            track = windows._track(windows._scope(episode.scope), rule)
            track.since, track.last = micros(episode.since), micros(episode.last)
            windows.firing[track.key] = track
        return windows

    def may_decide(self, alert: Alert) -> bool:
        """Whether these windows may decide `alert` (of one of their scopes) again: it is at or
        after their decided time. A restored partition's alerts already on calls.alerts that
        may be decided again are not produced twice."""
        return micros(alert.at) >= self.decided

    def refill(self, record: SamplesRecord, offset: int) -> None:
        """Take back a sample the state already reflects (offset below `state().offset`): into
        its windows, or pending, as when it came; nothing is decided."""
        if isinstance(record, AlertWatermark):
            return
        at = micros(record.at)
        scope = self._take(record, at, offset)
        if scope is None or at > self.decided:
            return
        for rule, span in self.by_kind[record.scope.kind]:
            value = rule.sample(record)
            if value is not None and at >= self.decided - span:
                track = self._track(scope, rule)
                track.window.add(at, value)
                track.last = max(track.last, at)

    def refilled(self) -> None:
        """Once every sample from `restore_from` to the state's offset is refilled."""
        for track in self.firing.values():
            heapq.heappush(self.quiet, (track.quiet_at(), track.key))


def _iso(at: datetime) -> str:
    return msgspec.json.encode(at)[1:-1].decode()
