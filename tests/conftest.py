from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import servers
from hypothesis import HealthCheck, settings

from foundation.kafka import ensure_topics
from foundation.settings import KafkaSettings

settings.register_profile("default", max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=20_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden expectations from the current normalizers (review the diff)",
    )


SERVERS = pytest.StashKey[servers.Servers]()


def pytest_configure(config: pytest.Config) -> None:
    """The one place where the servers of the session are chosen (see tests/servers.py)."""
    config.stash[SERVERS] = servers.choose(
        os.environ.get(servers.CHOICE, "auto"), servers.docker_answers
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"servers: {config.stash[SERVERS]}"


@pytest.fixture
async def broker(pytestconfig: pytest.Config) -> AsyncIterator[servers.Broker]:
    """A fresh broker for one test: topic names are fixed, so a broker of its own keeps it apart."""
    async with pytestconfig.stash[SERVERS].broker() as fresh:
        yield fresh


@pytest.fixture(scope="session")
def postgres_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The session's PostgreSQL; tests keep apart in schemas of their own."""
    with pytestconfig.stash[SERVERS].postgres() as url:
        yield url


@pytest.fixture
async def kafka(broker: servers.Broker) -> KafkaSettings:
    """Settings for the test's broker, with group timings short enough for rebalance tests."""
    settings = KafkaSettings(
        bootstrap=broker.bootstrap,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=200,
        request_timeout_ms=5_000,
    )
    await ensure_topics(settings)
    return settings
