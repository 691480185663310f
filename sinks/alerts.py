"""The alert sink, `callstream alerts`: calls.sessions → calls.alerts, in as many instances as
wanted. Each instance runs two handlers side by side on the consumer runtime:

- `Sampler` (group `callstream-alerts`, on calls.sessions) turns each final session version into
  a sample of each of its scopes (`sinks.rules.samples`) on calls.alerts.samples, keyed by scope:
  the repartition of a group-by, so that all of a scope's samples meet in one partition
  whichever instance read them. Every `tick_interval_s` it writes to every partition of
  calls.alerts.samples a watermark: the received-time clock of each calls.sessions partition it
  owns (`foundation.runtime.Clocks`: the newest received time read there, the wall clock while
  read to its end), taken after the samples read so far were acknowledged.
- `Evaluator` (group `callstream-alerts-windows`, on calls.alerts.samples) keeps the windows of
  the partitions it owns (`sinks.windows.Windows`: samples counted in received-time order once
  every calls.sessions partition's watermark has passed them by `grace_s`) and produces their
  transitions to calls.alerts, keyed `rule:scope`, with CloudEvents headers, before the batch is
  committed. Every `tick_interval_s` each partition's state goes to calls.alerts.state (the same
  partition number, compacted).

A partition assigned to the Evaluator is restored before any of its records is handled: its
last state, then its samples read again from the state's `restore_from` (into the windows) and
from the state's offset to the group's committed one (handled as before; their alerts are on
calls.alerts already). Alerts on calls.alerts that the restored windows would give again (those
of a batch produced but not committed before a crash) are not produced twice: an alert's id is
its key, state and episode start, so the same decision has the same id, and no two decisions
share one (an episode lasts a positive time, `sinks.windows`). A restart or a rebalance
therefore neither fires an episode again nor loses one.

A session record that cannot be decoded is dead-lettered (stage `alerts`), and so is a samples
record that cannot, or that the windows cannot take (`sinks.windows.implausible`: the sink
writes none such).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime

import msgspec
import structlog
from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge

from foundation import kafka as kafka_io
from foundation.clock import SYSTEM, Clock
from foundation.errors import CallstreamError
from foundation.kafka import OutRecord
from foundation.runtime import (
    BaseHandler,
    Clocks,
    Emit,
    Handled,
    Metrics,
    Record,
    Rejected,
    Runtime,
    run_together,
)
from foundation.settings import AlertSettings, KafkaSettings
from schemas import SessionRecord, cloudevents, topics
from schemas.records import Alert, AlertState, AlertWatermark
from schemas.topics import Stage
from sinks.rules import AnyRule, load_rules, samples
from sinks.windows import NEVER, SamplesRecord, Windows, implausible

SERVICE = "alerts"
log = structlog.get_logger("callstream.alerts")
_session = msgspec.json.Decoder(SessionRecord)
_samples_record = msgspec.json.Decoder(SamplesRecord)
_state = msgspec.json.Decoder(AlertState)
_alert = msgspec.json.Decoder(Alert)
_encoder = msgspec.json.Encoder()


class AlertsError(CallstreamError):
    """The alert sink's topics do not fit together (calls.alerts.state and
    calls.alerts.samples of different partition counts)."""


class Sampler(BaseHandler[None]):
    """calls.sessions → calls.alerts.samples: samples keyed by scope, and watermarks."""

    service = SERVICE
    stage = Stage.ALERTS
    subscribe = (topics.SESSIONS,)

    def __init__(self, settings: AlertSettings, samples_partitions: int) -> None:
        self.group_id, self.max_batch = settings.group_id, settings.max_batch
        self.tick_every_s = settings.tick_interval_s
        self.samples_partitions = samples_partitions
        self.owned: set[TopicPartition] = set()

    def handle(self, record: Record) -> Handled[None]:
        try:
            session = _session.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            raise Rejected(f"not a session record: {exc}") from exc
        if not session.final:
            return Handled()
        return Handled(
            [
                (topics.ALERT_SAMPLES, OutRecord(str(s.scope).encode(), _encoder.encode(s), []))
                for s in samples(session)
            ]
        )

    async def tick(self, clocks: Clocks) -> list[Emit]:
        """A watermark of the owned calls.sessions partitions, to every samples partition."""
        marks = {tp.partition: clocks.now(tp) for tp in self.owned}
        mark = AlertWatermark(
            {partition: _time(at) for partition, at in marks.items() if at > -math.inf}
        )
        if not mark.sessions:
            return []
        value = _encoder.encode(mark)
        return [
            (topics.ALERT_SAMPLES, OutRecord(None, value, [], partition=partition))
            for partition in range(self.samples_partitions)
        ]

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.owned.update(partitions)

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        self.owned.difference_update(partitions)


class Evaluator(BaseHandler[None]):
    """calls.alerts.samples → calls.alerts: the windows of the owned partitions, each restored
    before its records are handled and dropped when it is revoked."""

    service = SERVICE
    stage = Stage.ALERTS
    subscribe = (topics.ALERT_SAMPLES,)

    def __init__(
        self,
        settings: AlertSettings,
        kafka: KafkaSettings,
        rules: Sequence[AnyRule],
        partitions: tuple[int, int],
        metrics: Metrics,
    ) -> None:
        """`partitions`: how many calls.alerts.samples and calls.sessions have."""
        self.settings, self.kafka, self.rules = settings, kafka, rules
        self.hole = metrics.hole
        self.group_id, self.max_batch = settings.windows_group_id, settings.max_batch
        self.tick_every_s = settings.tick_interval_s
        self.samples_partitions, self.sessions_partitions = partitions
        self.windows: dict[int, Windows] = {}
        self.produced: dict[int, set[str]] = {}
        """Per partition, the ids of the alerts on calls.alerts that its restored windows may
        decide again; not produced twice."""
        self.written: dict[int, int] = {}
        """Per partition, the offset of the last state written."""
        registry = metrics.registry
        transitions = Counter(
            "callstream_alerts_transitions", "Alerts produced, by state (firing, resolved).",
            ["service", "state"], registry=registry,
        )  # fmt: skip
        self.fired = transitions.labels(self.service, "firing")
        self.resolved = transitions.labels(self.service, "resolved")
        self.firing = Gauge(
            "callstream_alerts_firing", "(rule, scope)s firing now.", ["service"],
            registry=registry,
        ).labels(self.service)  # fmt: skip
        self.late = Counter(
            "callstream_alerts_late_samples",
            "Samples that came after their received time was decided, counted at once.",
            ["service"], registry=registry,
        ).labels(self.service)  # fmt: skip
        self.decided = Gauge(
            "callstream_alerts_decided_seconds",
            "Received time up to which a calls.alerts.samples partition is decided (epoch s).",
            ["service", "partition"], registry=registry,
        )  # fmt: skip

    def handle(self, record: Record) -> Handled[None]:
        windows = self.windows[record.partition]
        if record.offset < windows.offset:
            return Handled()  # reflected by the restored state already
        try:
            value = _read(record, self.sessions_partitions)
        except Rejected:
            windows.skip(record.offset)
            raise
        late = windows.late
        alerts = windows.add(value, record.offset)
        self.late.inc(windows.late - late)
        produced = self.produced.get(record.partition)
        if produced:
            alerts = [alert for alert in alerts if alert.alert_id not in produced]
        for alert in alerts:
            (self.fired if alert.state == "firing" else self.resolved).inc()
            log.info(
                f"alert_{alert.state}", rule=alert.rule, scope=str(alert.scope),
                value=alert.value, threshold=alert.threshold, at=alert.at.isoformat(),
            )  # fmt: skip
        return Handled([(topics.ALERTS, _out(alert)) for alert in alerts])

    def flush(self) -> list[Emit]:
        self._gauges()
        return []

    async def tick(self, clocks: Clocks) -> list[Emit]:
        """The state of each partition that moved since its last one was written."""
        del clocks  # the windows run on the watermarks in their partition
        emits: list[Emit] = []
        for partition, windows in self.windows.items():
            if self.written.get(partition) == windows.offset:
                continue
            self.written[partition] = windows.offset
            state = _encoder.encode(windows.state())
            record = OutRecord(str(partition).encode(), state, [], partition=partition)
            emits.append((topics.ALERT_STATE, record))
        return emits

    def _gauges(self) -> None:
        for partition, windows in self.windows.items():
            decided = -math.inf if windows.decided == NEVER else windows.decided / 1e6
            self.decided.labels(self.service, str(partition)).set(decided)
        self.firing.set(sum(len(windows.firing) for windows in self.windows.values()))

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            if self.windows.pop(tp.partition, None) is not None:
                self.decided.remove(self.service, str(tp.partition))
            self.produced.pop(tp.partition, None)
            self.written.pop(tp.partition, None)

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        numbers = sorted(tp.partition for tp in partitions if tp.partition not in self.windows)
        if not numbers:
            return
        started = time.monotonic()
        restored = await self._restore(numbers)
        produced = await self._produced(restored)
        for partition, windows in restored.items():
            self.windows[partition] = windows
            self.written[partition] = windows.offset
            self.produced[partition] = produced.get(partition, set())
        self._gauges()
        log.info(
            "alert_windows_restored", partitions=numbers,
            firing=sum(len(w.firing) for w in restored.values()),
            pending=sum(len(w.pending) for w in restored.values()),
            seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip

    async def _restore(self, numbers: list[int]) -> dict[int, Windows]:
        """Each partition's windows: its last state, then its samples from the state's
        `restore_from` to its offset (refilled), then to the committed offset (handled)."""
        states = await self._states(numbers)
        samples_topic = self.kafka.topic(topics.ALERT_SAMPLES)
        tps = {p: TopicPartition(samples_topic, p) for p in numbers}
        committed = await kafka_io.committed(self.kafka, self.group_id, tps.values())
        restored = {
            p: Windows.restored(
                self.rules, states.get(p), sessions=self.sessions_partitions,
                grace_s=self.settings.grace_s,
            )
            for p in numbers
        }  # fmt: skip
        refill = {
            p: (state.restore_from, state.offset)
            for p, state in states.items()
            if state.restore_from < state.offset
        }
        async for batch in self._samples(refill):
            for record, value in _decoded(batch, self.sessions_partitions):
                restored[record.partition].refill(value, record.offset)
        for windows in restored.values():
            windows.refilled()
        again = {
            p: (windows.offset, done)
            for p, windows in restored.items()
            if (done := committed[tps[p]]) is not None and windows.offset < done
        }
        async for batch in self._samples(again):
            for record, value in _decoded(batch, self.sessions_partitions):
                restored[record.partition].add(value, record.offset)
        return restored

    def _samples(self, ranges: dict[int, tuple[int, int]]) -> AsyncIterator[list[Record]]:
        """The samples of each partition from its range's start offset to before its end."""
        scan = kafka_io.TopicScan(
            self.kafka, topics.ALERT_SAMPLES,
            starts={p: start for p, (start, _) in ranges.items()},
            ends={p: end for p, (_, end) in ranges.items()},
            max_records=None, stall_s=None, counted=self.hole,
        )  # fmt: skip
        return scan.batches()

    async def _states(self, numbers: list[int]) -> dict[int, AlertState]:
        """The last state written of each partition, read from its partition's last record (the
        only key there), whatever the length of the topic's history. One that cannot be read is
        logged and skipped; a partition left with none is restored from its samples alone."""
        states: dict[int, AlertState] = {}
        scan = kafka_io.TopicScan(
            self.kafka, topics.ALERT_STATE, starts=dict.fromkeys(numbers, kafka_io.LAST),
            max_records=None, stall_s=None, counted=self.hole,
        )  # fmt: skip
        async for batch in scan.batches():
            for record in batch:
                try:
                    states[record.partition] = _state.decode(record.value or b"")
                except msgspec.DecodeError as exc:
                    log.error(
                        "alert_state_unreadable", partition=record.partition,
                        offset=record.offset, error=str(exc),
                    )  # fmt: skip
        return states

    async def _produced(self, restored: dict[int, Windows]) -> dict[int, set[str]]:
        """Per restored partition, the ids of the alerts of its scopes on calls.alerts from its
        decided time on: the only ones its windows can decide again."""
        produced: dict[int, set[str]] = {}
        partitions = range(self.samples_partitions)
        scan = kafka_io.TopicScan(self.kafka, topics.ALERTS, counted=self.hole)
        async for batch in scan.batches():  # streamed: the topic's length costs time, not memory
            for record in batch:
                try:
                    alert = _alert.decode(record.value or b"")
                except msgspec.DecodeError:
                    continue  # not an alert: nothing to produce again
                partition = kafka_io.partition_for(str(alert.scope).encode(), partitions)
                windows = restored.get(partition)
                if windows is not None and windows.may_decide(alert):
                    produced.setdefault(partition, set()).add(alert.alert_id)
        return produced


