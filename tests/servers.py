"""The servers integration tests run against, chosen once per session by tests/conftest.py.

`CALLSTREAM_TEST_SERVERS`:
- `local`: embedded brokers and the PostgreSQL at `$CALLSTREAM_TEST_POSTGRES_URL` (default
  127.0.0.1:5432, database `test`): what CI runs.
- `containers` (testcontainers, needs a Docker engine): Apache Kafka containers and one
  PostgreSQL container per session.
- `auto` (the default): `containers` when a Docker engine answers a ping, else `local`.

A test sees the same either way. Most tests share the session's broker (one embedded broker, or
one Kafka container), each under a topic prefix of its own (`KAFKA__TOPIC_PREFIX`, which every
service and tool applies to its topics and consumer groups): `SharedBroker` hands the prefixes
out and, after each test, deletes its topics and fails the test if the broker holds a topic or a
group outside every prefix, which is how a name handed to Kafka without `kafka.topic(…)` or
`kafka.group(…)` shows (a metadata request for a missing topic makes the embedded broker create
it). A test that pauses its broker (SIGSTOP, or `docker pause`) gets a fresh `Broker` of its own
instead. PostgreSQL tests keep apart in schemas, so one PostgreSQL serves the session.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import re
import signal
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol, Self

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from docker.errors import DockerException
from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from callstream.broker import EmbeddedBroker, free_port

CHOICE = "CALLSTREAM_TEST_SERVERS"
LOCAL_POSTGRES_URL = os.environ.get(
    "CALLSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
KAFKA_IMAGE = "apache/kafka-native:3.9.0"  # docker-compose.yml's Kafka, compiled ahead of time
POSTGRES_IMAGE = "postgres:16"  # docker-compose.yml's
DOCKER_PING_TIMEOUT_S = 2


class Broker(Protocol):
    """A Kafka broker: the session's, or one test's own."""

    @property
    def bootstrap(self) -> str: ...

    def pause(self) -> None:
        """Freeze it: connections stay open and nothing is answered, as with a hung broker.

        A test that pauses the broker resumes it in a `finally`.
        """

    def resume(self) -> None: ...

    def kill(self) -> None:
        """It dies at once (SIGKILL): its connections are reset, new ones refused."""


class Servers(Protocol):
    def broker(self) -> AbstractAsyncContextManager[Broker]:
        """A fresh broker, stopped and discarded on leaving the block."""

    def postgres(self) -> AbstractContextManager[str]:
        """The URL of a PostgreSQL database the session may create schemas in."""


def choose(requested: str, docker_answers: Callable[[], bool]) -> Servers:
    """The servers `CALLSTREAM_TEST_SERVERS=requested` names (a local run never asks Docker)."""
    if requested == "local":
        return Local()
    if requested not in ("auto", "containers"):
        raise pytest.UsageError(f"{CHOICE}={requested!r}: expected auto, local or containers")
    if docker_answers():
        return Containers()
    if requested == "containers":
        raise pytest.UsageError(f"{CHOICE}=containers, but no Docker engine answers")
    return Local()


def docker_answers() -> bool:
    """Whether a Docker engine answers where testcontainers looks for one (DOCKER_HOST, …)."""
    with warnings.catch_warnings():
        # docker-py leaves the socket of a failed connection to the garbage collector, and
        # pytest turns the ResourceWarning that follows into an error in some later test.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            # Constructing the client asks the engine its API version: that is the ping.
            DockerClient(timeout=DOCKER_PING_TIMEOUT_S).client.close()
        except DockerException:
            return False
        finally:
            gc.collect()
    return True


class Local:
    """The embedded broker and the local PostgreSQL: what CI runs; no Docker needed."""

    def __str__(self) -> str:
        return (
            "local (embedded brokers: one shared by prefix, one per test that pauses it; the"
            " PostgreSQL of CALLSTREAM_TEST_POSTGRES_URL, default 127.0.0.1:5432/test)"
        )

    @contextlib.asynccontextmanager
    async def broker(self) -> AsyncIterator[Broker]:
        async with EmbeddedBroker(free_port()) as embedded:  # stop() resumes a paused broker
            yield SignalledBroker(embedded)

    @contextlib.contextmanager
    def postgres(self) -> Iterator[str]:
        yield LOCAL_POSTGRES_URL


class Containers:
    """Throwaway containers (testcontainers): Apache Kafka, one shared by prefix and one per
    test that pauses it; PostgreSQL per session."""

    def __str__(self) -> str:
        return (
            f"containers ({KAFKA_IMAGE}: one shared by prefix, one per test that pauses it;"
            f" {POSTGRES_IMAGE} per session)"
        )

    @contextlib.asynccontextmanager
    async def broker(self) -> AsyncIterator[Broker]:
        with ApacheKafkaContainer() as container:
            yield ContainerBroker(container)

    @contextlib.contextmanager
    def postgres(self) -> Iterator[str]:
        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()


class SignalledBroker:
    """The embedded broker, paused with SIGSTOP and resumed with SIGCONT."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        assert self._broker.process is not None, "the embedded broker is not running"
        self._broker.process.send_signal(signum)


