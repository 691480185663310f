"""`callstream tail`: print what flows through a topic, one JSON object per record."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, BinaryIO, TextIO

import msgspec
from aiokafka import ConsumerRecord

from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.settings import KafkaSettings

_encoder = msgspec.json.Encoder()


class TailError(CallstreamError):
    """The topic to tail does not exist."""


def render(record: ConsumerRecord[bytes, bytes]) -> bytes:
    """A record as JSON: `value` decoded when it is JSON, else as text."""
    return _encoder.encode(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": _text(record.key),
            "headers": {name: _text(value) for name, value in record.headers},
            "value": _value(record.value),
        }
    )


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode(errors="replace")


def _value(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return _text(data)


async def tail(
    kafka: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool,
    count: int | None,
    stop: asyncio.Event,
    to_end: bool = False,
    out: BinaryIO = sys.stdout.buffer,
    err: TextIO = sys.stderr,
) -> None:
    """Print records of `topic` (a `schemas.topics` name such as `calls.events`: prefixed with
    KAFKA__TOPIC_PREFIX here; all partitions, no consumer group) until `count`, the end of
    every partition (`to_end`), or `stop`. Following (neither `count` nor `to_end`) is said on
    `err`, so that a person knows it will not end by itself.

    Without `from_beginning` only records written from now on are shown. Some brokers (the
    embedded one) answer "end of log" with the start of its last batch, so records older than
    the start of the command are skipped by their timestamp as well.
    """
    started_ms = int(time.time() * 1000)
    async with kafka_io.consumer(kafka, group_id=None) as consumer:
        topic = kafka.topic(topic)
        partitions = await kafka_io.partitions_of(consumer, topic)
        if not partitions:
            raise TailError(f"topic {topic!r} does not exist on {kafka.bootstrap}")
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        if count is None and not to_end:
            which = "from its beginning" if from_beginning else "from now on"
            print(f"callstream: following {topic} {which}; Ctrl-C stops", file=err, flush=True)
        shown = 0
        pending = set(partitions)
        while not stop.is_set() and (count is None or shown < count) and pending:
            batches = await consumer.getmany(
                timeout_ms=200, max_records=500 if count is None else count - shown
            )
            for record in (r for records in batches.values() for r in records):
                if from_beginning or record.timestamp >= started_ms:
                    out.write(render(record) + b"\n")
                    shown += 1
            out.flush()
            if to_end:
                pending = {tp for tp in pending if not await kafka_io.at_end(consumer, tp)}
