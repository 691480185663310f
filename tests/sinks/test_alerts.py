"""The alert sink against the real broker: instances share the scopes by partition, and a
restart, a rebalance or a killed instance neither fires an episode twice nor loses one.

The traffic's received times are a day ahead of the wall clock, so that every clock is the
sessions' own (a caught-up partition's wall clock is behind them): what is decided, and when,
depends on the traffic alone. Each phase's sessions are spread over the calls.sessions
partitions; a last session in each of them moves every clock past the traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from helpers import eventually
from sink_helpers import make_session

from foundation import kafka as kafka_io
from foundation.kafka import OutRecord, partition_for
from foundation.runtime import Metrics
from foundation.settings import AlertSettings, KafkaSettings
from normalize.aggregator import session_record
from schemas import SessionRecord, Status, topics
from schemas.records import Alert, AlertWatermark, Scope
from sinks import alerts
from sinks.rules import load_rules, samples
from sinks.windows import Windows

RULES = """
[[rules]]
name = "asr_low"
kind = "asr"
scopes = ["provider", "account"]
window_s = 60
min_attempts = 5
fire = 0.3
clear = 0.5

[[rules]]
name = "funds"
kind = "causes"
window_s = 30
"""
PARTITIONS = 4
GRACE_S = 2.0
FLUSH_S = 3_600
"""When the last sessions are received, seconds after the traffic's start."""
_alert = msgspec.json.Decoder(Alert)


def _accounts() -> list[str]:
    """One account per calls.alerts.samples partition: its scope's windows live there."""
    found: dict[int, str] = {}
    for n in itertools.count():
        scope = str(Scope("wavecell", account=f"acc{n}")).encode()
        found.setdefault(partition_for(scope, range(PARTITIONS)), f"acc{n}")
        if len(found) == PARTITIONS:
            return [found[p] for p in range(PARTITIONS)]
    raise AssertionError


def _session(
    start: datetime, at_s: float, account: str, status: Status, cause: str | None = None
) -> SessionRecord:
    session = make_session(at_s, status, account=account, cause=cause)
    return msgspec.structs.replace(session, received_at=start + timedelta(seconds=at_s))


def _phases(start: datetime) -> list[list[SessionRecord]]:
    """Every account fails 3 times in phase 1 (the first also 3 more: it fires, and so does the
    provider), the second runs out of funds; 3 more failures in phase 2 make the others fire (with
    phase 1's in their windows), and the funds episode resolves as its window empties; phase 3
    succeeds everywhere. Each phase ends with a session in every calls.sessions partition, and
    the flush moves every clock an hour on."""
    first, *others = accounts = _accounts()

    def each(accounts: list[str], at_s: int, count: int, status: Status) -> list[SessionRecord]:
        return [
            _session(start, at_s + i + n / 10, account, status)
            for n, account in enumerate(accounts)
            for i in range(count)
        ]

    phase1 = each([first], 1, 6, Status.FAILED)
    phase1 += [_session(start, 8, accounts[1], Status.FAILED, "NO_FUNDS")]
    phase1 += each(others, 10, 3, Status.FAILED)
    phase2 = each(others, 31, 3, Status.FAILED)
    phase3 = each(accounts, 61, 12, Status.COMPLETED)
    return [
        phase1 + _clocks(start, 29),
        phase2 + _clocks(start, 59),
        phase3 + _clocks(start, 119),
        _clocks(start, FLUSH_S),
    ]


def _clocks(start: datetime, at_s: int) -> list[SessionRecord]:
    """A session in every calls.sessions partition received at `at_s`, of a provider no rule
    fires on: every partition's clock is there."""
    found: dict[int, SessionRecord] = {}
    for n in itertools.count():
        session = msgspec.structs.replace(
            _session(start, at_s, "clock", Status.COMPLETED),
            provider="clock", session_key=f"clock::{at_s}-{n}",
        )  # fmt: skip
        found.setdefault(partition_for(session.session_key.encode(), range(PARTITIONS)), session)
        if len(found) == PARTITIONS:
            return list(found.values())
    raise AssertionError


