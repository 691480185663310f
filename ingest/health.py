"""What operators watch: readiness (can the broker take writes?) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The ingress's metrics in a registry of its own, so that several apps can share a process.

    Per callback they cost a few µs: the in-flight gauge reads a plain counter when scraped, and
    the request counter's children are looked up once per (provider, status).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "callstream_ingress_requests",
            "Callbacks answered, by provider and HTTP status code.",
            ["provider", "status"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "callstream_ingress_publish_seconds",
            "Time from handing a body to the producer to the broker's acknowledgement.",
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = 0
        Gauge(
            "callstream_ingress_in_flight_requests",
            "Callbacks being handled right now.",
            registry=self.registry,
        ).set_function(lambda: self.in_flight)
        self._answered: dict[tuple[str, int], Counter] = {}

    def answered(self, provider: str, status: int) -> None:
        child = self._answered.get((provider, status))
        if child is None:
            child = self._answered[provider, status] = self.requests.labels(provider, str(status))
        child.inc()


class Readiness:
    """Whether the broker answers a metadata request within `timeout_s`; asked once a `ttl_s`.

    Concurrent callers share one probe, so a flood of /readyz costs the broker one request a
    second at most.
    """

    def __init__(
        self, probe: Callable[[], Awaitable[object]], timeout_s: float = 1.0, ttl_s: float = 1.0
    ) -> None:
        self._probe, self._timeout_s, self._ttl_s = probe, timeout_s, ttl_s
        self._answer: asyncio.Task[bool] | None = None
        self._asked_at = 0.0

    async def ready(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._answer is None or (self._answer.done() and now - self._asked_at >= self._ttl_s):
            self._asked_at = now
            self._answer = asyncio.create_task(self._ask())
        return await asyncio.shield(self._answer)

    async def _ask(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._probe()
        except (TimeoutError, KafkaError):
            return False
        return True
