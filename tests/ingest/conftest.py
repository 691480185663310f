"""The ingress under test: the real app on a free port, writing to the test's broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.structs import ConsumerRecord

from foundation import kafka as kafka_io
from foundation.settings import IngressSettings, KafkaSettings
from ingest.app import create_app

Client = TestClient[web.Request, web.Application]
StartIngress = Callable[..., AbstractAsyncContextManager[Client]]
ReadTopic = Callable[[str, int], Awaitable[list[ConsumerRecord[bytes, bytes]]]]


@pytest.fixture
def ingress(kafka: KafkaSettings) -> StartIngress:
    """`async with ingress(**settings) as client:` serves the app made with those settings,
    writing to the test's `kafka` (or to the broker of the settings given first); `clock=`
    replaces time.time for authentication (standard_webhooks timestamps)."""

    @asynccontextmanager
    async def start(
        to: KafkaSettings = kafka, clock: Callable[[], float] = time.time, **settings: Any
    ) -> AsyncIterator[Client]:
        app = create_app(IngressSettings(**settings), to, clock=clock)
        async with TestClient(TestServer(app)) as client:
            yield client

    return start


@pytest.fixture
def read_topic(kafka: KafkaSettings) -> ReadTopic:
    """`await read_topic(topic, n)`: the topic's first `n` records, read from the beginning."""

    async def read(topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = kafka_io.consumer(kafka, topic, group_id=None)
        await consumer.start()
        records: list[ConsumerRecord[bytes, bytes]] = []
        try:
            async with asyncio.timeout(10):
                while len(records) < count:
                    for batch in (await consumer.getmany(timeout_ms=200)).values():
                        records.extend(batch)
        finally:
            await consumer.stop()
        return records

    return read
