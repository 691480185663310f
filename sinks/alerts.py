"""The alert sink: calls.sessions (and calls.events, for destination countries) → calls.alerts.

A handler on the consumer runtime (`foundation.runtime`) around `sinks.rules.Evaluator`. Each
batch is handled events first (so their countries are known when their sessions come) and its
sessions in the order they were received; each alert transition is produced to calls.alerts keyed
`rule:scope` with CloudEvents headers, before the batch is committed. A session record that
cannot be decoded is dead-lettered (stage `alerts`); an undecodable event is only skipped, the
aggregator dead-letters it already.

Windows are per provider, so one instance must see every partition: run one (the consumer group
gives failover and offsets, not scale-out). On start the latest alert of each key is read back
from calls.alerts, so an episode already firing is not fired again; the windows themselves start
empty and refill from the committed offsets.
"""

from __future__ import annotations

import asyncio
import math

import msgspec
import structlog
from prometheus_client import Counter, Gauge

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import BaseHandler, Handled, Metrics, Record, Rejected, Runtime
from foundation.settings import AlertSettings, KafkaSettings
from schemas import SessionRecord, cloudevents, topics
from schemas.raw import received_at_of
from schemas.records import Alert
from schemas.topics import Stage
from sinks.rules import Countries, Evaluator, load_rules

log = structlog.get_logger("callstream.alerts")
_session = msgspec.json.Decoder(SessionRecord)
_alert = msgspec.json.Decoder(Alert)
_encoder = msgspec.json.Encoder()


def _received_at(record: Record) -> float:
    received = received_at_of(record.headers)
    return received.timestamp() if received is not None else -math.inf


class _EventView(msgspec.Struct, frozen=True):
    """The part of a call event the sink needs: which session and leg, and its country."""

    session_key: str
    leg: str | None = None
    to_country: str | None = None


_event = msgspec.json.Decoder(_EventView)


class Alerts(BaseHandler[None]):
    service = "alerts"
    stage = Stage.ALERTS
    subscribe = (topics.SESSIONS, topics.EVENTS)

    def __init__(
        self,
        settings: AlertSettings,
        kafka: KafkaSettings,
        evaluator: Evaluator,
        metrics: Metrics,
    ) -> None:
        self.group_id, self.max_batch = settings.group_id, settings.max_batch
        self.events_topic = kafka.topic(topics.EVENTS)
        self.evaluator, self.countries = evaluator, Countries()
        transitions = Counter(
            "callstream_alerts_transitions", "Alerts produced, by state (firing, resolved).",
            ["service", "state"], registry=metrics.registry,
        )  # fmt: skip
        self.fired = transitions.labels(self.service, "firing")
        self.resolved = transitions.labels(self.service, "resolved")
        self.firing = Gauge(
            "callstream_alerts_firing", "(rule, scope)s firing now.", ["service"],
            registry=metrics.registry,
        ).labels(self.service)  # fmt: skip
        self.firing.set(len(evaluator.firing))

    def arrange(self, records: list[Record]) -> list[Record]:
        """Events first, so their countries are known when their sessions come; sessions in
        the order they were received."""
        events = [r for r in records if r.topic == self.events_topic]
        sessions = [r for r in records if r.topic != self.events_topic]
        return events + sorted(sessions, key=_received_at)

    def handle(self, record: Record) -> Handled[None]:
        if record.topic == self.events_topic:
            _note_country(self.countries, record)
            return Handled()
        try:
            session = _session.decode(record.value or b"")
        except msgspec.DecodeError as exc:
            raise Rejected(f"not a session record: {exc}") from exc
        alerts = self.evaluator.feed(session, self.countries.of(session))
        for alert in alerts:
            (self.fired if alert.state == "firing" else self.resolved).inc()
            log.info(
                f"alert_{alert.state}", rule=alert.rule, scope=str(alert.scope),
                value=alert.value, threshold=alert.threshold,
            )  # fmt: skip
        self.firing.set(len(self.evaluator.firing))
        return Handled([(topics.ALERTS, _out(alert)) for alert in alerts])


async def serve(
    settings: AlertSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Evaluate calls.sessions as consumer group `settings.group_id` until `stop` is set.

    Raises SettingsError (naming the file and the key) for a bad rules file, before touching
    Kafka.
    """
    rules = load_rules(settings.rules)
    metrics = metrics or Metrics(Alerts.service)
    await kafka_io.ensure_topics(kafka)
    evaluator = Evaluator(rules, await _latest_alerts(kafka))
    log.info("alerts_rules", rules=[rule.name for rule in rules])
    handler = Alerts(settings, kafka, evaluator, metrics)
    await Runtime(handler, kafka, metrics_port=settings.metrics_port, metrics=metrics).run(stop)


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


def _note_country(countries: Countries, record: Record) -> None:
    try:
        event = _event.decode(record.value or b"")
    except msgspec.DecodeError:
        return  # not a call event: the aggregator dead-letters it
    countries.note(event.session_key, event.leg, event.to_country)


def _out(alert: Alert) -> OutRecord:
    return OutRecord(
        alert.key.encode(),
        _encoder.encode(alert),
        cloudevents.headers(alert.alert_id, "alerts", cloudevents.ALERT_TYPE, alert.at),
    )
