"""The pollers' Prometheus metrics, in a registry of their own (one per `callstream poll`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "poller_requests",
            "Requests to provider APIs, by provider and outcome "
            "(ok, 401, 429, 4xx, 5xx, timeout, error).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "poller_retries",
            "Requests attempted again after a retriable failure, by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.published = Counter(
            "poller_published_records",
            "Raw records acknowledged on calls.raw, by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "poller_dead_lettered_records",
            "Malformed answers acknowledged on calls.dlq, by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.failed_queries = Counter(
            "poller_failed_queries",
            "mobile_agent answers whose retCode is not 0, by retCode (not published; retried).",
            ["ret_code"],
            registry=self.registry,
        )
        self.tracked = Gauge(
            "poller_tracked_calls",
            "mobile_agent calls this instance polls.",
            registry=self.registry,
        )
        self.expired = Counter(
            "poller_expired_calls",
            "mobile_agent calls no longer polled: their deadline passed before state 3.",
            registry=self.registry,
        )
        self.windows = Counter(
            "poller_windows",
            "vpbx windows first read (every page published, then checkpointed), by client.",
            ["client_id"],
            registry=self.registry,
        )
        self.window_reads = Counter(
            "poller_window_reads",
            "Windows read, by provider and read (first: when the window is over; reread: on "
            "the schedule after it). At most len(schedule) rereads a window; a request can "
            "read several windows (poller_requests_total counts requests).",
            ["provider", "read"],
            registry=self.registry,
        )
        self.holes = Counter(
            "poller_consumer_holes",
            "Holes in the offsets of calls.track or calls.checkpoints met while following them: "
            "fetched again (outcome refetched), or passed over as real (passed).",
            ["topic", "outcome"],
            registry=self.registry,
        )
        self.checkpoint = Gauge(
            "poller_checkpoint_timestamp_seconds",
            "The end of the last vpbx window checkpointed, by client (epoch seconds).",
            ["client_id"],
            registry=self.registry,
        )

    def hole(self, topic: str, outcome: str) -> None:
        """A hole met in `topic`'s offsets (`foundation.kafka.Contiguity`)."""
        self.holes.labels(topic, outcome).inc()