def _expected(rules_file: Path, sessions: list[SessionRecord], start: datetime) -> list[Alert]:
    """What one partition's windows decide given every sample at once, then the flush's clock."""
    windows = Windows(load_rules(str(rules_file)), sessions=1, grace_s=GRACE_S)
    records = [*(s for session in sessions for s in samples(session))]
    records.append(AlertWatermark({0: start + timedelta(seconds=FLUSH_S)}))
    return [alert for offset, record in enumerate(records) for alert in windows.add(record, offset)]


def _by_key(alerts: list[Alert]) -> dict[str, list[Alert]]:
    keyed: dict[str, list[Alert]] = {}
    for alert in alerts:
        keyed.setdefault(alert.key, []).append(alert)
    return keyed


async def _alerts(kafka: KafkaSettings) -> list[Alert]:
    return [_alert.decode(record.value) for record in await kafka_io.read_all(kafka, topics.ALERTS)]


async def _produced(kafka: KafkaSettings, key: str, state: str) -> None:
    async def there() -> bool:
        return any((a.key, a.state) == (key, state) for a in await _alerts(kafka))

    await eventually(there, f"{key} {state}")


def _decided(metrics: Metrics) -> dict[int, float]:
    """The samples partitions an instance holds, and how far each is decided (epoch s)."""
    return {
        int(sample.labels["partition"]): sample.value
        for metric in metrics.registry.collect()
        if metric.name == "callstream_alerts_decided_seconds"
        for sample in metric.samples
    }


async def _all_decided(metrics: Metrics, start: datetime) -> None:
    until = (start + timedelta(seconds=FLUSH_S - GRACE_S)).timestamp()

    async def decided() -> bool:
        held = _decided(metrics)
        return len(held) == PARTITIONS and min(held.values()) >= until

    await eventually(decided, "every samples partition decided up to the flush")


async def _publish(kafka: KafkaSettings, sessions: list[SessionRecord]) -> None:
    await kafka_io.publish(kafka, topics.SESSIONS, map(session_record, sessions))


@contextlib.asynccontextmanager
async def _running(settings: AlertSettings, kafka: KafkaSettings) -> AsyncIterator[Metrics]:
    metrics, stop = Metrics("alerts"), asyncio.Event()
    task = asyncio.create_task(alerts.serve(settings, kafka, stop, metrics))
    try:
        yield metrics
    finally:
        stop.set()
        await task


def _settings(rules: Path) -> AlertSettings:
    return AlertSettings(
        rules=str(rules), group_id="test-alerts", max_batch=7, grace_s=GRACE_S,
        tick_interval_s=0.1,
    )  # fmt: skip


def _start() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


def _rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return rules


def _check(produced: list[Alert], expected: list[Alert]) -> None:
    """The expected alerts, each once: every account's episode fired and resolved, the funds
    episode and the provider's too."""
    assert _by_key(produced) == _by_key(expected)
    states = {key: [a.state for a in alerts] for key, alerts in _by_key(produced).items()}
    accounts = _accounts()
    assert states == {
        **{f"asr_low:provider=wavecell,account={acc}": ["firing", "resolved"] for acc in accounts},
        f"funds:provider=wavecell,account={accounts[1]}": ["firing", "resolved"],
        "asr_low:provider=wavecell": ["firing", "resolved"],
    }


