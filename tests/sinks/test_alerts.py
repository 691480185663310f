"""The alert sink against the real broker: one episode, one firing and one resolved."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from helpers import eventually
from sink_helpers import make_session

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import AlertSettings, KafkaSettings
from normalize.aggregator import session_record
from schemas import SessionRecord, Status, topics
from schemas.records import Alert
from sinks import alerts

RULES = """
[[rules]]
name = "asr_low"
kind = "asr"
scopes = ["provider"]
min_attempts = 5
fire = 0.3
clear = 0.4
"""
KEY = "asr_low:provider=wavecell"
_encoder = msgspec.json.Encoder()
_alert = msgspec.json.Decoder(Alert)


@contextlib.asynccontextmanager
async def _running(settings: AlertSettings, kafka: KafkaSettings) -> AsyncIterator[Metrics]:
    metrics, stop = Metrics("alerts"), asyncio.Event()
    task = asyncio.create_task(alerts.serve(settings, kafka, stop, metrics))
    try:
        yield metrics
    finally:
        stop.set()
        await task


async def _publish_and_wait(
    kafka: KafkaSettings, metrics: Metrics, sessions: list[SessionRecord]
) -> None:
    await kafka_io.publish(kafka, topics.SESSIONS, map(session_record, sessions))

    async def evaluated() -> bool:
        labels = {"service": "alerts", "topic": topics.SESSIONS}
        value = metrics.registry.get_sample_value("callstream_records_received_total", labels)
        return (value or 0) >= len(sessions)

    await eventually(evaluated, f"{len(sessions)} sessions evaluated")


async def _alerts(kafka: KafkaSettings) -> list[Alert]:
    return [_alert.decode(record.value) for record in await kafka_io.read_all(kafka, topics.ALERTS)]


async def test_an_episode_across_a_restart_gives_one_firing_and_one_resolved(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    settings = AlertSettings(rules=str(rules), group_id="test-alerts", max_batch=7)
    bad = [make_session(i, Status.FAILED) for i in range(10)]
    async with _running(settings, kafka) as metrics:
        await _publish_and_wait(kafka, metrics, [*bad, bad[3]])  # a duplicate counts once
        assert [alert.state for alert in await _alerts(kafka)] == ["firing"]
        assert (
            metrics.registry.get_sample_value("callstream_alerts_firing", {"service": "alerts"})
            == 1
        )

    async with _running(settings, kafka) as metrics:  # restored: the episode is still firing
        worse = [make_session(10 + i, Status.FAILED) for i in range(10)]
        await _dead_letter_and_more_bad(kafka, metrics, worse)
        good = [make_session(20 + i) for i in range(20)]
        await _publish_and_wait(kafka, metrics, good)
        assert (
            metrics.registry.get_sample_value(
                "callstream_alerts_transitions_total", {"service": "alerts", "state": "resolved"}
            )
            == 1
        )

    records = await kafka_io.read_all(kafka, topics.ALERTS)
    firing, resolved = (_alert.decode(record.value) for record in records)
    assert (firing.state, resolved.state) == ("firing", "resolved")
    assert firing.key == resolved.key == KEY
    assert firing.attempts == 5
    assert resolved.since == firing.at
    for record, alert in zip(records, (firing, resolved), strict=True):
        assert record.key == KEY.encode()
        headers = dict(record.headers)
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_id"] == alert.alert_id.encode()
        assert headers["ce_source"] == b"callstream/alerts"
        assert headers["ce_type"] == b"callstream.alert.v1"
        assert headers["ce_time"] == msgspec.json.encode(alert.at)[1:-1]
        assert headers["content-type"] == b"application/json"


async def _dead_letter_and_more_bad(
    kafka: KafkaSettings, metrics: Metrics, worse: list[SessionRecord]
) -> None:
    """An undecodable record goes to calls.dlq; more bad sessions fire nothing new."""
    await kafka_io.publish(kafka, topics.SESSIONS, [OutRecord(b"k", b"not json", [])])
    await _publish_and_wait(kafka, metrics, worse)

    async def dead_lettered() -> bool:
        dlq = await kafka_io.read_all(kafka, topics.DLQ)
        return [dict(r.headers).get(topics.ERROR_STAGE) for r in dlq] == [b"alerts"]

    await eventually(dead_lettered, "the undecodable session dead-lettered")
    assert [alert.state for alert in await _alerts(kafka)] == ["firing"]
