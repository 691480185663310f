"""Running a service: until SIGTERM or SIGINT asks it to stop, then it finishes what it holds."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, start_http_server


def run_until_signalled(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `service(stop)`; SIGTERM/SIGINT set `stop`, and the service returns once stopped."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await service(stop)

    asyncio.run(main())


def serve_metrics(port: int, registry: CollectorRegistry) -> None:
    """Serve `registry` as Prometheus /metrics on `port`, unless it is 0 (off)."""
    if port > 0:
        start_http_server(port, registry=registry)