async def serve(
    settings: AlertSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
    clock: Clock = SYSTEM,
) -> None:
    """Run both stages of the alert sink until `stop` is set; `clock` is the wall clock of the
    calls.sessions clocks (tests: a ManualClock).

    Raises SettingsError (naming the file and the key) for a bad rules file, before touching
    Kafka, and AlertsError when calls.alerts.state and calls.alerts.samples differ in partition
    count.
    """
    rules = load_rules(settings.rules)
    metrics = metrics or Metrics(SERVICE)
    await kafka_io.ensure_topics(kafka)
    partitions = await _partitions(kafka)
    log.info("alerts_rules", rules=[rule.name for rule in rules])
    sampler = Runtime(
        Sampler(settings, partitions[0]), kafka, metrics=metrics,
        wall=lambda: clock.now().timestamp(),
    )  # fmt: skip
    evaluator = Runtime(
        Evaluator(settings, kafka, rules, partitions, metrics), kafka,
        metrics_port=settings.metrics_port, metrics=metrics,
    )  # fmt: skip
    await run_together(stop, sampler, evaluator)


async def _partitions(kafka: KafkaSettings) -> tuple[int, int]:
    """How many partitions calls.alerts.samples and calls.sessions have."""
    async with kafka_io.producer(kafka) as producer:
        samples_count, state_count, sessions_count = [
            len(await producer.partitions_for(kafka.topic(topic)))
            for topic in (topics.ALERT_SAMPLES, topics.ALERT_STATE, topics.SESSIONS)
        ]
    if samples_count != state_count:
        raise AlertsError(
            f"{topics.ALERT_SAMPLES} has {samples_count} partitions and {topics.ALERT_STATE} "
            f"{state_count}: the state of samples partition p is kept in partition p, so both "
            "topics need the same partition count"
        )
    return samples_count, sessions_count


def _read(record: Record, sessions: int) -> SamplesRecord:
    """The samples record `record` holds; raises Rejected if it holds none the windows take."""
    try:
        value = _samples_record.decode(record.value or b"")
    except msgspec.DecodeError as exc:
        raise Rejected(f"not an alert sample or watermark: {exc}") from exc
    if (reason := implausible(value, sessions)) is not None:
        raise Rejected(f"an alert sample or watermark the windows cannot take: {reason}")
    return value


def _decoded(records: list[Record], sessions: int) -> list[tuple[Record, SamplesRecord]]:
    """The records the windows take (the others were dead-lettered when they were handled)."""
    decoded = []
    for record in records:
        try:
            decoded.append((record, _read(record, sessions)))
        except Rejected:
            continue
    return decoded


def _time(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _out(alert: Alert) -> OutRecord:
    return OutRecord(
        alert.key.encode(),
        _encoder.encode(alert),
        cloudevents.headers(alert.alert_id, "alerts", cloudevents.ALERT_TYPE, alert.at),
    )
