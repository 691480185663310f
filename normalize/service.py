"""The normalizer service: calls.raw → calls.events, and what cannot be normalized → calls.dlq.

A handler on the consumer runtime (`foundation.runtime`), which owns the loop, acknowledgements,
commits and the error policy: each raw record becomes its canonical events, keyed by session; a
record whose headers or body cannot be read is rejected with the reason, in callstream's words.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import structlog

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import BaseHandler, Handled, Metrics, Record, Rejected, Runtime
from foundation.settings import KafkaSettings, NormalizerSettings
from normalize import NormalizeError, normalize
from schemas import RawRef, cloudevents, topics
from schemas.raw import HeadersError, raw_meta
from schemas.topics import Stage

_encoder = msgspec.json.Encoder()
log = structlog.get_logger("callstream.normalizer")


class Normalizer(BaseHandler[None]):
    service = "normalizer"
    stage = Stage.NORMALIZE
    subscribe = (topics.RAW,)

    def __init__(self, settings: NormalizerSettings) -> None:
        self.group_id, self.max_batch = settings.group_id, settings.max_batch

    def handle(self, record: Record) -> Handled[None]:
        return Handled([(topics.EVENTS, event) for event in events_of(record)])


async def serve(
    settings: NormalizerSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
) -> None:
    """Normalize calls.raw as consumer group `settings.group_id` until `stop` is set."""
    runtime = Runtime(
        Normalizer(settings), kafka, metrics_port=settings.metrics_port, metrics=metrics
    )
    await runtime.run(stop)


def events_of(record: Record) -> list[OutRecord]:
    """The canonical events of one raw record, ready for calls.events; raises Rejected for a
    record that cannot be normalized. Each event carries the raw record's cs-received-at header
    as it is, after its CloudEvents headers."""
    try:
        found = dict(record.headers)
        meta = raw_meta(found)
        events = normalize(
            meta.provider,
            record.value or b"",
            received_at=meta.received_at,
            context=meta.context,
            raw=RawRef(record.topic, record.partition, record.offset),
        )
    except (HeadersError, NormalizeError) as exc:
        raise Rejected(str(exc)) from exc
    received = (topics.RECEIVED_AT, found[topics.RECEIVED_AT])
    out = []
    for event in events:
        headers = cloudevents.headers(
            event.event_id, event.provider, cloudevents.EVENT_TYPE, event.occurred_at
        )
        headers.append(received)
        out.append(OutRecord(event.session_key.encode(), _encoder.encode(event), headers))
    return out


def route(
    records: Iterable[Record], stage: Stage = Stage.NORMALIZE
) -> tuple[list[OutRecord], list[OutRecord]]:
    """Each raw record's events, or the record as a dead letter of `stage` with its reason: the
    normalizer's work for the one-shot jobs that read raw records themselves (`replay`,
    `dlq redrive`). A record that makes normalizing raise anything else is a bug: it is
    dead-lettered too, its reason starting with `unexpected`."""
    events: list[OutRecord] = []
    dead: list[OutRecord] = []
    for record in records:
        try:
            events.extend(events_of(record))
        except Rejected as exc:
            dead.append(kafka_io.dead_letter(record, stage, str(exc)))
        except Exception as exc:
            log.exception("normalize_crashed", offset=record.offset, partition=record.partition)
            dead.append(
                kafka_io.dead_letter(record, stage, f"unexpected {type(exc).__name__}: {exc}")
            )
    return events, dead
