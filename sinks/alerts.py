"""The alert sink: calls.sessions (and calls.events, for destination countries) → calls.alerts.

A thin loop around `sinks.rules.Evaluator`. Each fetched batch is read (its events first, so
their countries are known when their sessions come; its sessions in event-time order), each
alert transition is produced to calls.alerts keyed `rule:scope` with CloudEvents headers, and
the batch's offsets are committed only after those are acknowledged. A session record that
cannot be decoded goes to calls.dlq (stage `alerts`); an undecodable event is only skipped, the
aggregator dead-letters it already.

Windows are per provider, so one instance must see every partition: run one (the consumer group
gives failover and offsets, not scale-out). On start the latest alert of each key is read back
from calls.alerts, so an episode already firing is not fired again; the windows themselves start
empty and refill from the committed offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from callstream import cloudevents, topics
from callstream import kafka as kafka_io
from callstream.kafka import OutRecord
from callstream.service import serve_metrics
from callstream.settings import AlertSettings, KafkaSettings
from schemas import SessionRecord
from sinks.rules import Alert, Countries, Evaluator, load_rules

STAGE = "alerts"
POLL_MS = 200
"""How long one fetch waits for records, so also how soon an idle service notices `stop`."""

log = structlog.get_logger("callstream.alerts")
_session = msgspec.json.Decoder(SessionRecord)
_alert = msgspec.json.Decoder(Alert)
_encoder = msgspec.json.Encoder()

Record = ConsumerRecord[bytes, bytes]
Batch = dict[TopicPartition, list[Record]]


class _EventView(msgspec.Struct, frozen=True):
    """The part of a call event the sink needs: which session and leg, and its country."""

    session_key: str
    leg: str | None = None
    to_country: str | None = None


_event = msgspec.json.Decoder(_EventView)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.evaluated = Counter(
            "alerts_evaluated_sessions",
            "Session records of calls.sessions read and evaluated.",
            registry=self.registry,
        )
        self.fired = Counter(
            "alerts_fired", "Firing alerts acknowledged on calls.alerts.", registry=self.registry
        )
        self.resolved = Counter(
            "alerts_resolved",
            "Resolved alerts acknowledged on calls.alerts.",
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "alerts_dead_lettered_records",
            "Session records that cannot be decoded, acknowledged on calls.dlq.",
            registry=self.registry,
        )
        self.firing = Gauge("alerts_firing", "(rule, scope)s firing now.", registry=self.registry)


async def serve(
    settings: AlertSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Evaluate calls.sessions as consumer group `settings.group_id` until `stop` is set.

    Raises SettingsError (naming the file and the key) for a bad rules file, before touching
    Kafka. On `stop` the batch in hand is produced and committed, then the consumer leaves the
    group. If the producer cannot deliver, this raises and commits nothing of that batch.
    """
    rules = load_rules(settings.rules)
    metrics = metrics or Metrics()
    await kafka_io.ensure_topics(kafka)
    evaluator = Evaluator(rules, await _latest_alerts(kafka))
    metrics.firing.set(len(evaluator.firing))
    serve_metrics(settings.metrics_port, metrics.registry)
    async with (
        kafka_io.producer(kafka) as producer,
        kafka_io.consumer(
            kafka, topics.SESSIONS, topics.EVENTS, group_id=settings.group_id
        ) as consumer,
    ):  # the consumer stops first, leaving the group
        log.info("alerts_started", rules=[rule.name for rule in rules])
        countries = Countries()
        while not stop.is_set():
            batch: Batch = await consumer.getmany(
                timeout_ms=POLL_MS, max_records=settings.max_batch
            )
            if batch:
                await _process(
                    consumer,
                    producer,
                    batch,
                    evaluator=evaluator,
                    countries=countries,
                    metrics=metrics,
                )
        log.info("alerts_stopped")


async def _latest_alerts(kafka: KafkaSettings) -> list[Alert]:
    """The last alert of each key on calls.alerts (a key's records share a partition)."""
    latest: dict[str, Alert] = {}
    for record in await kafka_io.read_all(kafka, topics.ALERTS):
        try:
            alert = _alert.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            log.error(
                "alert_record_unreadable",
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            continue
        latest[alert.key] = alert
    return list(latest.values())


async def _process(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    batch: Batch,
    *,
    evaluator: Evaluator,
    countries: Countries,
    metrics: Metrics,
) -> None:
    """Evaluate, produce the transitions and dead letters, await every ack, then commit."""
    records = [record for part in batch.values() for record in part]
    for record in records:
        if record.topic == topics.EVENTS:
            _note_country(countries, record)
    sessions, dead = _decode_sessions(r for r in records if r.topic == topics.SESSIONS)
    alerts = [
        alert
        for session in sorted(sessions, key=lambda session: session.updated_at)
        for alert in evaluator.feed(session, countries.of(session))
    ]
    await asyncio.gather(
        kafka_io.send_all(producer, topics.ALERTS, map(_out, alerts)),
        kafka_io.send_all(producer, topics.DLQ, dead),
    )
    await kafka_io.commit(consumer, {tp: part[-1].offset + 1 for tp, part in batch.items()})
    metrics.evaluated.inc(len(sessions))
    metrics.dead_lettered.inc(len(dead))
    fired = sum(alert.state == "firing" for alert in alerts)
    metrics.fired.inc(fired)
    metrics.resolved.inc(len(alerts) - fired)
    metrics.firing.set(len(evaluator.firing))
    if alerts:
        log.info("alerts_produced", fired=fired, resolved=len(alerts) - fired)


def _note_country(countries: Countries, record: Record) -> None:
    try:
        event = _event.decode(record.value or b"")
    except msgspec.DecodeError:
        return  # not a call event: the aggregator dead-letters it
    countries.note(event.session_key, event.leg, event.to_country)


def _decode_sessions(records: Iterable[Record]) -> tuple[list[SessionRecord], list[OutRecord]]:
    sessions: list[SessionRecord] = []
    dead: list[OutRecord] = []
    for record in records:
        try:
            sessions.append(_session.decode(record.value or b""))
        except msgspec.DecodeError as exc:
            dead.append(kafka_io.dead_letter(record, STAGE, f"not a session record: {exc}"))
    return sessions, dead


def _out(alert: Alert) -> OutRecord:
    return OutRecord(
        alert.key.encode(),
        _encoder.encode(alert),
        cloudevents.headers(alert.alert_id, "alerts", cloudevents.ALERT_TYPE, alert.at),
    )
