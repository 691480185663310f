"""Replay equivalence (contract 1.1, time): traffic with non-final states and late outcomes runs
live; then a fresh aggregator consumes the same events from the beginning, under a topic prefix
of its own, throttled (batches of 3, sweeps every 50 ms), and a fresh alert sink its sessions,
throttled too (batches of 3 on both stages, watermarks every 50 ms), reading the four partitions
of calls.sessions in another interleaving than the live run did. Because every timeout and window
runs on received time, and the alert windows count samples in received-time order whatever order
the partitions arrive in, they decide what the live run decided: the same sessions and the same
alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
from helpers import eventually, normalizer, serving

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import AggregatorSettings, AlertSettings, KafkaSettings
from normalize import aggregator
from schemas import SessionRecord, Status, topics
from schemas.raw import RawMeta, raw_headers
from schemas.records import Alert
from sinks import alerts

OPEN_TIMEOUT_S = 2.0
GRACE_S = 3.0
"""Longer than a close takes to reach the alert windows live (the aggregator's 0.2 s sweeps)."""
RULES = """
[[rules]]
name = "asr"
kind = "asr"
window_s = 600
min_attempts = 5
scopes = ["provider"]
fire = 0.3
clear = 0.5
"""
_session = msgspec.json.Decoder(SessionRecord)
_alert = msgspec.json.Decoder(Alert)


def _callback(message_id: str, status: str, error_code: int = 0) -> OutRecord:
    now = datetime.now(UTC)
    call: dict[str, object] = {"message_id": message_id, "status": status, "to": "35699000000"}
    call |= {"ring_date": int(now.timestamp()) - 5, "error_code": error_code}
    if status != "ACCEPTD":
        call |= {"answer_date": False, "hang_date": int(now.timestamp())}
    body = msgspec.json.encode({"api_job_id": "job-1", "data": [call]})
    meta = RawMeta("voice_messaging", "webhook", now, message_id, "application/json", {})
    return OutRecord(None, body, raw_headers(meta))


async def _settled(metrics: Metrics, records: int) -> None:
    async def consumed() -> bool:
        return metrics.total("received") >= records

    await eventually(consumed, f"{records} records consumed")


async def _alerts_decided(kafka: KafkaSettings, metrics: Metrics) -> list[Alert]:
    """Once every alert samples partition is decided past every session there is, the alerts."""
    sessions = _latest(await kafka_io.read_all(kafka, topics.SESSIONS)).values()
    last = max(session.final_received.timestamp() for session in sessions)

    async def decided() -> bool:
        held = [
            sample.value
            for metric in metrics.registry.collect()
            if metric.name == "callstream_alerts_decided_seconds"
            for sample in metric.samples
        ]
        return len(held) == 4 and min(held) >= last

    await eventually(decided, "the alert windows decided past the last session")
    return [_alert.decode(r.value) for r in await kafka_io.read_all(kafka, topics.ALERTS)]


def _latest(records: list[kafka_io.ConsumerRecord[bytes, bytes]]) -> dict[str, SessionRecord]:
    latest = {}
    for record in records:
        session = _session.decode(record.value or b"")
        latest[session.session_key] = session
    return latest


async def test_a_throttled_replay_decides_what_the_live_run_decided(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    live_settings = AggregatorSettings(
        group_id="live", open_timeout_s=OPEN_TIMEOUT_S, sweep_interval_s=0.2
    )
    live_metrics, live_alerting = Metrics("aggregator"), Metrics("alerts")
    alerting = AlertSettings(rules=str(rules), grace_s=GRACE_S, tick_interval_s=0.1)
    ids = [f"m{n}" for n in range(20)]
    async with (
        serving(normalizer(kafka)),
        serving(lambda stop: aggregator.serve(live_settings, kafka, stop, live_metrics)),
        serving(lambda stop: alerts.serve(alerting, kafka, stop, live_alerting)),
    ):
        await kafka_io.publish(kafka, topics.RAW, [_callback(i, "ACCEPTD") for i in ids])
        await kafka_io.publish(kafka, topics.RAW, [_callback(i, "DELIVRD") for i in ids[:5]])
        await _settled(live_metrics, 25)

        async def timed_out() -> bool:  # the 15 still ringing, closed as unknown
            latest = _latest(await kafka_io.read_all(kafka, topics.SESSIONS))
            return sum(s.status is Status.UNKNOWN for s in latest.values()) == 15

        await eventually(timed_out, "15 sessions closed for want of an outcome")
        late = [_callback(i, "DELIVRD") for i in ids[5:10]]
        late += [_callback(i, "UNDELIV", 4999) for i in ids[10:15]]  # failed, late
        await kafka_io.publish(kafka, topics.RAW, late)
        await _settled(live_metrics, 35)
        live_alerts = await _alerts_decided(kafka, live_alerting)
    assert live_alerting.total("received") > 0
    late = live_alerting.registry.get_sample_value(
        "callstream_alerts_late_samples_total", {"service": "alerts"}
    )
    assert late == 0  # what the live run decided, it decided on time: a replay must match it
    live_sessions = _latest(await kafka_io.read_all(kafka, topics.SESSIONS))
    statuses = sorted(s.status.value for s in live_sessions.values())
    assert statuses == ["completed"] * 10 + ["failed"] * 5 + ["unknown"] * 5
    assert [a.state for a in live_alerts] == ["firing"]  # the closes, each session counted once

    events = await kafka_io.read_all(kafka, topics.EVENTS)
    replay = msgspec.structs.replace(kafka, topic_prefix=f"{kafka.topic_prefix}replay.")
    await kafka_io.ensure_topics(replay)
    await kafka_io.publish(
        replay, topics.EVENTS, [OutRecord(r.key, r.value, list(r.headers)) for r in events]
    )
    throttled = AggregatorSettings(
        group_id="replay", max_batch=3, open_timeout_s=OPEN_TIMEOUT_S, sweep_interval_s=0.05
    )
    metrics = Metrics("aggregator")
    async with serving(lambda stop: aggregator.serve(throttled, replay, stop, metrics)):
        await _settled(metrics, len(events))

        async def same_sessions() -> bool:
            latest = _latest(await kafka_io.read_all(replay, topics.SESSIONS))
            return latest == live_sessions

        await eventually(same_sessions, "the live run's sessions")

    throttled_alerts = msgspec.structs.replace(alerting, max_batch=3, tick_interval_s=0.05)
    replayed = Metrics("alerts")
    async with serving(lambda stop: alerts.serve(throttled_alerts, replay, stop, replayed)):
        assert await _alerts_decided(replay, replayed) == live_alerts
