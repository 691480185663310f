"""`callstream status` and `callstream alerts list`: is every service keeping up, and what is
wrong. Read from the broker (topics, consumer groups, dead letters, alerts) and, where given,
the store; one object for `--json`, tables for people.

What the broker does not say is reported as such in `notes`, never guessed: the embedded broker
answers an OffsetFetch for all of a group's partitions with a malformed response (so the
partitions are always named), reports no member assignments or subscriptions (so a group's
topics are those it committed on, or the ones callstream's services consume), and answers
ListOffsets(latest) with the start of a partition's last batch (so end offsets are the
highwater marks of a fetch, which every broker reports right).

With KAFKA__TOPIC_PREFIX set, status looks at that environment only: its topics and the groups
whose names start with the prefix; names are shown as the cluster knows them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
)
from aiokafka.errors import KafkaError

from callstream import dlq
from callstream.reports import table
from foundation import kafka as kafka_io
from foundation.errors import Unavailable
from foundation.settings import (
    AggregatorSettings,
    AlertSettings,
    KafkaSettings,
    MobileAgentPollSettings,
    NormalizerSettings,
    StoreSettings,
    VpbxPollSettings,
)
from schemas import topics
from schemas.records import Alert
from sinks.stores import open_existing, redacted

WIDTH = 100
"""Tables fit a terminal this wide."""
KNOWN_GROUPS: dict[str, tuple[str, ...]] = {
    NormalizerSettings().group_id: (topics.RAW,),
    AggregatorSettings().group_id: (topics.EVENTS,),
    StoreSettings().group_id: (topics.EVENTS, topics.SESSIONS),
    AlertSettings().group_id: (topics.SESSIONS,),
    AlertSettings().windows_group_id: (topics.ALERT_SAMPLES,),
    VpbxPollSettings().group_id: (topics.CHECKPOINTS,),
    MobileAgentPollSettings().group_id: (topics.TRACK,),
}
"""The topics of callstream's own groups (default group ids), for brokers that do not say;
unprefixed (see `_known`)."""
NOT_COMMITTING = frozenset({VpbxPollSettings().group_id, MobileAgentPollSettings().group_id})
"""Groups that re-read their partitions on assignment and commit nothing: no lag to show;
unprefixed."""


class TopicState(msgspec.Struct, kw_only=True):
    topic: str
    partitions: int
    records: int | None
    """End minus start offsets: the records it holds (at most, for a compacted topic)."""
    end_offsets: dict[str, int | None]
    """Partition → end offset (highwater); None where the broker did not say."""


class PartitionLag(msgspec.Struct, kw_only=True):
    topic: str
    partition: int
    committed: int | None
    """The group's committed offset; None where it has committed nothing."""
    end: int | None
    lag: int | None
    """end minus committed (or minus the partition's start, when nothing is committed)."""


class Member(msgspec.Struct, kw_only=True):
    id: str
    client: str | None
    host: str | None
    partitions: list[str] | None
    """Assigned `topic/partition`s; None where the broker does not report assignments."""


class GroupState(msgspec.Struct, kw_only=True):
    group: str
    commits: bool
    """False for the pollers' groups, which re-read their partitions and commit nothing."""
    state: str | None
    members: list[Member]
    topics: list[str]
    lag: int | None
    """Records not yet committed, over every partition; None where not known."""
    partitions: list[PartitionLag]


class StoreRows(msgspec.Struct, kw_only=True, omit_defaults=True):
    url: str
    events: int | None = None
    sessions: int | None = None
    error: str | None = None


class Status(msgspec.Struct, kw_only=True):
    kafka: str
    topic_prefix: str
    """KAFKA__TOPIC_PREFIX: the environment looked at (empty: the whole cluster)."""
    topics: list[TopicState]
    groups: list[GroupState]
    dlq: dict[str, int]
    """Dead letters by stage, those already redriven left out (as `dlq list` does)."""
    alerts: list[Alert]
    """Firing alerts: the latest transition of each key, where it is `firing`."""
    store: StoreRows | None
    notes: list[str]
    """What the broker did not answer, and so is missing above."""


