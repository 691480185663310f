from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, settings

from callstream.broker import EmbeddedBroker, free_port
from callstream.kafka import ensure_topics
from callstream.settings import KafkaSettings

settings.register_profile("default", max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=20_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden expectations from the current normalizers (review the diff)",
    )


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    """A fresh embedded broker for one test: it starts in milliseconds and keeps tests apart."""
    async with EmbeddedBroker(free_port()) as embedded:
        yield embedded  # a test may leave it paused: stop() resumes it first


@pytest.fixture
async def kafka(broker: EmbeddedBroker) -> KafkaSettings:
    """Settings for the test's broker, with group timings short enough for rebalance tests."""
    settings = KafkaSettings(
        bootstrap=broker.bootstrap,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=200,
        request_timeout_ms=5_000,
    )
    await ensure_topics(settings)
    return settings
