"""The webhook ingress against the real broker: what is answered, and what is written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from aiokafka.structs import ConsumerRecord
from servers import Broker

from callstream import samples
from foundation.settings import KafkaSettings
from ingest.ingress import PROVIDERS
from schemas import topics
from schemas.raw import read_raw_headers

Client = TestClient[web.Request, web.Application]
StartIngress = Callable[..., AbstractAsyncContextManager[Client]]
ReadTopic = Callable[[str, int], Awaitable[list[ConsumerRecord[bytes, bytes]]]]

WAVECELL = samples.payloads("wavecell", 1)[0]
CALLBACK = "/v1/callbacks/wavecell"


async def _error(response: ClientResponse, status: int, error: str) -> None:
    """`response` is the JSON error answer the ingress gives for every refusal."""
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == error
    assert body["detail"].endswith(".")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_callback_is_answered_with_its_id_once_it_is_in_calls_raw(
    provider: str, ingress: StartIngress, read_topic: ReadTopic
) -> None:
    body = samples.payloads(provider, 1)[0]
    before = datetime.now(UTC)
    async with ingress() as client:
        response = await client.post(
            f"/v1/callbacks/{provider}", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 202
        answer = await response.json()
    (record,) = await read_topic(topics.RAW, 1)
    assert record.value == body
    meta = read_raw_headers(record.headers)
    assert (meta.provider, meta.source, meta.request_id) == (provider, "webhook", answer["id"])
    assert meta.content_type == "application/json"
    assert before <= meta.received_at <= datetime.now(UTC)
    assert meta.context == {}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"call ended", "JSON is malformed"),
        (b'[{"id": 1}]', "Expected `object`, got `array`"),
        (WAVECELL[:-20], "Input data was truncated"),
        (b"", "Input data was truncated"),
    ],
    ids=["not_json", "array", "truncated", "empty"],
)
async def test_a_body_that_is_not_a_json_object_is_refused_and_kept_in_the_dlq(
    body: bytes, reason: str, ingress: StartIngress, read_topic: ReadTopic
) -> None:
    async with ingress() as client:
        response = await client.post(CALLBACK, data=body)
        await _error(response, 400, "invalid_body")
        assert reason in (await response.json())["detail"]
    (record,) = await read_topic(topics.DLQ, 1)
    assert record.value == body
    headers = dict(record.headers)
    assert headers[topics.ERROR_STAGE] == b"ingress"
    assert headers[topics.ERROR].decode().startswith(f"not a JSON object: {reason}")
    assert read_raw_headers(record.headers).provider == "wavecell"


@pytest.mark.parametrize("provider", ["mobile_agent", "nobody"])  # a polled one, an unknown one
async def test_a_provider_without_webhooks_is_not_found(
    provider: str, ingress: StartIngress
) -> None:
    async with ingress() as client:
        response = await client.post(f"/v1/callbacks/{provider}", data=b"{}")
        await _error(response, 404, "unknown_provider")


async def test_a_body_over_the_limit_is_refused_by_length_and_while_read(
    ingress: StartIngress, read_topic: ReadTopic
) -> None:
    limit = 1024
    exact = b'{"pad": "' + b"x" * (limit - 11) + b'"}'
    assert len(exact) == limit

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * limit

    async with ingress(max_body_bytes=limit) as client:
        await _error(await client.post(CALLBACK, data=exact + b" "), 413, "body_too_large")
        await _error(await client.post(CALLBACK, data=chunked()), 413, "body_too_large")
        assert (await client.post(CALLBACK, data=exact)).status == 202
    (record,) = await read_topic(topics.RAW, 1)
    assert record.value == exact


async def test_aiohttp_refusals_are_json_too(ingress: StartIngress) -> None:
    async with ingress() as client:
        response = await client.get(CALLBACK)
        await _error(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == "POST"
        await _error(await client.post("/v1/elsewhere", data=b"{}"), 404, "not_found")


async def test_health_readiness_and_metrics(ingress: StartIngress) -> None:
    async with ingress() as client:
        assert (await client.post(CALLBACK, data=WAVECELL)).status == 202
        assert (await client.post(CALLBACK, data=b"[]")).status == 400
        assert (await client.post("/v1/callbacks/nobody", data=b"{}")).status == 404
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        response = await client.get("/metrics")
        text = await response.text()
    assert response.content_type == "text/plain"
    assert 'callstream_ingress_requests_total{provider="wavecell",status="202"} 1.0' in text
    assert 'callstream_ingress_requests_total{provider="wavecell",status="400"} 1.0' in text
    assert 'callstream_ingress_requests_total{provider="unknown",status="404"} 1.0' in text
    assert "callstream_ingress_publish_seconds_count 2.0" in text  # the raw and the DLQ write
    assert "callstream_ingress_in_flight_requests 0.0" in text


async def _ready(client: Client, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while (await client.get("/readyz")).status != 200:
            await asyncio.sleep(0.1)


async def test_while_the_broker_is_paused_callbacks_get_503_and_never_2xx(
    own_broker: Broker, own_kafka: KafkaSettings, ingress: StartIngress
) -> None:
    bound = 1.0
    async with ingress(own_kafka, publish_timeout_s=bound, retry_after_s=7) as client:
        assert (await client.post(CALLBACK, data=WAVECELL)).status == 202
        own_broker.pause()
        try:
            for body in (WAVECELL, b"[]"):  # a callback, and a bad body whose DLQ write fails
                started = time.monotonic()
                response = await client.post(CALLBACK, data=body)
                assert time.monotonic() - started < 2 * bound
                await _error(response, 503, "broker_unavailable")
                assert response.headers["Retry-After"] == "7"
            await _error(await client.get("/readyz"), 503, "not_ready")
        finally:
            own_broker.resume()
        await _ready(client)
        assert (await client.post(CALLBACK, data=WAVECELL)).status == 202