async def collect(kafka: KafkaSettings, store_url: str | None = None) -> Status:
    """Everything `callstream status` shows. Raises BrokerUnreachable when the broker does
    not answer; a part it answers wrongly is left out and named in `notes`."""
    notes: list[str] = []
    async with kafka_io.consumer(
        kafka, group_id=None, fetch_max_wait_ms=50, max_partition_fetch_bytes=1
    ) as consumer:
        await consumer.topics()
        present = [
            TopicPartition(topic, partition)
            for topic in map(kafka.topic, topics.ALL)
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await _highwaters(consumer, present, kafka.request_timeout_ms / 1000)
        starts = await consumer.beginning_offsets(present) if present else {}
    if any(end is None for end in ends.values()):
        notes.append("end offsets: the broker did not report some within the request timeout")
    groups = await _groups(kafka, present, ends, starts, notes)
    letters = Counter([letter.stage async for letter in dlq.letters(kafka)])
    firing = [alert for alert in await latest_alerts(kafka) if alert.state == "firing"]
    return Status(
        kafka=kafka.bootstrap,
        topic_prefix=kafka.topic_prefix,
        topics=_topics(kafka, present, starts, ends),
        groups=groups,
        dlq=dict(sorted(letters.items())),
        alerts=sorted(firing, key=lambda alert: alert.since),
        store=None if store_url is None else await _store_rows(store_url),
        notes=notes,
    )


async def _highwaters(
    consumer: kafka_io.Consumer, partitions: list[TopicPartition], within_s: float
) -> dict[TopicPartition, int | None]:
    """The highwater mark of each partition, from a fetch near its end."""
    if not partitions:
        return {}
    consumer.assign(partitions)
    near_end = await consumer.end_offsets(partitions)  # exact, or the start of the last batch
    for tp in partitions:
        consumer.seek(tp, near_end[tp])
    deadline = time.monotonic() + within_s
    while any(consumer.highwater(tp) is None for tp in partitions):
        if time.monotonic() > deadline:
            break
        await consumer.getmany(timeout_ms=100, max_records=1)
    return {tp: consumer.highwater(tp) for tp in partitions}


def _topics(
    kafka: KafkaSettings,
    partitions: list[TopicPartition],
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int | None],
) -> list[TopicState]:
    found = []
    for topic in map(kafka.topic, topics.ALL):
        mine = [tp for tp in partitions if tp.topic == topic]
        if not mine:
            continue
        known = [tp for tp in mine if ends[tp] is not None]
        records = sum((ends[tp] or 0) - starts.get(tp, 0) for tp in known)
        found.append(
            TopicState(
                topic=topic,
                partitions=len(mine),
                records=records if len(known) == len(mine) else None,
                end_offsets={str(tp.partition): ends[tp] for tp in mine},
            )
        )
    return found


async def _groups(
    kafka: KafkaSettings,
    partitions: list[TopicPartition],
    ends: dict[TopicPartition, int | None],
    starts: dict[TopicPartition, int],
    notes: list[str],
) -> list[GroupState]:
    admin = kafka_io.admin(kafka)
    await admin.start()
    try:
        try:
            listed = {
                group
                for group, _ in await admin.list_consumer_groups()
                if group.startswith(kafka.topic_prefix)
            }
        except KafkaError as exc:
            notes.append(f"consumer groups: the broker did not list them ({exc})")
            listed = set()
        known = _known(kafka)
        groups = []
        for group in sorted(listed | set(known)):
            state, members = await _describe(admin, group, notes)
            if group not in listed and not members:
                continue  # callstream's, not running (or on a broker that lists it anyway)
            committed = await _committed(admin, group, partitions, notes)
            commits = group not in map(kafka.group, NOT_COMMITTING)
            groups.append(
                _group(group, state, members, committed, ends, starts,
                       known=known.get(group, ()), commits=commits)
            )  # fmt: skip
    finally:
        await admin.close()
    if groups and all(m.partitions is None for g in groups for m in g.members):
        notes.append(
            "members' assignments: not reported by this broker (the embedded one reports none)"
        )
    return groups