class ContainerBroker:
    """A Kafka container, paused through the Docker API: the cgroup freezer stops it as
    SIGSTOP does, and published ports keep accepting connections that get no answer."""

    def __init__(self, container: ApacheKafkaContainer) -> None:
        self._container = container
        self.bootstrap = container.bootstrap

    def pause(self) -> None:
        self._container.get_wrapped_container().pause()

    def resume(self) -> None:
        self._container.get_wrapped_container().unpause()

    def kill(self) -> None:
        self._container.get_wrapped_container().kill()


# One node, broker and controller, configured as docker-compose.yml's Kafka where it matters to
# tests: topics are made by callstream's bootstrap only. PLAINTEXT is the tests' listener
# (advertised on the mapped port once it is known); BROKER is the node's own.
KAFKA_ENVIRONMENT = {
    "CLUSTER_ID": "5L6g3nShT-eMCtK--X86sw",
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
    "KAFKA_LISTENERS": "PLAINTEXT://:9092,BROKER://:9093,CONTROLLER://:9094",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
        "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
    ),
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",  # the first consumer group does not wait for 50
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    # The kafka fixture's 2 s session timeout (for rebalance tests) is below Kafka's 6 s minimum.
    "KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS": "500",
}


class ApacheKafkaContainer(DockerContainer):
    """Apache Kafka in KRaft mode, one node, reachable from the host on a mapped port.

    testcontainers-python's own KafkaContainer runs Confluent images only (a JVM, several
    seconds to start); this follows testcontainers-java's KafkaContainer for the Apache images.
    The advertised address needs the port Docker maps, known only once the container runs, so
    the container first waits for a start script that exports it and runs the image's entry
    point.
    """

    PORT = 9092
    START_SCRIPT = "/tmp/callstream-start.sh"  # noqa: S108 - inside the container
    SCRIPT_WRITTEN = "/tmp/callstream-start.ready"  # noqa: S108 - copied after the script

    def __init__(self) -> None:
        super().__init__(KAFKA_IMAGE)
        self.with_exposed_ports(self.PORT)
        self.with_envs(**KAFKA_ENVIRONMENT)
        wait = f"while [ ! -f {self.SCRIPT_WRITTEN} ]; do sleep 0.05; done"
        self.with_command(["sh", "-c", f"{wait}; exec sh {self.START_SCRIPT}"])

    @property
    def bootstrap(self) -> str:
        return f"{self.get_container_host_ip()}:{self.get_exposed_port(self.PORT)}"

    def start(self) -> Self:
        super().start()
        listeners = f"PLAINTEXT://{self.bootstrap},BROKER://localhost:9093"
        script = f"export KAFKA_ADVERTISED_LISTENERS={listeners}\nexec /etc/kafka/docker/run\n"
        self.copy_into_container(script.encode(), self.START_SCRIPT)
        self.copy_into_container(b"", self.SCRIPT_WRITTEN)
        started = LogMessageWaitStrategy("Kafka Server started")
        started.with_startup_timeout(60).with_poll_interval(0.1).wait_until_ready(self)
        return self


TEST_PREFIX = re.compile(r"test\d+\.")
"""The topic prefixes SharedBroker hands out: `test0.`, `test1.`, …"""


class SharedBroker:
    """The session's broker, shared by the tests, each under a topic prefix of its own."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._numbers = itertools.count()
        self._strays: set[str] = set()
        """Groups outside every prefix already reported (a group cannot be deleted here)."""

    def prefix(self) -> str:
        """A topic prefix no other test of the session has."""
        return f"test{next(self._numbers)}."

    async def clean(self) -> None:
        """Delete every topic (the tests run one at a time: they are the last test's, or were
        written by something that outlived its test); raise AssertionError if a topic or a new
        group has no test prefix: a name given to Kafka without `KafkaSettings.topic` or
        `.group`, blamed on the test that just ran."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:  # groups first: the embedded broker lists a group while it has offsets on a topic
            groups = {group for group, _ in await admin.list_consumer_groups()}
            names = [name for name in await admin.list_topics() if not name.startswith("__")]
            if names:  # not Kafka's internal topics (__consumer_offsets)
                await admin.delete_topics(names)
        finally:
            await admin.close()
        strays = sorted(name for name in names if not TEST_PREFIX.match(name))
        stray_groups = sorted(g for g in groups - self._strays if not TEST_PREFIX.match(g))
        self._strays.update(stray_groups)
        if strays or stray_groups:
            raise AssertionError(
                f"outside every test's prefix: topics {strays} (kafka.topic() missing?), consumer "
                f"groups {stray_groups} (kafka.group() missing?)"
            )
