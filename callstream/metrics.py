"""`callstream up`'s one metrics endpoint: every child's /metrics, scraped when it is scraped,
merged into one Prometheus exposition.

Each service under `up` serves its own registry on a port of its own (`--metrics-port`, the
ingress on its HTTP port); Prometheus (or Grafana's agent) needs only `up`'s port. Families of
the same name from several services (the consumer runtime's `callstream_*`, labelled by
`service` already) become one family; a sample without a `service` label gets its child's
name as one, so every series says where it comes from. `callstream_up{service}` is 1 for a
child that answered, 0 for one that did not (restarting, or not yet listening).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import aiohttp
import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from foundation import metrics

log = structlog.get_logger("callstream.up")

UP = ("callstream_up", "1 if the service's metrics could be scraped by `up`, else 0.")


async def scrape(session: aiohttp.ClientSession, targets: Mapping[str, str]) -> bytes:
    """One exposition of every target's metrics (`service name → /metrics URL`)."""
    texts = await asyncio.gather(*(metrics.fetch(session, url) for url in targets.values()))
    return merge(zip(targets, texts, strict=True))


def merge(scraped: Iterable[tuple[str, str | None]]) -> bytes:
    """The expositions of several services as one; None: the service did not answer."""
    return metrics.merge(scraped, "service", UP)


async def serve(port: int, targets: Mapping[str, str]) -> web.AppRunner:
    """Serve `GET /metrics` on 127.0.0.1:`port` until the runner is cleaned up."""
    session = aiohttp.ClientSession()

    async def metrics(_: web.Request) -> web.Response:
        body = await scrape(session, targets)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close_session(_: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(close_session)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    log.info("metrics_listening", url=f"http://127.0.0.1:{port}/metrics", services=sorted(targets))
    return runner