async def _describe(
    admin: kafka_io.Admin, group: str, notes: list[str]
) -> tuple[str | None, list[Member]]:
    """A group's state and members. One group a request: the embedded broker answers a request
    for several with a malformed response."""
    try:
        with _quiet_aiokafka():
            responses = await admin.describe_consumer_groups([group])
    except KafkaError as exc:
        notes.append(f"group {group}: the broker did not describe it ({exc})")
        return None, []
    for response in responses:
        for error_code, name, state, _, _, members, *_ in response.groups:
            if name != group:
                continue
            if error_code:
                notes.append(f"group {group}: the broker answered error {error_code}")
                return None, []
            return state or None, [_member(*member) for member in members]
    return None, []


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs a traceback for a response it cannot decode, then fails the request:
    the failure is reported in `notes`, once, instead."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _member(
    member_id: str, client_id: str, client_host: str, metadata: bytes, assignment: bytes
) -> Member:
    del metadata  # the subscription: the committed offsets say more
    assigned = None
    if assignment:
        try:
            decoded = ConsumerProtocolMemberAssignment.decode(assignment)
            assigned = [f"{tp.topic}/{tp.partition}" for tp in decoded.partitions()]
        except (ValueError, TypeError):  # not the consumer protocol's
            assigned = None
    return Member(
        id=member_id, client=client_id or None, host=client_host or None, partitions=assigned
    )


async def _committed(
    admin: kafka_io.Admin, group: str, partitions: list[TopicPartition], notes: list[str]
) -> dict[TopicPartition, int] | None:
    """The group's committed offsets on callstream's topics (named: see the module doc)."""
    if not partitions:
        return {}
    try:
        with _quiet_aiokafka():
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    except KafkaError as exc:
        notes.append(f"group {group}: the broker did not give its committed offsets ({exc})")
        return None
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def _known(kafka: KafkaSettings) -> dict[str, tuple[str, ...]]:
    """KNOWN_GROUPS as the cluster names the groups and their topics."""
    return {
        kafka.group(group): tuple(map(kafka.topic, names)) for group, names in KNOWN_GROUPS.items()
    }


def _group(  # noqa: PLR0917 - one call site, in the order of the columns
    group: str,
    state: str | None,
    members: list[Member],
    committed: dict[TopicPartition, int] | None,
    ends: dict[TopicPartition, int | None],
    starts: dict[TopicPartition, int],
    *,
    known: tuple[str, ...],
    commits: bool,
) -> GroupState:
    assigned = {p.split("/")[0] for m in members for p in m.partitions or ()}
    names = {tp.topic for tp in committed or ()} | assigned | set(known)
    lags = []
    if committed is not None and commits:
        for tp in sorted(ends, key=lambda tp: (tp.topic, tp.partition)):
            if tp.topic not in names:
                continue
            end, done = ends[tp], committed.get(tp)
            lag = None if end is None else end - (starts.get(tp, 0) if done is None else done)
            lags.append(
                PartitionLag(topic=tp.topic, partition=tp.partition, committed=done, end=end,
                             lag=lag)
            )  # fmt: skip
    known = [p.lag for p in lags if p.lag is not None]
    return GroupState(
        group=group,
        commits=commits,
        state=state,
        members=members,
        topics=sorted(names),
        lag=sum(known) if lags and len(known) == len(lags) else None,
        partitions=lags,
    )


async def latest_alerts(kafka: KafkaSettings) -> list[Alert]:
    """The latest transition of every (rule, scope) on calls.alerts (records that are not
    `alert/1` are skipped)."""
    latest: dict[str, Alert] = {}
    async for batch in kafka_io.TopicScan(kafka, topics.ALERTS).batches():  # memory: the keys
        for record in batch:
            try:
                alert = msgspec.json.decode(record.value or b"", type=Alert)
            except msgspec.DecodeError:  # ValidationError included
                continue
            seen = latest.get(alert.key)
            if seen is None or alert.at >= seen.at:
                latest[alert.key] = alert
    return list(latest.values())


