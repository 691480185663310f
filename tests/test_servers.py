"""Which servers the integration tests run against: the choice, and the Docker ping behind it.

The container path itself needs a Docker engine, which this machine does not have.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
import servers
from aiokafka.admin import AIOKafkaAdminClient
from helpers import settings_for

from foundation.kafka import OutRecord, consumer, ensure_topics, publish
from schemas import topics


def _docker_must_not_be_asked() -> bool:
    raise AssertionError("a local run must not ask Docker")


@pytest.mark.parametrize(
    ("requested", "docker_answers", "chosen"),
    [
        ("auto", True, servers.Containers),
        ("auto", False, servers.Local),
        ("containers", True, servers.Containers),
    ],
)
def test_auto_and_containers_follow_the_docker_ping(
    requested: str, docker_answers: bool, chosen: type
) -> None:
    assert isinstance(servers.choose(requested, lambda: docker_answers), chosen)


def test_local_never_asks_docker() -> None:
    assert isinstance(servers.choose("local", _docker_must_not_be_asked), servers.Local)


def test_containers_without_a_docker_engine_stop_the_session_with_a_reason() -> None:
    with pytest.raises(pytest.UsageError, match="SERVERS=containers, but no Docker engine"):
        servers.choose("containers", lambda: False)


@pytest.mark.parametrize("requested", ["", "docker", "Local", "embedded"])
def test_an_unknown_choice_stops_the_session_naming_the_valid_ones(requested: str) -> None:
    with pytest.raises(pytest.UsageError, match="expected auto, local or containers"):
        servers.choose(requested, _docker_must_not_be_asked)


def test_with_no_docker_engine_the_ping_says_no_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    assert servers.docker_answers() is False
    gc.collect()  # a socket left open would warn now, and warnings fail tests


async def test_the_shared_broker_names_a_topic_or_group_outside_every_prefix_and_deletes_it(
    own_broker: servers.Broker,
) -> None:
    """What the `kafka` fixture checks after each test, on a broker of this test's own: a
    topic or a group given to Kafka without the prefix is named (and the topic deleted), once;
    a test's own topics are deleted silently."""
    shared = servers.SharedBroker(own_broker.bootstrap)
    prefixed = settings_for(own_broker.bootstrap, shared.prefix())
    await ensure_topics(prefixed)
    await shared.clean()
    bare = settings_for(own_broker.bootstrap)
    await publish(bare, topics.RAW, [OutRecord(None, b"{}", [])])
    async with consumer(bare, topics.RAW, group_id="forgotten") as client:
        async with asyncio.timeout(30):
            while not client.assignment():  # joined
                await client.getmany(timeout_ms=100)
        await client.commit(dict.fromkeys(client.assignment(), 0))  # a group the broker lists
    with pytest.raises(AssertionError, match=r"topics \['calls\.raw'\].*groups \['forgotten'\]"):
        await shared.clean()
    await shared.clean()  # each named once
    admin = AIOKafkaAdminClient(bootstrap_servers=own_broker.bootstrap)
    await admin.start()
    try:
        assert await admin.list_topics() == []
    finally:
        await admin.close()
