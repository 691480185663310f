"""`callstream ingress`: serve the webhook app until asked to stop, then drain and stop."""

from __future__ import annotations

import asyncio
import errno

import structlog
from aiohttp import web

from foundation import kafka as kafka_io
from foundation.errors import Unavailable
from foundation.settings import IngressSettings, KafkaSettings
from ingest.app import create_app
from ingest.auth import refuse_exposure
from ingest.ingress import PROVIDERS
from ingest.tracked import TRACKED

log = structlog.get_logger("callstream.ingest")


async def serve(settings: IngressSettings, kafka: KafkaSettings, stop: asyncio.Event) -> None:
    """Serve callbacks on settings.host:settings.port until `stop` is set.

    Raises SettingsError before touching the broker when the settings are wrong or would expose
    an unauthenticated provider beyond loopback. On stop: no new connections, requests in flight
    are answered (they wait at most publish_timeout_s), then the producer flushes and stops.
    """
    guarded = PROVIDERS | TRACKED
    refuse_exposure(settings.host, settings.auth, guarded, insecure=settings.insecure_no_auth)
    app = create_app(settings, kafka)
    await kafka_io.ensure_topics(kafka)  # before the producer asks for any topic's metadata
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.publish_timeout_s + 1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise Unavailable(
                f"port {settings.port} on {settings.host} is already in use (the ingress's)"
            ) from exc
        log.info(
            "ingress_listening",
            host=settings.host,
            port=settings.port,
            providers=sorted(guarded),
            kafka=kafka.bootstrap,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
    log.info("ingress_stopped")
