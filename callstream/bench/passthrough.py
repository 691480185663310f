"""The baseline of a consuming service's benchmark: the same runtime with a handler that only
produces each record it reads, as it is, to a topic of the benchmark's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from foundation.kafka import OutRecord, Record
from foundation.runtime import BaseHandler, Handled, Metrics, Runtime
from foundation.settings import KafkaSettings
from schemas.topics import Stage

TOPIC = "bench.passthrough"
"""Where a passthrough produces: a topic of the benchmark's own, created for the run."""

Serve = Callable[[asyncio.Event, Metrics], Awaitable[None]]
"""A benchmarked side: runs until its stop event is set, counting into the Metrics given."""


class Passthrough(BaseHandler[None]):
    """Reads `source` as consumer group `group_id` in batches of up to `max_batch` records, as
    the service measured against it does, and produces each record's key, value and headers
    unchanged to `target`: the Kafka I/O of that service (fetch, produce, acknowledgements,
    commits) without its own work."""

    service = "passthrough"
    stage = Stage.NORMALIZE  # never used: a passthrough rejects nothing

    def __init__(self, source: str, target: str, group_id: str, max_batch: int) -> None:
        self.subscribe = (source,)
        self.target, self.group_id, self.max_batch = target, group_id, max_batch

    def handle(self, record: Record) -> Handled[None]:
        # A list: aiokafka's batch append takes no tuple of headers (what it fetches).
        return Handled([(self.target, OutRecord(record.key, record.value, list(record.headers)))])


def serve(kafka: KafkaSettings, source: str, group_id: str, max_batch: int) -> Serve:
    """A passthrough of `source` to TOPIC on the consumer runtime, as group `group_id`."""
    handler = Passthrough(source, TOPIC, group_id, max_batch)

    async def run(stop: asyncio.Event, metrics: Metrics) -> None:
        await Runtime(handler, kafka, metrics=metrics).run(stop)

    return run
