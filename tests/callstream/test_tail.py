"""`callstream tail` prints what flows through a topic, as a user watches it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from helpers import env_for

from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from schemas import topics


async def _produce(kafka: KafkaSettings, values: list[bytes]) -> None:
    await kafka_io.publish(
        kafka, topics.EVENTS, [kafka_io.OutRecord(b"k", v, [("ce_id", b"x")]) for v in values]
    )


async def _tail(
    kafka: KafkaSettings, *args: str, topic: str = topics.EVENTS
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callstream", "tail", topic, "--kafka", kafka.bootstrap, *args,
        env=env_for(kafka), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_from_beginning_prints_records_as_json_lines(kafka: KafkaSettings) -> None:
    await _produce(kafka, [b'{"n": 1}', b"not json"])
    process = await _tail(kafka, "--from-beginning", "--count", "2")
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["value"] for line in lines] == [{"n": 1}, "not json"]
    assert lines[0]["key"] == "k"
    assert lines[0]["headers"] == {"ce_id": "x"}


async def test_without_from_beginning_only_new_records_are_printed(kafka: KafkaSettings) -> None:
    await _produce(kafka, [b'{"old": %d}' % i for i in range(50)])  # one batch
    process = await _tail(kafka, "--count", "1")
    communicating = asyncio.create_task(process.communicate())
    new = 0
    async with asyncio.timeout(30):
        while not communicating.done():  # new records until one is shown, once it reads
            new += 1
            await _produce(kafka, [b'{"new": %d}' % new])
            await asyncio.wait({communicating}, timeout=0.2)
    out, err = await communicating
    assert process.returncode == 0, err
    (shown,) = [json.loads(line)["value"] for line in out.splitlines()]
    assert list(shown) == ["new"]


async def test_an_unknown_topic_is_a_one_line_error(kafka: KafkaSettings) -> None:
    process = await _tail(kafka, topic="calls.nope")
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, out) == (1, b"")
    assert (
        err.decode().strip()
        == f"callstream: topic '{kafka.topic_prefix}calls.nope' does not exist on {kafka.bootstrap}"
    )


async def test_to_end_stops_at_the_end_and_following_is_said_on_stderr(
    kafka: KafkaSettings,
) -> None:
    await _produce(kafka, [b'{"n": %d}' % i for i in range(3)])
    process = await _tail(kafka, "--from-beginning", "--to-end")
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, err) == (0, b"")
    assert [json.loads(line)["value"] for line in out.splitlines()] == [{"n": i} for i in range(3)]

    process = await _tail(kafka, "--from-beginning")
    assert process.stderr is not None
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stderr.readline(), 30)
    topic = kafka.topic(topics.EVENTS)
    assert line == f"callstream: following {topic} from its beginning; Ctrl-C stops\n".encode()
    for _ in range(3):
        assert b'"n"' in await asyncio.wait_for(process.stdout.readline(), 30)
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
