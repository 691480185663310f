"""`callstream up` end to end, as a user runs it: a callback in, canonical events out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import aiohttp
import msgspec
import pytest
from aiokafka import ConsumerRecord
from helpers import env_for, eventually, settings_for

from callstream.broker import free_port
from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from schemas import topics

SAMPLE = Path(__file__).parent.parent / "golden" / "wavecell" / "doc_sample.json"


class Up(NamedTuple):
    base: str
    kafka: KafkaSettings
    data_dir: Path
    metrics: str
    out: Path
    """What `up` printed on stdout (its banner)."""
    err: Path
    """Its log, and its children's."""


@contextlib.asynccontextmanager
async def _up(tmp_path: Path, *flags: str, kafka: KafkaSettings | None = None) -> AsyncIterator[Up]:
    """`callstream up` with `flags`, until it says it is ready; stopped by Ctrl-C after. On an
    embedded broker of its own, or with `kafka`, on that broker under its topic prefix."""
    http_port, metrics_port = free_port(), free_port()
    if kafka is None:
        kafka = settings_for(f"127.0.0.1:{free_port()}")
        where = ("--broker-port", kafka.bootstrap.rpartition(":")[2])
    else:
        where = ("--kafka", kafka.bootstrap)
    data_dir, out, err = tmp_path / "data", tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "up", *where,
            "--http-port", str(http_port), "--metrics-port", str(metrics_port),
            "--data-dir", str(data_dir), *flags, env=env_for(kafka), stdout=stdout, stderr=stderr,
        )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        await eventually(lambda: _said(out, "Ctrl-C stops everything."), "up's banner")
        yield Up(base, kafka, data_dir, f"http://127.0.0.1:{metrics_port}/metrics", out, err)
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0


async def _said(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text)


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Up]:
    async with _up(tmp_path) as running:
        yield running


Records = list[ConsumerRecord[bytes, bytes]]


async def _read(kafka: KafkaSettings, topic: str, enough: Callable[[Records], bool]) -> Records:
    """The records of `topic` once `enough` of them have been written (within a deadline)."""
    consumer = kafka_io.consumer(kafka, topic, group_id=f"test-{topic}")
    await consumer.start()
    records: Records = []
    try:
        async with asyncio.timeout(60):
            while not enough(records):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_a_callback_comes_out_as_canonical_events_and_a_session(pipeline: Up) -> None:
    base, kafka, data_dir = pipeline.base, pipeline.kafka, pipeline.data_dir
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/callbacks/wavecell", data=SAMPLE.read_bytes()) as answer,
    ):
        assert answer.status == 202
        assert (await answer.json())["id"]
    events = await _read(kafka, topics.EVENTS, lambda records: len(records) >= 2)
    values = [msgspec.json.decode(record.value) for record in events]
    assert sorted(v["leg"] for v in values) == ["a", "b"]
    assert {record.key for record in events} == {
        b"wavecell:account_x:37f31065-b050-11ea-aed2-b9458c490aa3"
    }
    assert {v["session_key"].encode() for v in values} == {record.key for record in events}
    assert all(dict(record.headers)["ce_type"] == b"callstream.call_event.v1" for record in events)
    sessions = await _read(
        kafka, topics.SESSIONS, lambda records: bool(records) and b'"b":' in records[-1].value
    )
    latest = msgspec.json.decode(sessions[-1].value)
    assert (latest["status"], latest["final"], sorted(latest["legs"])) == (
        "completed",
        True,
        ["a", "b"],
    )

    async def listed() -> bool:
        calls = await _callstream("calls", "--data-dir", str(data_dir))
        return "37f31065-b050-11ea-aed2-b9458c490aa3" in calls and "completed" in calls

    await eventually(listed, "the call in `callstream calls`")
    stats = (
        await _callstream("stats", "--data-dir", str(data_dir), "--by", "provider")
    ).splitlines()
    assert stats[0].split()[:3] == ["group", "attempts", "completed"]
    assert stats[1].split()[:3] == ["wavecell", "1", "1"]


async def _callstream(*args: str) -> str:
    """Its output; empty while the store is not there yet (exit 3)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callstream", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode in (0, 3), err
    return out.decode()


async def test_up_says_where_to_look_and_serves_every_services_metrics(pipeline: Up) -> None:
    banner = pipeline.out.read_text()
    assert f"ingress  {pipeline.base}" in banner
    assert f"metrics  {pipeline.metrics}" in banner
    assert f"callstream status --kafka {pipeline.kafka.bootstrap} --data-dir" in banner
    assert "in memory" in banner
    assert '"broker_in_memory"' in pipeline.err.read_text()  # warned at start, in the log too

    async def every_service_answers() -> bool:
        async with aiohttp.ClientSession() as http, http.get(pipeline.metrics) as answer:
            text = await answer.text()
        return all(
            f'callstream_up{{service="{name}"}} 1.0' in text
            for name in ("normalizer", "aggregator", "store", "alerts", "ingress")
        )

    await eventually(every_service_answers, "every service's metrics on up's endpoint")


async def test_up_demo_shows_calls_of_every_provider_at_once(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """The simulator's webhooks and both pollers feed the pipeline: all four providers' calls
    reach the store within seconds. On Ctrl-C, sources stop before what they feed. Here on a
    Kafka `up` did not start, under a topic prefix: every service keeps to it (the `kafka`
    fixture fails a test that leaves a topic or a group outside it)."""
    async with _up(tmp_path, "--demo", kafka=kafka) as running:

        async def every_provider() -> bool:
            stats = await _callstream(
                "stats", "--data-dir", str(running.data_dir), "--by", "provider"
            )
            groups = {line.split()[0] for line in stats.splitlines()[1:]}
            return groups == {"wavecell", "voice_messaging", "vpbx", "mobile_agent"}

        await eventually(every_provider, "calls of every provider in `callstream stats`")
    logged = [json.loads(line) for line in running.err.read_text().splitlines() if line[:1] == "{"]
    stopped = [line["child"] for line in logged if line.get("event") == "child_stopped"]
    assert stopped[:3] == ["poll", "simulate", "ingress"]
    assert sorted(stopped[3:]) == ["aggregator", "alerts", "normalizer", "store"]
