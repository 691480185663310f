"""`serve`: it refuses unsafe settings before anything starts, and drains before it stops."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from servers import Broker

from callstream import samples
from callstream.broker import free_port
from foundation.settings import IngressSettings, KafkaSettings, SettingsError
from ingest.server import serve

WAVECELL = samples.payloads("wavecell", 1)[0]
NOWHERE = KafkaSettings(bootstrap="127.0.0.1:1")  # any use of the broker would fail


async def test_unauthenticated_providers_are_not_served_beyond_loopback() -> None:
    settings = IngressSettings(host="0.0.0.0", port=free_port())  # noqa: S104
    with pytest.raises(SettingsError, match="CALLSTREAM_INGRESS__HOST: refusing"):
        await serve(settings, NOWHERE, asyncio.Event())


async def test_insecure_no_auth_allows_it(kafka: KafkaSettings) -> None:
    settings = IngressSettings(host="0.0.0.0", port=free_port(), insecure_no_auth=True)  # noqa: S104
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(serve(settings, kafka, stop), 10)


async def _until_listening(session: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)


async def _until_in_flight(session: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(10):
        while True:
            async with session.get(f"{base}/metrics") as response:
                if "callstream_ingress_in_flight_requests 1.0" in await response.text():
                    return
            await asyncio.sleep(0.02)


async def _until_refused(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionError:
                return
            writer.close()
            await asyncio.sleep(0.02)


async def test_on_stop_it_stops_listening_and_answers_the_callbacks_in_flight(
    own_broker: Broker, own_kafka: KafkaSettings
) -> None:
    broker, kafka = own_broker, own_kafka
    port = free_port()
    base, stop = f"http://127.0.0.1:{port}", asyncio.Event()
    server = asyncio.create_task(serve(IngressSettings(port=port), kafka, stop))
    try:
        async with aiohttp.ClientSession() as session:
            await _until_listening(session, base)
            broker.pause()  # holds the callback in flight
            try:
                callback = asyncio.create_task(
                    session.post(f"{base}/v1/callbacks/wavecell", data=WAVECELL)
                )
                await _until_in_flight(session, base)
                stop.set()
                await _until_refused(port)
                # Hold it past the point where a server that does not drain would have dropped
                # it; the answer below does not depend on how long.
                await asyncio.sleep(0.3)
            finally:
                broker.resume()
            async with await callback as response:
                assert response.status == 202
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
