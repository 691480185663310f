"""The webhook ingress app: a provider's callback goes unchanged to calls.raw, and is answered 202
only once the broker has acknowledged it (acks=all). Whatever cannot be taken is answered with
a JSON error, and no callback is ever answered 2xx unless it was written.

A callback answered 503 may still reach calls.raw later (its send was only abandoned, not
withdrawn); the provider's retry then adds a duplicate, which event_id makes harmless.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import NoReturn

import msgspec
import structlog
from aiohttp import hdrs, web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from callstream import kafka as kafka_io
from callstream import topics
from callstream.records import RawMeta, dead_letter_headers, raw_headers
from callstream.settings import IngressSettings, KafkaSettings
from ingest.auth import Guard, guards
from ingest.health import Metrics, Readiness
from normalize import ADAPTERS

PROVIDERS = frozenset(name for name, adapter in ADAPTERS.items() if adapter.source == "webhook")

log = structlog.get_logger("callstream.ingest")

_json_object = msgspec.json.Decoder(dict[str, msgspec.Raw])  # validates without building values
_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(Exception):  # noqa: N818 - an answer, not a failure of the ingress
    """A callback answered with an error: status, short code, one sentence, extra headers."""

    def __init__(
        self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers

    def response(self) -> web.Response:
        return error_response(self.status, self.error, self.detail, self.headers)


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_encode({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def create_app(settings: IngressSettings, kafka: KafkaSettings) -> web.Application:
    """The app; its producer starts with the app and stops after the last request is answered.

    Raises SettingsError for bad authentication settings (see ingest.auth.guards).
    """
    from ingest.track import TRACKED, Tracking  # noqa: PLC0415 - it builds on Ingress

    every = guards(settings.auth, PROVIDERS | TRACKED)
    ingress = Ingress(settings, kafka, {name: every[name] for name in PROVIDERS})
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_json_errors])
    app.cleanup_ctx.append(ingress.producing)
    app.router.add_post("/v1/callbacks/{provider}", ingress.callback)
    tracking = Tracking(ingress, {name: every[name] for name in TRACKED})
    app.router.add_post("/v1/track/{provider}", tracking.handle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ingress.readyz)
    app.router.add_get("/metrics", ingress.metrics_text)
    return app


class Ingress:
    """The handlers and what they share: settings, guards, metrics and the producer."""

    producer: AIOKafkaProducer
    """Set while the app runs (producing)."""

    def __init__(
        self, settings: IngressSettings, kafka: KafkaSettings, guards: Mapping[str, Guard]
    ) -> None:
        self.settings, self.kafka, self.guards = settings, kafka, guards
        self.metrics = Metrics()
        self.readiness = Readiness(self._ask_broker)
        self._retry_after = {hdrs.RETRY_AFTER: str(settings.retry_after_s)}

    async def producing(self, _app: web.Application) -> AsyncIterator[None]:
        self.producer = kafka_io.producer(self.kafka)
        await self.producer.start()
        try:
            yield
        finally:
            await self.producer.stop()

    async def _ask_broker(self) -> None:
        await self.producer.client.fetch_all_metadata()

    async def callback(self, request: web.Request) -> web.Response:
        """POST /v1/callbacks/{provider}: counted by provider (or "unknown") and status."""
        provider = request.match_info["provider"]
        guard = self.guards.get(provider)
        self.metrics.in_flight += 1
        try:
            if guard is None:
                raise Refusal(
                    404, "unknown_provider", f"No webhook provider is called {provider!r}."
                )
            answer = await self._accept(request, provider, guard)
        except Refusal as refusal:
            answer = refusal.response()
        finally:
            self.metrics.in_flight -= 1
        self.metrics.answered(provider if guard is not None else "unknown", answer.status)
        return answer

    async def _accept(self, request: web.Request, provider: str, guard: Guard) -> web.Response:
        if not guard.admits(request.remote):
            raise Refusal(403, "forbidden", f"{request.remote} may not call back for {provider}.")
        body = await self._read(request)
        if not guard.authenticates(request.headers, body):
            log.warning("callback_unauthenticated", provider=provider, remote=request.remote)
            raise Refusal(
                401, "unauthorized", "The credentials are missing or wrong.", guard.challenge
            )
        meta = RawMeta(
            provider=provider,
            source="webhook",
            received_at=datetime.now(UTC),
            request_id=uuid.uuid4().hex,
            content_type=request.headers.get(hdrs.CONTENT_TYPE, ""),
            context={},
        )
        headers = raw_headers(meta)
        try:
            _json_object.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError (not an object) included
            reason = f"not a JSON object: {exc}"
            await self._reject(provider, meta.request_id, body, headers, reason)
        await self._publish(topics.RAW, body, headers)
        return web.Response(
            status=202, body=_encode({"id": meta.request_id}), content_type="application/json"
        )

    async def _read(self, request: web.Request) -> bytes:
        """The body, refused up front by Content-Length and while reading (chunked bodies)."""
        limit = self.settings.max_body_bytes
        too_large = Refusal(413, "body_too_large", f"The body exceeds {limit} bytes.")
        if (request.content_length or 0) > limit:
            raise too_large
        try:
            return await request.read()  # enforces client_max_size as it reads
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    async def _reject(
        self, provider: str, request_id: str, body: bytes, headers: topics.Headers, reason: str
    ) -> NoReturn:
        """Record a bad body in calls.dlq, then refuse it (400; 503 if the DLQ write fails)."""
        log.warning("callback_rejected", provider=provider, request_id=request_id, error=reason)
        dead = dead_letter_headers(headers, stage="ingress", error=reason)
        await self._publish(topics.DLQ, body, dead)
        raise Refusal(400, "invalid_body", f"The body is {reason}.")

    async def _publish(self, topic: str, body: bytes, headers: topics.Headers) -> None:
        """Return once the broker acknowledged the record; Refusal 503 if not within the bound."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await (await self.producer.send(topic, body, headers=headers))
        except (TimeoutError, KafkaError) as exc:
            log.error("publish_failed", topic=topic, error=repr(exc))
            raise Refusal(
                503,
                "broker_unavailable",
                "The broker did not take the callback in time; send it again later.",
                self._retry_after,
            ) from None
        self.metrics.publish_seconds.observe(time.perf_counter() - started)

    async def readyz(self, _request: web.Request) -> web.Response:
        if await self.readiness.ready():
            return web.Response(body=b'{"status":"ready"}', content_type="application/json")
        return error_response(503, "not_ready", "The broker does not answer.")

    async def metrics_text(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST},
        )


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, wrong method) answered in JSON like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = exc.headers.get(hdrs.ALLOW)
        return error_response(
            exc.status,
            exc.reason.lower().replace(" ", "_"),
            f"{exc.reason}: {request.method} {request.path}.",
            {hdrs.ALLOW: allow} if allow is not None else None,
        )
