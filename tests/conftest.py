from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import servers
from helpers import settings_for
from hypothesis import HealthCheck, settings

from foundation.kafka import ensure_topics
from foundation.log import configure_logging
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
    """The one place where the servers of the session are chosen (see tests/servers.py), and
    where logging is configured: services running in this process log as in a container (JSON
    lines on stderr, info and up), whichever test runs first. (Unconfigured, structlog renders
    each exception with its locals, a quarter of a second a dead letter.)"""
    configure_logging(json=True, level="info")
    config.stash[SERVERS] = servers.choose(
        os.environ.get(servers.CHOICE, "auto"), servers.docker_answers
    )


@pytest.fixture(autouse=True)
def _session_logging() -> Iterator[None]:
    """The session's logging again after each test: a test that configures its own (into its
    capsys, or through a command's main()) leaves a handler on a stream closed with the test,
    and every later log line would cost a printed 'Logging error' traceback."""
    yield
    configure_logging(json=True, level="info")


def pytest_report_header(config: pytest.Config) -> str:
    return f"servers: {config.stash[SERVERS]}"


@pytest.fixture(scope="session")
async def shared_broker(pytestconfig: pytest.Config) -> AsyncIterator[servers.SharedBroker]:
    """The session's broker, never paused: each test's `kafka` is a topic prefix on it."""
    async with pytestconfig.stash[SERVERS].broker() as broker:
        shared = servers.SharedBroker(broker.bootstrap)
        yield shared
        await shared.clean()


@pytest.fixture
async def own_broker(pytestconfig: pytest.Config) -> AsyncIterator[servers.Broker]:
    """A fresh broker of the test's own, for a test that pauses it (see `own_kafka`)."""
    async with pytestconfig.stash[SERVERS].broker() as fresh:
        yield fresh


@pytest.fixture(scope="session")
def postgres_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The session's PostgreSQL; tests keep apart in schemas of their own."""
    with pytestconfig.stash[SERVERS].postgres() as url:
        yield url


@pytest.fixture
async def kafka(shared_broker: servers.SharedBroker) -> AsyncIterator[KafkaSettings]:
    """Settings for the shared broker under a topic prefix of the test's own, its topics made.
    Afterwards its topics are deleted, and the test fails if it left a topic or a group outside
    its prefix. A test that runs commands as processes gives them `helpers.env_for(kafka)`."""
    settings = settings_for(shared_broker.bootstrap, shared_broker.prefix())
    await ensure_topics(settings)
    yield settings
    await shared_broker.clean()


@pytest.fixture
async def own_kafka(own_broker: servers.Broker) -> KafkaSettings:
    """Settings for the test's own broker (no topic prefix), its topics made."""
    settings = settings_for(own_broker.bootstrap)
    await ensure_topics(settings)
    return settings
