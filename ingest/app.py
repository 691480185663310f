"""The webhook ingress app: a provider's callback goes unchanged to calls.raw, and is answered 202
only once the broker has acknowledged it (acks=all). Whatever cannot be taken is answered with
a JSON error, and no callback is ever answered 2xx unless it was written. The routes and their
answers are described in ingest/openapi.py, served at /openapi.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from foundation.settings import IngressSettings, KafkaSettings
from ingest import openapi
from ingest.auth import Clock, guards
from ingest.ingress import PROVIDERS, Handler, Ingress, error_response
from ingest.track import Tracking
from ingest.tracked import TRACKED
from ingest.workers import Peers, Worker

INGRESS = web.AppKey("ingress", Ingress)


def create_app(
    settings: IngressSettings,
    kafka: KafkaSettings,
    *,
    clock: Clock = time.time,
    worker: Worker | None = None,
) -> web.Application:
    """The app; its producer starts with the app and stops after the last request is answered.
    As `worker` of several, its /readyz and /metrics answer for all (ingest.workers), and
    `status_app` is what it serves its siblings.

    Slow clients: aiohttp (>= 3.14.4) closes a connection that has not sent a complete request
    head within keepalive_timeout of opening or of its last answer, which covers idle
    keep-alives and dribbled headers alike (idle_timeout_s); a dribbled body is refused with
    408 by `_read` (body_timeout_s). Raises SettingsError for bad authentication settings (see
    ingest.auth.guards); `clock` is what standard_webhooks timestamps are compared with.
    """
    every = guards(settings.auth, PROVIDERS | TRACKED, clock)
    ingress = Ingress(settings, kafka, {name: every[name] for name in PROVIDERS})
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"keepalive_timeout": settings.idle_timeout_s, "logger": _http_log},
    )
    app[INGRESS] = ingress
    app.cleanup_ctx.append(ingress.producing)
    if worker is not None:
        ingress.peers = Peers(worker)
        app.cleanup_ctx.append(_asking(ingress.peers))
    app.router.add_post("/v1/callbacks/{provider}", ingress.callback())
    tracking = Tracking(ingress, {name: every[name] for name in TRACKED})
    app.router.add_post("/v1/track/{provider}", tracking.route())
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ingress.readyz)
    app.router.add_get("/metrics", ingress.metrics_text)
    app.router.add_get("/openapi.json", _document(openapi.render(PROVIDERS, TRACKED)))
    _refuse_the_rest(app.router)
    return app


def status_app(app: web.Application) -> web.Application:
    """What a worker serves its siblings on its private socket: its own readiness and metrics."""
    ingress = app[INGRESS]
    status = web.Application()
    status.router.add_get("/readyz", ingress.own_readyz)
    status.router.add_get("/metrics", ingress.own_metrics)
    return status


def _asking(peers: Peers) -> Callable[[web.Application], AsyncIterator[None]]:
    async def asking(_app: web.Application) -> AsyncIterator[None]:
        await peers.start()
        try:
            yield
        finally:
            await peers.close()

    return asking


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def _document(body: bytes) -> Handler:
    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return serve


class _WithoutRequestBytes(logging.Filter):
    """aiohttp logs a malformed request it refuses (400 before any route) with its exception,
    whose message quotes the offending bytes: they can be a header's value, credentials
    included. Those are logged by exception type and status only; other records pass as they
    are (an exception in a handler keeps its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args, record.exc_info = "http_request_malformed", (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.__dict__.update(error=type(error).__name__, status=error.code)
        return True


_http_log = logging.getLogger("callstream.ingest.http")
_http_log.addFilter(_WithoutRequestBytes())


def _refuse_the_rest(router: web.UrlDispatcher) -> None:
    """What aiohttp would refuse itself (no such path, wrong method), answered in JSON like our
    refusals, by routes of their own rather than a middleware: a middleware costs every request
    ~4 µs. Each path's other methods get 405 with Allow; any other path 404."""
    for resource in list(router.resources()):
        allowed = sorted(route.method for route in resource)
        resource.add_route(hdrs.METH_ANY, _refusal(405, "Method Not Allowed", ",".join(allowed)))
    router.add_route(hdrs.METH_ANY, "/{path:.*}", _refusal(404, "Not Found"))


def _refusal(status: int, reason: str, allow: str | None = None) -> Handler:
    headers = {hdrs.ALLOW: allow} if allow is not None else None
    error = reason.lower().replace(" ", "_")

    async def refuse(request: web.Request) -> web.Response:
        detail = f"{reason}: {request.method} {request.path}."
        return error_response(status, error, detail, headers)

    return refuse