async def test_an_instance_that_stops_mid_traffic_hands_its_scopes_over(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    rules, start = _rules(tmp_path), _start()
    phases = _phases(start)
    settings = _settings(rules)
    async with _running(settings, kafka) as staying:
        async with _running(settings, kafka) as leaving:

            async def shared() -> bool:
                return bool(_decided(staying)) and bool(_decided(leaving))

            await eventually(shared, "both instances holding samples partitions")
            assert len(_decided(staying)) + len(_decided(leaving)) == PARTITIONS
            await _publish(kafka, phases[0])
            await _produced(kafka, f"asr_low:provider=wavecell,account={_accounts()[0]}", "firing")
        for phase in phases[1:]:  # its partitions, windows and episodes are the staying one's
            await _publish(kafka, phase)
        await _all_decided(staying, start)
    _check(await _alerts(kafka), _expected(rules, [s for p in phases for s in p], start))


async def test_an_episode_across_a_restart_fires_once_and_resolves_once(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    rules, start = _rules(tmp_path), _start()
    phases = _phases(start)
    settings = _settings(rules)
    async with _running(settings, kafka):
        await _publish(kafka, phases[0])
        await _produced(kafka, f"asr_low:provider=wavecell,account={_accounts()[0]}", "firing")
    async with _running(settings, kafka) as metrics:  # restored: windows, pending, episodes
        await kafka_io.publish(kafka, topics.SESSIONS, [OutRecord(b"k", b"not json", [])])
        hostile = [  # written by hand: the sink writes neither
            AlertWatermark({0: datetime(9999, 12, 31, tzinfo=UTC)}),  # past any window's reach
            AlertWatermark({99: start}),  # a calls.sessions partition that does not exist
        ]
        await kafka_io.publish(
            kafka, topics.ALERT_SAMPLES,
            [OutRecord(None, msgspec.json.encode(mark), [], partition=0) for mark in hostile],
        )  # fmt: skip
        for phase in phases[1:]:
            await _publish(kafka, phase)
        await _all_decided(metrics, start)
        assert (
            metrics.registry.get_sample_value("callstream_alerts_firing", {"service": "alerts"})
            == 0
        )
    records = await kafka_io.read_all(kafka, topics.ALERTS)
    produced = [_alert.decode(record.value) for record in records]
    _check(produced, _expected(rules, [s for p in phases for s in p], start))
    for record, alert in zip(records, produced, strict=True):
        assert record.key == alert.key.encode()
        headers = dict(record.headers)
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_id"] == alert.alert_id.encode()
        assert headers["ce_source"] == b"callstream/alerts"
        assert headers["ce_type"] == b"callstream.alert.v1"
        assert headers["ce_time"] == msgspec.json.encode(alert.at)[1:-1]
        assert headers["content-type"] == b"application/json"
    dlq = await kafka_io.read_all(kafka, topics.DLQ)
    reasons = sorted(dict(r.headers)[topics.ERROR].decode() for r in dlq)
    assert [dict(r.headers).get(topics.ERROR_STAGE) for r in dlq] == [b"alerts"] * 3
    assert reasons[0].startswith("an alert sample or watermark the windows cannot take: a time")
    assert "a watermark of partitions [99] of 4" in reasons[1]
    assert reasons[2].startswith("not a session record")


async def _start_instance(
    kafka: KafkaSettings, rules: Path, log: Path
) -> asyncio.subprocess.Process:
    env = os.environ | {
        "CALLSTREAM_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "CALLSTREAM_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
        "CALLSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
        "CALLSTREAM_ALERTS__GROUP_ID": "test-alerts",
        "CALLSTREAM_ALERTS__MAX_BATCH": "7",
        "CALLSTREAM_ALERTS__GRACE_S": str(GRACE_S),
        "CALLSTREAM_ALERTS__TICK_INTERVAL_S": "0.1",
    }
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "alerts", "--kafka", kafka.bootstrap,
            "--rules", str(rules), env=env, stdout=output, stderr=output,
        )  # fmt: skip


async def test_an_instance_killed_mid_traffic_loses_and_doubles_nothing(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """The first instance alone, then a second one joins (a rebalance), then the first is
    SIGKILLed mid-phase: no last batch, no commit, no state written, no leaving the group."""
    rules, start, log = _rules(tmp_path), _start(), tmp_path / "alerts.log"
    phases = _phases(start)
    process = await _start_instance(kafka, rules, log)
    try:
        await _publish(kafka, phases[0])
        await _produced(kafka, f"asr_low:provider=wavecell,account={_accounts()[0]}", "firing")
        async with _running(_settings(rules), kafka) as staying:

            async def joined() -> bool:
                return bool(_decided(staying))

            await eventually(joined, "the second instance holding samples partitions")
            await _publish(kafka, phases[1][: len(phases[1]) // 2])
            process.kill()
            await process.wait()
            await _publish(kafka, phases[1][len(phases[1]) // 2 :])
            for phase in phases[2:]:
                await _publish(kafka, phase)
            await _all_decided(staying, start)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    _check(await _alerts(kafka), _expected(rules, [s for p in phases for s in p], start))
