"""`POST /v1/track/{provider}` (mobile_agent): register a call for its poller to follow.

mobile_agent reports nothing by itself: whoever places a call registers its callSerialNo here,
`{"callSerialNo": "…"}`. The registration goes to calls.track (compacted, key callSerialNo) and
is answered 202 only once the broker acknowledged it; the poller instance that owns its
partition polls the call from then on, until state 3 or its deadline. Registering a call twice
is harmless. A bad body is answered 400 and kept in calls.dlq (stage `track`). Authentication
and metrics are the callbacks': CALLSTREAM_INGRESS__AUTH__MOBILE_AGENT__*, counted under the
provider.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import msgspec
import structlog
from aiohttp import hdrs, web
from aiokafka.errors import KafkaError

from callstream import topics
from callstream.kafka import OutRecord
from callstream.records import RawMeta, dead_letter_headers, raw_headers
from ingest.app import Ingress, Refusal
from ingest.auth import Guard

TRACKED = frozenset({"mobile_agent"})
"""Providers whose calls are registered for polling."""
STAGE = "track"

log = structlog.get_logger("callstream.ingest")


class Track(msgspec.Struct, frozen=True):
    """A record of calls.track: a call to poll, and the last state published for it."""

    call_serial_no: str = msgspec.field(name="callSerialNo")
    registered_at: datetime
    """The deadline counts from here."""
    state: int | None = None
    """The last state the poller published (None: none yet)."""


class _Request(msgspec.Struct):
    call_serial_no: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] = msgspec.field(
        name="callSerialNo"
    )


_request = msgspec.json.Decoder(_Request)
_encode = msgspec.json.Encoder().encode


def track_record(track: Track) -> OutRecord:
    return OutRecord(track.call_serial_no.encode(), _encode(track), [])


def end_record(call_serial_no: str) -> OutRecord:
    """The tombstone that ends the tracking of a call."""
    return OutRecord(call_serial_no.encode(), None, [])


class Tracking:
    """The handler, with the ingress's producer, metrics and settings."""

    def __init__(self, ingress: Ingress, guards: Mapping[str, Guard]) -> None:
        self.ingress, self.guards = ingress, guards

    async def handle(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        guard = self.guards.get(provider)
        try:
            if guard is None:
                raise Refusal(
                    404, "unknown_provider", f"No tracked provider is called {provider!r}."
                )
            answer = await self._track(request, provider, guard)
        except Refusal as refusal:
            answer = refusal.response()
        self.ingress.metrics.answered(provider if guard is not None else "unknown", answer.status)
        return answer

    async def _track(self, request: web.Request, provider: str, guard: Guard) -> web.Response:
        if not guard.admits(request.remote):
            raise Refusal(403, "forbidden", f"{request.remote} may not track {provider} calls.")
        body = await request.read()
        if not guard.authenticates(request.headers, body):
            log.warning("track_unauthenticated", provider=provider, remote=request.remote)
            raise Refusal(
                401, "unauthorized", "The credentials are missing or wrong.", guard.challenge
            )
        try:
            serial = _request.decode(body).call_serial_no
        except msgspec.DecodeError as exc:
            await self._reject(request, provider, body, str(exc))
        await self._publish(track_record(Track(serial, datetime.now(UTC))))
        return web.json_response({"callSerialNo": serial}, status=202)

    async def _reject(
        self, request: web.Request, provider: str, body: bytes, reason: str
    ) -> NoReturn:
        """Keep a bad body in calls.dlq, then refuse it (400; 503 if the DLQ write fails)."""
        meta = RawMeta(
            provider=provider,
            source=STAGE,
            received_at=datetime.now(UTC),
            request_id=uuid.uuid4().hex,
            content_type=request.headers.get(hdrs.CONTENT_TYPE, ""),
            context={},
        )
        log.warning("track_rejected", provider=provider, request_id=meta.request_id, error=reason)
        headers = dead_letter_headers(raw_headers(meta), stage=STAGE, error=reason)
        await self._publish(OutRecord(None, body, headers), topics.DLQ)
        raise Refusal(
            400, "invalid_body", f'Expected {{"callSerialNo": "<1 to 50 characters>"}}: {reason}.'
        )

    async def _publish(self, record: OutRecord, topic: str = topics.TRACK) -> None:
        """Return once the broker acknowledged `record`; Refusal 503 if not within the bound."""
        settings, started = self.ingress.settings, time.perf_counter()
        try:
            async with asyncio.timeout(settings.publish_timeout_s):
                sent = await self.ingress.producer.send(
                    topic, record.value, key=record.key, headers=record.headers
                )
                await sent
        except (TimeoutError, KafkaError) as exc:
            log.error("publish_failed", topic=topic, error=repr(exc))
            raise Refusal(
                503,
                "broker_unavailable",
                "The broker did not take the registration in time; send it again later.",
                {hdrs.RETRY_AFTER: str(settings.retry_after_s)},
            ) from None
        self.ingress.metrics.publish_seconds.observe(time.perf_counter() - started)
