"""The ingress core every route builds on: admission (allow-list, lockout, credentials, body
limits), publishing to the broker with an answer only after its ack, and refusals in JSON.

A callback answered 503 may still reach calls.raw later (its send was only abandoned, not
withdrawn); the provider's retry then adds a duplicate, which event_id makes harmless.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import NoReturn

import msgspec
import structlog
from aiohttp import hdrs, web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from foundation import kafka as kafka_io
from foundation.settings import IngressSettings, KafkaSettings
from ingest.auth import Guard, Lockout
from ingest.bodies import not_a_json_object
from ingest.health import Metrics, Readiness
from ingest.tracked import TRACKED
from ingest.workers import Peers
from schemas import topics
from schemas.providers import WEBHOOK
from schemas.raw import RawMeta, dead_letter_headers, raw_headers

PROVIDERS = WEBHOOK
"""Providers whose callbacks the ingress takes."""

log = structlog.get_logger("callstream.ingest")

_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Accept = Callable[[web.Request, str, bytes], Awaitable[web.Response]]
"""A route's own part: (request, provider, admitted body) → its answer, or a Refusal."""


class Refusal(Exception):  # noqa: N818 - an answer, not a failure of the ingress
    """A callback answered with an error: status, short code, one sentence, extra headers."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers
        self.close = close
        """Close the connection after answering (a client that cannot be trusted to go on)."""

    def response(self) -> web.Response:
        answer = error_response(self.status, self.error, self.detail, self.headers)
        if self.close:
            answer.force_close()
        return answer


def _unknown(kind: str, provider: str) -> str:
    """Why a route has no such provider, naming the route that has it, if one does."""
    if kind == "webhook" and provider in TRACKED:
        return (
            f"{provider} sends no callbacks: register its calls at POST /v1/track/{provider} "
            "and its poller reports them."
        )
    if kind == "tracked" and provider in PROVIDERS:
        return f"{provider} is not polled: it sends its callbacks to POST /v1/callbacks/{provider}."
    return f"No {kind} provider is called {provider!r}."


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_encode({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )


class Ingress:
    """The handlers and what they share: settings, guards, metrics and the producer."""

    producer: AIOKafkaProducer
    batcher: kafka_io.Batcher
    """Both set while the app runs (producing)."""
    peers: Peers | None = None
    """The ingress's workers, when it is one of several (`--workers N`)."""

    def __init__(
        self, settings: IngressSettings, kafka: KafkaSettings, guards: Mapping[str, Guard]
    ) -> None:
        self.settings, self.kafka, self.guards = settings, kafka, guards
        self.metrics = Metrics()
        self.readiness = Readiness(self._ask_broker)
        self.lockout = Lockout(settings.auth_failures, settings.auth_window_s)
        self._retry_after = {hdrs.RETRY_AFTER: str(settings.retry_after_s)}
        self._publish_failures = _FailureLog()

    async def producing(self, _app: web.Application) -> AsyncIterator[None]:
        self.producer = kafka_io.producer(self.kafka)
        await self.producer.start()
        self.batcher = kafka_io.Batcher(
            self.producer,
            linger_s=self.settings.linger_ms / 1000,
            max_pending_bytes=self.settings.max_pending_bytes,
            ack_timeout_s=self.settings.publish_timeout_s,
        )
        try:
            yield
        finally:
            await self.batcher.close()
            await self.producer.stop()

    async def _ask_broker(self) -> None:
        await self.producer.client.fetch_all_metadata()

    def route(self, guards: Mapping[str, Guard], kind: str, accept: Accept) -> Handler:
        """A POST route's handler: `handle` with its guards, kind and `accept` (a partial, not a
        coroutine around it: each coroutine a request passes through costs it ~1,500
        instructions, twice over when it waits for the broker)."""
        return functools.partial(self.handle, guards, kind, accept)

    def callback(self) -> Handler:
        """POST /v1/callbacks/{provider}: the body to calls.raw."""
        return self.route(self.guards, "webhook", self._accept_callback)

    async def handle(
        self, guards: Mapping[str, Guard], kind: str, accept: Accept, request: web.Request
    ) -> web.Response:
        """What every POST route does around its own `accept`: the provider's guard (404 if it
        has none), admission, refusals answered in JSON, counted by provider (or "unknown") and
        status, and the in-flight gauge. A request admitted but then not accepted is released
        from its guard (a standard webhook's id), so that the provider may send it again."""
        provider = request.match_info["provider"]
        guard = guards.get(provider)
        self.metrics.in_flight += 1
        try:
            if guard is None:
                raise Refusal(404, "unknown_provider", _unknown(kind, provider))
            self._admit(request, provider, guard)
            body = await self._read(request)
            self._authenticate(request, provider, guard, body)
            try:
                answer = await accept(request, provider, body)
            except BaseException:
                guard.release(request.headers)
                raise
        except Refusal as refusal:
            answer = refusal.response()
        finally:
            self.metrics.in_flight -= 1
        self.metrics.answered(provider if guard is not None else "unknown", answer.status)
        return answer

    def _admit(self, request: web.Request, provider: str, guard: Guard) -> None:
        """Refuse a caller that may not call: not on the allow-list, or locked out. The peer's
        address is looked up only when either could refuse it."""
        if not guard.networks and not self.lockout.locked_out:
            return
        remote = request.remote or ""
        if not guard.admits(remote):
            raise Refusal(403, "forbidden", f"{remote} may not call for {provider}.")
        if (retry_after := self.lockout.retry_after(remote)) is not None:
            raise Refusal(
                429,
                "too_many_failures",
                f"{remote} failed authentication too often; try again in {retry_after} s.",
                {hdrs.RETRY_AFTER: str(retry_after)},
            )

    def _authenticate(self, request: web.Request, provider: str, guard: Guard, body: bytes) -> None:
        """Refuse credentials that are missing or wrong for `body`, counting the failure."""
        if (failure := guard.check(request.headers, body)) is not None:
            remote = request.remote or ""
            log.warning(
                "request_unauthenticated", provider=provider, remote=remote, error=failure.error
            )
            self.lockout.failed(remote)
            challenge = guard.challenge if failure.status == 401 else None
            raise Refusal(failure.status, failure.error, failure.detail, challenge)

    async def _accept_callback(
        self, request: web.Request, provider: str, body: bytes
    ) -> web.Response:
        meta = received(request, provider, "webhook")
        headers = raw_headers(meta)
        if (reason := not_a_json_object(body)) is not None:
            await self.reject(body, headers, "ingress", reason, f"The body is {reason}.")
        await self.publish(topics.RAW, body, headers)
        return accepted({"id": meta.request_id})

    async def _read(self, request: web.Request) -> bytes:
        """The body, refused up front by Content-Length and while reading (chunked bodies), and
        refused when it does not arrive in full within body_timeout_s."""
        if (request.content_length or 0) > self.settings.max_body_bytes:
            raise self._too_large()
        try:
            if request.content.is_eof():  # it came with the head, as small callbacks do
                return await request.read()
            async with asyncio.timeout(self.settings.body_timeout_s):
                return await request.read()  # enforces client_max_size as it reads
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        except TimeoutError:
            timeout = self.settings.body_timeout_s
            raise Refusal(
                408, "body_timeout", f"The body did not arrive within {timeout} s.", close=True
            ) from None

    def _too_large(self) -> Refusal:
        limit = self.settings.max_body_bytes
        return Refusal(413, "body_too_large", f"The body exceeds {limit} bytes.")

    async def reject(
        self, body: bytes, headers: topics.Headers, stage: str, reason: str, detail: str
    ) -> NoReturn:
        """Record a bad body in calls.dlq, then refuse it (400; 503 if the DLQ write fails)."""
        found = dict(headers)
        log.warning(
            "request_rejected",
            provider=found[topics.PROVIDER].decode(),
            request_id=found[topics.REQUEST_ID].decode(),
            stage=stage,
            error=reason,
        )
        await self.publish(topics.DLQ, body, dead_letter_headers(headers, stage, reason))
        raise Refusal(400, "invalid_body", detail)

    async def publish(
        self, topic: str, value: bytes | None, headers: topics.Headers, key: bytes | None = None
    ) -> None:
        """Return once the broker acknowledged the record on `topic` (a `schemas.topics` name),
        in a batch with the records published about the same time; Refusal 503 if not within
        the bound, or at once while too many bytes wait for the broker."""
        started = time.perf_counter()
        record = kafka_io.OutRecord(key, value, headers)
        try:
            await self.batcher.enqueue(self.kafka.topic(topic), record)  # publish_timeout_s bounds
        except kafka_io.Overloaded as exc:
            self._publish_failures.failed(topic, exc)
            raise Refusal(
                503,
                "overloaded",
                "Too many callbacks wait for the broker; send it again later.",
                self._retry_after,
            ) from None
        except (TimeoutError, KafkaError) as exc:
            self._publish_failures.failed(topic, exc)
            raise Refusal(
                503,
                "broker_unavailable",
                "The broker did not take it in time; send it again later.",
                self._retry_after,
            ) from None
        self.metrics.publish_seconds.observe(time.perf_counter() - started)

    async def readyz(self, _request: web.Request) -> web.Response:
        """GET /readyz: whether the broker answers; for a worker, every worker's broker."""
        return _readiness(
            await (self.readiness.ready() if self.peers is None else self.peers.ready())
        )

    async def metrics_text(self, _request: web.Request) -> web.Response:
        """GET /metrics: this process's; for a worker, every worker's, labelled `worker`."""
        if self.peers is None:
            return _exposition(generate_latest(self.metrics.registry))
        return _exposition(await self.peers.metrics())

    async def own_readyz(self, _request: web.Request) -> web.Response:
        """A worker's own readiness, on its private socket."""
        return _readiness(await self.readiness.ready())

    async def own_metrics(self, _request: web.Request) -> web.Response:
        """A worker's own metrics, on its private socket."""
        return _exposition(generate_latest(self.metrics.registry))


def _readiness(ready: bool) -> web.Response:
    if ready:
        return web.Response(body=b'{"status":"ready"}', content_type="application/json")
    return error_response(503, "not_ready", "The broker does not answer.")


def _exposition(body: bytes) -> web.Response:
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


class _FailureLog:
    """Publish failures logged at most once every LOG_EVERY_S with how many there were: while
    the broker is away every callback fails, and a line each would flood the log."""

    LOG_EVERY_S = 5.0

    def __init__(self) -> None:
        self._count, self._logged_at = 0, -self.LOG_EVERY_S

    def failed(self, topic: str, error: BaseException) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at >= self.LOG_EVERY_S:
            log.error("publish_failed", topic=topic, error=repr(error), failures=self._count)
            self._count, self._logged_at = 0, now


def received(request: web.Request, provider: str, source: str) -> RawMeta:
    """The raw metadata of `request`'s body, received now."""
    return RawMeta.received_now(provider, source, request.headers.get(hdrs.CONTENT_TYPE, ""))


def accepted(answer: dict[str, str]) -> web.Response:
    return web.Response(status=202, body=_encode(answer), content_type="application/json")
