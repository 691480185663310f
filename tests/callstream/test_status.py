"""`callstream status` and `callstream alerts list` against a broker (the embedded one here:
the admin calls it does not answer are named in the notes, and nothing crashes)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from aiokafka import TopicPartition
from helpers import raw

from callstream.cli import main
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.settings import KafkaSettings, NormalizerSettings
from schemas import topics
from schemas.raw import dead_letter_headers
from schemas.records import Alert, Scope
from sinks.sqlite import SqliteBackend

NORMALIZER = NormalizerSettings().group_id


@pytest.fixture(autouse=True)
def _prefixed(kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands below run in this process: they take the test's topic prefix from here."""
    monkeypatch.setenv("CALLSTREAM_KAFKA__TOPIC_PREFIX", kafka.topic_prefix)


def _alert(rule: str, provider: str, state: str, at: datetime) -> OutRecord:
    alert = Alert(
        alert_id=f"{rule}-{provider}-{state}", rule=rule, kind="asr", scope=Scope(provider),
        state=state, value=0.25 if state == "firing" else 0.5, threshold=0.3, window_s=300,
        attempts=20, at=at, since=at - timedelta(minutes=5),
    )  # fmt: skip
    return OutRecord(f"{alert.key}".encode(), msgspec.json.encode(alert), [])


@pytest.fixture
async def traffic(kafka: KafkaSettings) -> dict[str, int]:
    """10 raw records, the normalizer group one record behind on each partition it committed
    on, two dead letters, and alerts: asr_low on vpbx firing, on wavecell fired then resolved."""
    await kafka_io.publish(
        kafka, topics.RAW, [raw("wavecell", b"{}", key=str(i).encode()) for i in range(10)]
    )
    async with kafka_io.consumer(kafka, topics.RAW, group_id=NORMALIZER) as consumer:
        seen: dict[TopicPartition, int] = {}
        async with asyncio.timeout(30):
            while sum(seen.values()) < 10:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    seen[tp] = seen.get(tp, 0) + len(records)
        await consumer.commit({tp: count - 1 for tp, count in seen.items()})
    letters = [
        OutRecord(None, b"x", dead_letter_headers([], stage=stage, error="bad"))
        for stage in ("ingress", "normalize")
    ]
    await kafka_io.publish(kafka, topics.DLQ, letters)
    now = datetime.now(UTC).replace(microsecond=0)
    await kafka_io.publish(
        kafka,
        topics.ALERTS,
        [
            _alert("asr_low", "vpbx", "firing", now - timedelta(minutes=2)),
            _alert("asr_low", "wavecell", "firing", now - timedelta(minutes=3)),
            _alert("asr_low", "wavecell", "resolved", now - timedelta(minutes=1)),
        ],
    )
    return {"lag": len(seen)}


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


async def test_status_json_has_topics_lag_dead_letters_alerts_and_store(
    kafka: KafkaSettings,
    traffic: dict[str, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = SqliteBackend(tmp_path / "callstream.sqlite3")
    await store.open()
    await store.close()
    out = await _run(
        capsys, "status", "--kafka", kafka.bootstrap, "--data-dir", str(tmp_path), "--json"
    )
    found = json.loads(out)
    assert {"topics", "groups", "dlq", "alerts", "store", "notes"} <= set(found)
    assert found["topic_prefix"] == kafka.topic_prefix
    by_topic = {t["topic"]: t for t in found["topics"]}
    assert set(by_topic) == {kafka.topic(name) for name in topics.ALL}
    assert by_topic[kafka.topic(topics.RAW)]["records"] == 10
    assert sum(by_topic[kafka.topic(topics.RAW)]["end_offsets"].values()) == 10
    # The broker holds other tests' groups too: only those under the prefix are shown.
    assert all(g["group"].startswith(kafka.topic_prefix) for g in found["groups"])
    (group,) = [g for g in found["groups"] if g["group"] == kafka.group(NORMALIZER)]
    assert group["lag"] == traffic["lag"]
    assert group["topics"] == [kafka.topic(topics.RAW)]
    assert sum(p["lag"] for p in group["partitions"]) == traffic["lag"]
    assert found["dlq"] == {"ingress": 1, "normalize": 1}
    assert [(a["rule"], a["scope"], a["state"]) for a in found["alerts"]] == [
        ("asr_low", {"provider": "vpbx"}, "firing")
    ]
    assert found["store"] == {"url": store_url(tmp_path), "events": 0, "sessions": 0}
    assert any("assignments" in note for note in found["notes"])  # the embedded broker's


def store_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'callstream.sqlite3'}"


async def test_status_table_fits_100_columns(
    kafka: KafkaSettings,
    traffic: dict[str, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    del traffic
    out = await _run(capsys, "status", "--kafka", kafka.bootstrap, "--data-dir", str(tmp_path))
    lines = out.splitlines()
    assert max(len(line) for line in lines if str(tmp_path) not in line) <= 100
    assert lines[0] == f"kafka {kafka.bootstrap}, topic prefix {kafka.topic_prefix}"
    assert any(line.split()[:3] == [kafka.topic("calls.raw"), "4", "10"] for line in lines)
    assert any(line.startswith(kafka.group(NORMALIZER)) for line in lines)
    assert any(line.split()[:2] == ["ingress", "1"] for line in lines)
    assert any(line.split()[:3] == ["asr_low", "firing", "vpbx"] for line in lines)
    assert f"store {store_url(tmp_path)}\n  no store at" in out


async def test_alerts_list_shows_firing_then_recently_resolved(
    kafka: KafkaSettings, traffic: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    del traffic
    out = await _run(capsys, "alerts", "list", "--kafka", kafka.bootstrap)
    header, *rows = out.splitlines()
    assert header.split() == ["alert", "state", "scope", "value", "threshold", "since", "changed"]
    assert [row.split()[:5] for row in rows] == [
        ["asr_low", "firing", "vpbx", "0.25", "0.3"],
        ["asr_low", "resolved", "wavecell", "0.5", "0.3"],
    ]
    assert rows[0].split()[5:] == ["7m", "ago", "2m", "ago"]

    out = await _run(capsys, "alerts", "list", "--kafka", kafka.bootstrap, "--since", "30s")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["firing"]
    out = await _run(capsys, "alerts", "list", "--kafka", kafka.bootstrap, "--json")
    assert [json.loads(line)["state"] for line in out.splitlines()] == ["firing", "resolved"]
