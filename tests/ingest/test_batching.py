"""The ingress produces callbacks in batches and still answers 202 only after the broker's ack:
what a paused, a killed and a slow broker do to callbacks in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web
from aiohttp.test_utils import TestClient
from servers import Broker

from callstream import samples
from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from schemas import topics
from schemas.raw import read_raw_headers

Client = TestClient[web.Request, web.Application]
StartIngress = Callable[..., AbstractAsyncContextManager[Client]]

BODIES = samples.payloads("wavecell", 40)
CALLBACK = "/v1/callbacks/wavecell"


async def _in_flight(client: Client, count: int) -> None:
    """Until `count` callbacks are in the ingress's hands."""
    async with asyncio.timeout(10):
        while (
            f"callstream_ingress_in_flight_requests {count:.1f}"
            not in await (await client.get("/metrics")).text()
        ):
            await asyncio.sleep(0.02)


async def _post(client: Client, body: bytes) -> tuple[int, dict[str, str]]:
    async with client.post(CALLBACK, data=body) as response:
        return response.status, await response.json()


async def test_callbacks_batched_while_the_broker_is_paused_are_answered_only_after_it_resumes(
    own_broker: Broker, own_kafka: KafkaSettings, ingress: StartIngress
) -> None:
    async with ingress(own_kafka, publish_timeout_s=30) as client:
        assert (await _post(client, BODIES[0]))[0] == 202  # the producer is connected
        own_broker.pause()
        try:
            posts = [asyncio.create_task(_post(client, body)) for body in BODIES]
            await _in_flight(client, len(BODIES))
            # Hold them past the point where an answer given before the ack would have come.
            await asyncio.sleep(0.3)
            assert not any(post.done() for post in posts)
        finally:
            own_broker.resume()
        answers = await asyncio.wait_for(asyncio.gather(*posts), 30)
    assert {status for status, _ in answers} == {202}
    raw = await kafka_io.read_all(own_kafka, topics.RAW)
    by_id = {read_raw_headers(record.headers).request_id: record.value for record in raw}
    assert {
        answer["id"]: body for (_, answer), body in zip(answers, BODIES, strict=True)
    }.items() <= (by_id.items())


async def test_a_killed_broker_gets_callbacks_a_503_within_the_bound(
    own_broker: Broker, own_kafka: KafkaSettings, ingress: StartIngress
) -> None:
    bound = 1.0
    async with ingress(own_kafka, publish_timeout_s=bound, retry_after_s=7) as client:
        assert (await _post(client, BODIES[0]))[0] == 202
        own_broker.kill()
        started = time.monotonic()
        answers = await asyncio.gather(*(_post(client, body) for body in BODIES[:10]))
        assert time.monotonic() - started < 2 * bound + 1
    assert {(status, answer["error"]) for status, answer in answers} == {
        (503, "broker_unavailable")
    }


async def test_past_max_pending_bytes_callbacks_are_refused_at_once(
    own_broker: Broker, own_kafka: KafkaSettings, ingress: StartIngress
) -> None:
    async with ingress(own_kafka, publish_timeout_s=30, max_pending_bytes=len(BODIES[1])) as client:
        assert (await _post(client, BODIES[0]))[0] == 202
        own_broker.pause()
        try:
            waiting = asyncio.create_task(_post(client, BODIES[1]))
            await _in_flight(client, 1)
            status, answer = await asyncio.wait_for(_post(client, BODIES[2]), 5)
            assert (status, answer["error"]) == (503, "overloaded")
        finally:
            own_broker.resume()
        assert (await asyncio.wait_for(waiting, 30))[0] == 202
