"""`callstream poll`: every configured poller, until asked to stop.

A poller is configured when its BASE_URL is set (CALLSTREAM_POLL__<PROVIDER>__BASE_URL). The
pollers share one producer (acks=all) and one HTTP session. Several instances split the work by
consumer group (tracked calls and clients by partition), so `poll` scales like the other
services.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog

from foundation import kafka as kafka_io
from foundation.clock import SYSTEM, Clock
from foundation.service import serve_metrics
from foundation.settings import KafkaSettings, PollSettings, SettingsError
from ingest.pollers import POLLERS
from ingest.pollers.common import Plumbing
from ingest.pollers.metrics import Metrics

log = structlog.get_logger("callstream.poll")

PENDING_BYTES = 64 << 20
"""Poll answers waiting for the broker's ack, at most (more are retried as on a broker error)."""


async def serve(
    settings: PollSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
    clock: Clock = SYSTEM,
) -> None:
    """Run the configured pollers until `stop` is set, on `clock` (tests: a ManualClock).

    Raises SettingsError when none is configured or one's settings are incomplete, and
    PollerCrashedError when a poller fails in a way it does not handle (the supervisor or the
    container runtime restarts the service; its state is on Kafka).
    """
    providers = settings.configured
    if not providers:
        raise SettingsError(
            "CALLSTREAM_POLL__<PROVIDER>__BASE_URL: no poller is configured (providers: "
            f"{', '.join(POLLERS)})"
        )
    for provider in providers:
        POLLERS[provider].check(getattr(settings, provider))
    metrics = metrics or Metrics()
    await kafka_io.ensure_topics(kafka)
    serve_metrics(settings.metrics_port, metrics.registry)
    async with kafka_io.producer(kafka) as producer, aiohttp.ClientSession() as session:
        batcher = kafka_io.Batcher(producer, max_pending_bytes=PENDING_BYTES)
        plumbing = Plumbing(kafka, producer, batcher, session, metrics, clock)
        log.info("pollers_started", providers=providers, kafka=kafka.bootstrap)
        running = [
            asyncio.create_task(POLLERS[provider].run(getattr(settings, provider), plumbing, stop))
            for provider in providers
        ]
        try:
            await asyncio.gather(*running)  # raises what the first poller to fail raises
        finally:
            for poller in running:
                poller.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await batcher.close()
    log.info("pollers_stopped")
