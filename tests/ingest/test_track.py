"""POST /v1/track/mobile_agent against the real embedded broker: registered once acknowledged."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import msgspec
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from aiokafka.structs import ConsumerRecord
from servers import Broker

from foundation.log import configure_logging
from foundation.settings import KafkaSettings, ProviderAuth, Secret
from schemas import topics
from schemas.raw import read_raw_headers
from schemas.records import Track

StartIngress = Callable[..., AbstractAsyncContextManager[TestClient[web.Request, web.Application]]]
ReadTopic = Callable[[str, int], Awaitable[list[ConsumerRecord[bytes, bytes]]]]
TRACK = "/v1/track/mobile_agent"


async def _error(response: ClientResponse, status: int, error: str) -> str:
    assert response.status == status
    body = await response.json()
    assert body["error"] == error
    return body["detail"]


async def test_a_registration_is_answered_once_it_is_on_calls_track(
    ingress: StartIngress, read_topic: ReadTopic
) -> None:
    before = datetime.now(UTC)
    async with ingress() as client:
        response = await client.post(TRACK, json={"callSerialNo": "645735364434067472"})
        assert response.status == 202
        assert await response.json() == {"callSerialNo": "645735364434067472"}
        metrics = await (await client.get("/metrics")).text()
    (record,) = await read_topic(topics.TRACK, 1)
    assert record.key == b"645735364434067472"
    track = msgspec.json.decode(record.value, type=Track)
    assert (track.call_serial_no, track.state) == ("645735364434067472", None)
    assert before <= track.registered_at <= datetime.now(UTC)
    assert 'callstream_ingress_requests_total{provider="mobile_agent",status="202"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"645735364434067472", "Expected `object`"),
        (b"{}", "missing required field `callSerialNo`"),
        (b'{"callSerialNo": 645735364434067472}', "Expected `str`, got `int`"),
        (b'{"callSerialNo": ""}', "Expected `str` of length >= 1"),
        (b'{"callSerialNo": "' + b"1" * 51 + b'"}', "Expected `str` of length <= 50"),
    ],
    ids=["not_an_object", "missing", "number", "empty", "too_long"],
)
async def test_a_bad_registration_is_refused_and_kept_in_the_dlq(
    body: bytes, reason: str, ingress: StartIngress, read_topic: ReadTopic
) -> None:
    async with ingress() as client:
        detail = await _error(await client.post(TRACK, data=body), 400, "invalid_body")
    assert reason in detail
    (letter,) = await read_topic(topics.DLQ, 1)
    assert letter.value == body
    headers = dict(letter.headers)
    assert headers[topics.ERROR_STAGE] == b"track"
    assert reason in headers[topics.ERROR].decode()
    assert read_raw_headers(letter.headers).provider == "mobile_agent"


@pytest.mark.parametrize("provider", ["wavecell", "vpbx", "nobody"])
async def test_only_tracked_providers_take_registrations(
    provider: str, ingress: StartIngress
) -> None:
    async with ingress() as client:
        response = await client.post(f"/v1/track/{provider}", json={"callSerialNo": "1"})
        await _error(response, 404, "unknown_provider")


async def test_registrations_authenticate_like_callbacks(ingress: StartIngress) -> None:
    auth = {"mobile_agent": ProviderAuth(method="bearer", token=Secret("s3cret"))}
    async with ingress(auth=auth) as client:
        response = await client.post(TRACK, json={"callSerialNo": "1"})
        await _error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        response = await client.post(
            TRACK, json={"callSerialNo": "1"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert response.status == 202
        # mobile_agent's credentials do not open its callbacks route: it has none
        response = await client.post(
            "/v1/callbacks/mobile_agent", data=b"{}", headers={"Authorization": "Bearer s3cret"}
        )
        await _error(response, 404, "unknown_provider")


async def test_while_the_broker_is_paused_registrations_get_503(
    own_broker: Broker, own_kafka: KafkaSettings, ingress: StartIngress
) -> None:
    async with ingress(own_kafka, publish_timeout_s=0.5, retry_after_s=3) as client:
        own_broker.pause()
        try:
            response = await client.post(TRACK, json={"callSerialNo": "1"})
        finally:
            own_broker.resume()
        await _error(response, 503, "broker_unavailable")
        assert response.headers["Retry-After"] == "3"


async def test_callbacks_of_a_polled_provider_point_at_its_track_route(
    ingress: StartIngress,
) -> None:
    async with ingress() as client:
        response = await client.post("/v1/callbacks/mobile_agent", data=b"{}")
        detail = await _error(response, 404, "unknown_provider")
        assert "POST /v1/track/mobile_agent" in detail
        response = await client.post("/v1/track/wavecell", json={"callSerialNo": "1"})
        assert "POST /v1/callbacks/wavecell" in await _error(response, 404, "unknown_provider")


@pytest.mark.parametrize("polled", [False, True])
async def test_a_registration_without_a_poller_is_taken_and_warned_of_once(
    polled: bool,
    ingress: StartIngress,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith("CALLSTREAM_POLL__"):
            monkeypatch.delenv(name)
    if polled:
        monkeypatch.setenv("CALLSTREAM_POLL__MOBILE_AGENT__BASE_URL", "http://127.0.0.1:9/ma")
        monkeypatch.setenv("CALLSTREAM_POLL__MOBILE_AGENT__APP_KEY", "key")
        monkeypatch.setenv("CALLSTREAM_POLL__MOBILE_AGENT__APP_SECRET", "secret")
    configure_logging(json=True)
    async with ingress() as client:
        for serial in ("1", "2"):
            response = await client.post(TRACK, json={"callSerialNo": serial})
            assert response.status == 202
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    warned = [line for line in lines if line["event"] == "track_without_poller"]
    assert len(warned) == (0 if polled else 1)
    if warned:
        assert "CALLSTREAM_POLL__MOBILE_AGENT__BASE_URL" in warned[0]["detail"]
