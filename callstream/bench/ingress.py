"""`callstream bench ingress`: requests/s of the webhook ingress against a bare aiohttp handler.

The same load (CONNECTIONS concurrent aiohttp requests, realistic Wavecell bodies) drives, in
turn, (a) the ingress, which answers 202 only once the embedded broker acknowledged the body
(acks=all), and (b) a handler that only reads the body and answers 202. Each server runs in its
own process, the load generator in this one, the broker in a third. The two take turns for
ROUNDS rounds of `seconds / ROUNDS` each, and each side's best round is kept, so that a noisy
neighbour lowers neither figure. Afterwards every id the ingress answered 202 is looked up in
calls.raw: `missing` counts those not found.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import msgspec
from aiohttp import web

from callstream import samples
from callstream.bench import Target
from callstream.broker import EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.log import configure_logging
from foundation.service import run_until_signalled
from foundation.settings import IngressSettings, KafkaSettings
from ingest.server import serve
from schemas import topics

CONNECTIONS = 64
POOL = 2_000
ROUNDS = 3
WARMUP_S = 1.0
TARGET_RATIO = 0.8
TARGETS = (
    Target("ratio", at_least=TARGET_RATIO),
    Target("errors", at_most=0),
    Target("missing", at_most=0),
)
SIDES = ("ingress", "bare")
_HEADERS = {"Content-Type": "application/json"}


class _Accepted(msgspec.Struct):
    id: str


_accepted = msgspec.json.Decoder(_Accepted)


@dataclass
class _Load:
    """What one load run saw: answered requests, their latencies, and the ids of the 202s."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    errors: int = 0

    @property
    def per_s(self) -> float:
        return len(self.ids) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, percent: int) -> float:
        if len(self.latencies) < 2:
            return 0.0
        return round(statistics.quantiles(self.latencies, n=100)[percent - 1] * 1000, 2)


def run(seconds: float = 10.0) -> dict[str, float]:
    """Measured rates, latencies, errors and missing records (see report)."""
    return asyncio.run(_measure(seconds))


async def _measure(seconds: float) -> dict[str, float]:
    async with EmbeddedBroker(free_port()) as broker:
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        await kafka_io.ensure_topics(kafka)
        runs = await _take_turns(broker.bootstrap, samples.payloads("wavecell", POOL), seconds)
        accepted = {request_id for load in runs["ingress"] for request_id in load.ids}
        missing = await _missing(kafka, accepted)
    ingress, bare = (max(runs[side][1:], key=lambda load: load.per_s) for side in SIDES)
    return {
        "seconds": seconds,
        "connections": CONNECTIONS,
        "ingress_per_s": round(ingress.per_s),
        "bare_per_s": round(bare.per_s),
        "ratio": round(ingress.per_s / bare.per_s, 2) if bare.per_s else 0.0,
        "errors": sum(load.errors for side in runs.values() for load in side),
        "accepted": len(accepted),
        "missing": missing,
        "ingress_p50_ms": ingress.percentile_ms(50),
        "ingress_p99_ms": ingress.percentile_ms(99),
        "bare_p50_ms": bare.percentile_ms(50),
        "bare_p99_ms": bare.percentile_ms(99),
    }


async def _take_turns(
    bootstrap: str, bodies: list[bytes], seconds: float
) -> dict[str, list[_Load]]:
    """Each side's runs: a warm-up first, then ROUNDS measured rounds, the sides taking turns."""
    async with AsyncExitStack() as servers:
        urls = {
            "ingress": await servers.enter_async_context(_serving(_serve_ingress, bootstrap)),
            "bare": await servers.enter_async_context(_serving(_serve_bare)),
        }
        runs = {side: [await _drive(url, bodies, WARMUP_S)] for side, url in urls.items()}
        for _ in range(ROUNDS):
            for side, url in urls.items():
                runs[side].append(await _drive(url, bodies, seconds / ROUNDS))
    return runs


@asynccontextmanager
async def _serving(server: Callable[..., None], *args: str) -> AsyncIterator[str]:
    """`server(port, *args)` running in its own process; yields the callback URL."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=server, args=(port, *args), daemon=True
    )
    process.start()
    try:
        await _until_listening(port)
        yield f"http://127.0.0.1:{port}/v1/callbacks/wavecell"
    finally:
        process.terminate()  # SIGTERM: both servers stop gracefully on it
        await asyncio.to_thread(process.join, 15)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join)


async def _until_listening(port: int, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return


async def _drive(url: str, bodies: list[bytes], seconds: float) -> _Load:
    """CONNECTIONS clients posting bodies back to back for `seconds`."""
    load = _Load()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client(session: aiohttp.ClientSession, first: int) -> None:
        for n in range(first, 1 << 62, CONNECTIONS):
            if loop.time() >= deadline:
                return
            started = time.perf_counter()
            try:
                async with session.post(url, data=bodies[n % len(bodies)], headers=_HEADERS) as r:
                    answer, status = await r.read(), r.status
            except aiohttp.ClientError:
                load.errors += 1
                continue
            load.latencies.append(time.perf_counter() - started)
            if status == 202:
                load.ids.append(_accepted.decode(answer).id)
            else:
                load.errors += 1

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, n) for n in range(CONNECTIONS)))
        load.seconds = time.perf_counter() - started
    return load


async def _missing(kafka: KafkaSettings, accepted: set[str]) -> int:
    """How many of the `accepted` request ids calls.raw does not hold (read from the start)."""
    stored = {
        dict(record.headers)[topics.REQUEST_ID].decode()
        for record in await kafka_io.read_all(kafka, topics.RAW, within_s=120)
    }
    return len(accepted - stored)


def _serve_ingress(port: int, bootstrap: str) -> None:

    configure_logging(level="warning")
    settings, kafka = IngressSettings(port=port), KafkaSettings(bootstrap=bootstrap)
    run_until_signalled(lambda stop: serve(settings, kafka, stop))


def _serve_bare(port: int) -> None:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=b'{"id":"bare"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/callbacks/{provider}", accept)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def report(results: dict[str, float]) -> str:
    def line(name: str, key: str) -> str:
        return (
            f"{name:<28}{results[f'{key}_per_s']:>10,.0f} req/s"
            f"   p50 {results[f'{key}_p50_ms']:>6.2f} ms   p99 {results[f'{key}_p99_ms']:>7.2f} ms"
        )

    return "\n".join(
        [
            f"{results['connections']:.0f} connections; best of {ROUNDS} rounds of "
            f"{results['seconds'] / ROUNDS:.1f} s each",
            line("ingress (durable publish)", "ingress"),
            line("bare aiohttp handler", "bare"),
            f"ratio {results['ratio']:.2f} (target >= {TARGET_RATIO}), errors "
            f"{results['errors']:.0f}, missing {results['missing']:.0f} of "
            f"{results['accepted']:,.0f} accepted",
        ]
    )
