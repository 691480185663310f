"""`callstream ingress`: serve the webhook app until asked to stop, then drain and stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

import structlog
from aiohttp import web

from foundation import kafka as kafka_io
from foundation.errors import Unavailable
from foundation.settings import IngressSettings, KafkaSettings
from ingest.app import create_app, status_app
from ingest.auth import guards, refuse_exposure
from ingest.ingress import PROVIDERS
from ingest.tracked import TRACKED
from ingest.workers import Worker

log = structlog.get_logger("callstream.ingest")

GUARDED = PROVIDERS | TRACKED
"""Every provider the ingress takes something from."""


def check(settings: IngressSettings) -> None:
    """Raise SettingsError for settings that are wrong or would expose an unauthenticated
    provider beyond loopback (before anything starts)."""
    refuse_exposure(settings.host, settings.auth, GUARDED, insecure=settings.insecure_no_auth)
    guards(settings.auth, GUARDED)


def claim_port(settings: IngressSettings) -> None:
    """Raise Unavailable if something listens on the ingress's port already: workers share it
    (SO_REUSEPORT), and would share it with a second ingress too unless it is checked first."""
    with socket.socket(_family(settings.host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            _refuse_taken(settings, exc)
            raise


async def serve(
    settings: IngressSettings,
    kafka: KafkaSettings,
    stop: asyncio.Event,
    *,
    worker: Worker | None = None,
) -> None:
    """Serve callbacks on settings.host:settings.port until `stop` is set; as `worker` of
    several, sharing the port (SO_REUSEPORT) and serving its status on its private socket.

    Raises SettingsError before touching the broker when the settings are wrong or would expose
    an unauthenticated provider beyond loopback. On stop: no new connections, requests in flight
    are answered (they wait at most publish_timeout_s), then the producer flushes and stops.
    """
    check(settings)
    app = create_app(settings, kafka, worker=worker)
    await kafka_io.ensure_topics(kafka)  # before the producer asks for any topic's metadata
    async with contextlib.AsyncExitStack() as serving:  # cleaned up in reverse order
        if worker is not None:  # its status answers its siblings until it has drained
            status = web.AppRunner(status_app(app), access_log=None)
            await status.setup()
            serving.push_async_callback(status.cleanup)
            await web.UnixSite(status, str(worker.socket())).start()
        shutdown_timeout = settings.publish_timeout_s + 1.0
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        serving.push_async_callback(runner.cleanup)
        try:
            site = web.TCPSite(runner, settings.host, settings.port, reuse_port=worker is not None)
            await site.start()
        except OSError as exc:
            _refuse_taken(settings, exc)
            raise
        log.info(
            "ingress_listening",
            host=settings.host,
            port=settings.port,
            worker=None if worker is None else worker.index,
            providers=sorted(GUARDED),
            kafka=kafka.bootstrap,
        )
        await stop.wait()
    log.info("ingress_stopped")


def _refuse_taken(settings: IngressSettings, exc: OSError) -> None:
    """Raise Unavailable, in callstream's words, if `exc` says the port is taken."""
    if exc.errno == errno.EADDRINUSE:
        raise Unavailable(
            f"port {settings.port} on {settings.host} is already in use (the ingress's)"
        ) from exc


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
