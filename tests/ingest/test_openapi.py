"""The ingress's OpenAPI document is served at /openapi.json and is true: schemathesis generates
requests from it, valid and invalid, and checks every answer against it (status documented, body
and headers as described, no 5xx, invalid requests refused, valid ones accepted)."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from servers import SharedBroker

from callstream.broker import free_port
from foundation import kafka as kafka_io
from foundation.settings import IngressSettings, KafkaSettings
from ingest import openapi
from ingest.ingress import PROVIDERS
from ingest.server import serve
from ingest.tracked import TRACKED
from schemas import topics
from schemas.raw import read_raw_headers

SCHEMA = schemathesis.openapi.from_dict(openapi.document(PROVIDERS, TRACKED))


@dataclass
class LiveIngress:
    """The real ingress on a port, on the session's broker under a topic prefix of its own, in a
    thread of its own."""

    url: str
    kafka: KafkaSettings
    answers: Counter[int] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    """cs-request-id of each callback answered 202."""
    registered: set[str] = field(default_factory=set)
    """callSerialNo of each registration answered 202."""


@pytest.fixture(scope="module")
def live_ingress(shared_broker: SharedBroker) -> Iterator[LiveIngress]:
    """Serves while the module's tests run (schemathesis calls it synchronously); then checks
    that calls.raw holds exactly the callbacks answered 202, calls.track exactly the
    registrations answered 202, and calls.dlq exactly the 400s."""
    port, started = free_port(), threading.Event()
    kafka = KafkaSettings(bootstrap=shared_broker.bootstrap, topic_prefix=shared_broker.prefix())
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    box: list[LiveIngress] = []
    failed: list[BaseException] = []

    async def run() -> None:
        box.append(LiveIngress(f"http://127.0.0.1:{port}", kafka))
        task = asyncio.create_task(serve(IngressSettings(port=port), kafka, stop))
        while not _listening(port):
            assert not task.done(), task
            await asyncio.sleep(0.05)
        started.set()
        await task
        await _check_written(box[0])

    def thread_main() -> None:
        try:
            loop.run_until_complete(run())
        except BaseException as exc:  # raised again in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    assert started.wait(60), f"the ingress did not start: {failed}"
    yield box[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(60)
    loop.close()
    assert not thread.is_alive()
    if failed:
        raise failed[0]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def _check_written(live: LiveIngress) -> None:
    raws = await kafka_io.read_all(live.kafka, topics.RAW)
    assert sorted(read_raw_headers(m.headers).request_id for m in raws) == sorted(live.accepted)
    tracks = await kafka_io.read_all(live.kafka, topics.TRACK)
    assert {(m.key or b"").decode() for m in tracks} == live.registered
    dead = await kafka_io.read_all(live.kafka, topics.DLQ)
    assert len(dead) == live.answers[400]
    assert {dict(m.headers)[topics.ERROR_STAGE] for m in dead} <= {b"ingress", b"track"}


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_answer_is_as_documented(case: schemathesis.Case, live_ingress: LiveIngress) -> None:
    response = case.call_and_validate(base_url=live_ingress.url)
    live_ingress.answers[response.status_code] += 1
    if response.status_code == 202 and case.operation.path == "/v1/track/{provider}":
        live_ingress.registered.add(response.json()["callSerialNo"])
    elif response.status_code == 202:
        live_ingress.accepted.append(response.json()["id"])


def test_the_document_is_served(live_ingress: LiveIngress) -> None:
    with urllib.request.urlopen(f"{live_ingress.url}/openapi.json") as answer:  # noqa: S310
        assert answer.read() == openapi.render(PROVIDERS, TRACKED)