async def _store_rows(url: str) -> StoreRows:
    shown = redacted(url)
    try:
        store = await open_existing(url)
    except Unavailable as exc:
        return StoreRows(url=shown, error=str(exc))
    try:
        (events,), (sessions,) = [
            (await store.fetch(f"SELECT count(*) FROM {name}", []))[0]  # noqa: S608 - ours
            for name in ("call_events", "call_sessions")
        ]
    finally:
        await store.close()
    return StoreRows(url=shown, events=events, sessions=sessions)


def render(status: Status) -> str:
    """Tables for a terminal WIDTH columns wide."""
    prefix = status.topic_prefix
    parts = [f"kafka {status.kafka}" + (f", topic prefix {prefix}" if prefix else "")]
    parts.append(
        table(
            ("topic", "partitions", "records", "end offsets by partition"),
            [
                [t.topic, t.partitions, t.records,
                 _cut(" ".join("?" if e is None else str(e) for e in t.end_offsets.values()), 48)]
                for t in status.topics
            ],
        )
    )  # fmt: skip
    parts.append(
        table(
            ("group", "state", "members", "lag", "behind (topic/partition=lag)"),
            [
                [g.group, g.state, len(g.members), g.lag, _cut(_behind(g, prefix), 36)]
                for g in status.groups
            ],
        )
    )
    parts.append(table(("dead letters by stage", "letters"), sorted(status.dlq.items())))
    parts.append(render_alerts(status.alerts, title="firing alert"))
    if status.store is not None:
        store = status.store
        rows = store.error or f"{store.events} events, {store.sessions} sessions"
        parts.append(f"store {store.url}\n  {rows}")
    parts.extend(f"note: {note}" for note in status.notes)
    return "\n\n".join(parts)


def _behind(group: GroupState, prefix: str) -> str:
    if not group.commits:
        return "(commits nothing by design)"
    if not group.partitions:
        return "-"
    behind = [p for p in group.partitions if p.lag != 0]
    if not behind:
        return "all caught up"
    return " ".join(
        f"{_short(p.topic, prefix)}/{p.partition}={'?' if p.lag is None else p.lag}" for p in behind
    )


def _short(topic: str, prefix: str) -> str:
    """`staging.calls.raw` → `raw` (with prefix `staging.`)."""
    return topic.removeprefix(prefix).removeprefix("calls.")


def render_alerts(
    alerts: Sequence[Alert], *, title: str = "alert", now: datetime | None = None
) -> str:
    """One line per alert: rule, state, scope, value, threshold, since when it fires (or
    fired) and when it last changed, as ages."""
    now = now or datetime.now(UTC)
    return table(
        (title, "state", "scope", "value", "threshold", "since", "changed"),
        [
            [a.rule, a.state, _cut(_scope(a), 30), _number(a.value), _number(a.threshold),
             _ago(now - a.since), _ago(now - a.at)]
            for a in alerts
        ],
    )  # fmt: skip


def _scope(alert: Alert) -> str:
    """provider[/account][/country]: `wavecell/account_3`, `vpbx/ID`."""
    scope = alert.scope
    return "/".join(part for part in (scope.provider, scope.account, scope.country) if part)


def _ago(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def recent(alerts: Iterable[Alert], within: timedelta, now: datetime | None = None) -> list[Alert]:
    """Firing alerts, then those resolved within `within`, each group newest first."""
    cutoff = (now or datetime.now(UTC)) - within
    firing = [a for a in alerts if a.state == "firing"]
    resolved = [a for a in alerts if a.state == "resolved" and a.at >= cutoff]
    return sorted(firing, key=lambda a: a.since, reverse=True) + sorted(
        resolved, key=lambda a: a.at, reverse=True
    )


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if value == int(value) else f"{value:.3g}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
