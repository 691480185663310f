"""Running a service: until SIGTERM or SIGINT asks it to stop, then it finishes what it holds."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, start_http_server

GC_THRESHOLDS = (200_000, 20, 20)


def tune_gc() -> None:
    """Look for reference cycles every 200,000 new objects rather than CPython's default 700.

    A batch keeps some 20 small containers alive per record until it is done, so the default
    thresholds run collections, full ones included, every few thousand records (the measured
    effect is in docs/performance.md). Records are freed by reference counting anyway; cycles
    are rare, and they are still collected.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def run_until_signalled(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `service(stop)`; SIGTERM/SIGINT set `stop`, and the service returns once stopped."""
    tune_gc()

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
