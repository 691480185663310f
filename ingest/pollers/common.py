"""What the pollers share: their clients, and what they do with an answer (publish it as a raw
record, or dead-letter it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import aiohttp
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from foundation.clock import SYSTEM, Clock
from foundation.kafka import Batcher, OutRecord, Overloaded
from foundation.settings import KafkaSettings
from ingest.pollers.metrics import Metrics
from schemas import topics
from schemas.raw import RawMeta, dead_letter_headers, raw_headers

SOURCE = "poll"
STAGE = "poll"
"""The dead-letter stage of answers a poller could not read."""

SEND_ATTEMPTS = 5
"""A poll answer that could not be written cannot be asked for again (the call has moved on):
a broker error is retried a few times before the poll counts as failed."""

log = structlog.get_logger("callstream.poll")


class Plumbing(NamedTuple):
    """What the pollers of one `callstream poll` share."""

    kafka: KafkaSettings
    producer: AIOKafkaProducer
    batcher: Batcher
    """What the pollers publish through (the producer's batches)."""
    session: aiohttp.ClientSession
    metrics: Metrics
    clock: Clock = SYSTEM
    """What now is (received times, the vpbx schedule, the mobile_agent deadline)."""


class Publisher:
    """Writes one provider's answers to calls.raw (source `poll`) or calls.dlq, awaiting acks."""

    def __init__(self, provider: str, plumbing: Plumbing) -> None:
        self.provider, self.kafka, self.batcher = provider, plumbing.kafka, plumbing.batcher
        self.metrics, self.clock = plumbing.metrics, plumbing.clock

    def _meta(self, context: Mapping[str, str]) -> RawMeta:
        return RawMeta.received_now(
            self.provider, SOURCE, "application/json", context, at=self.clock.now()
        )

    async def raw(self, body: bytes, context: Mapping[str, str]) -> None:
        """`body` on calls.raw with its context, once acknowledged."""
        headers = raw_headers(self._meta(context))
        await self.send(topics.RAW, OutRecord(None, body, headers))
        self.metrics.published.labels(self.provider).inc()

    async def dead_letter(self, body: bytes, context: Mapping[str, str], error: str) -> None:
        """`body` on calls.dlq (stage `poll`) with its context and why it was unreadable."""
        meta = self._meta(context)
        log.warning(
            "poll_answer_dead_lettered",
            provider=self.provider,
            request_id=meta.request_id,
            error=error,
        )
        headers = dead_letter_headers(raw_headers(meta), stage=STAGE, error=error)
        await self.send(topics.DLQ, OutRecord(None, body, headers))
        self.metrics.dead_lettered.labels(self.provider).inc()

    async def send(self, topic: str, record: OutRecord) -> None:
        """`record` on `topic` (a `schemas.topics` name) once acknowledged, a broker error
        retried SEND_ATTEMPTS times.

        One record at a time, many polls concurrently: the Batcher puts those sent together in
        one batch per partition.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(SEND_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type((KafkaError, Overloaded)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.batcher.send(self.kafka.topic(topic), record)
