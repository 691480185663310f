"""Kafka plumbing against the real broker."""

from __future__ import annotations

import asyncio
import sys

import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from helpers import env_for

from callstream.broker import BrokerError, EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from schemas import topics


async def test_topic_bootstrap_is_idempotent_and_compacts_sessions(kafka: KafkaSettings) -> None:
    await kafka_io.ensure_topics(kafka)  # a second run changes nothing and raises nothing
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        names = [kafka.topic(name) for name in topics.ALL]
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, kafka.topic(topics.SESSIONS))]
        )
    finally:
        await admin.close()
    assert {name: len(t["partitions"]) for name, t in described.items()} == dict.fromkeys(names, 4)
    entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
    assert entries["cleanup.policy"] == "compact"


async def test_send_all_places_each_key_in_its_partition_and_keeps_headers(
    kafka: KafkaSettings,
) -> None:
    records = [
        kafka_io.OutRecord(
            f"session-{i % 50}".encode(), f"value-{i}".encode(), [("h", str(i).encode())]
        )
        for i in range(20_000)
    ]
    await kafka_io.publish(kafka, topics.EVENTS, records)
    consumer = kafka_io.consumer(kafka, topics.EVENTS, group_id="test")
    await consumer.start()
    seen = []
    try:
        while len(seen) < len(records):
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                seen.extend(batch)
    finally:
        await consumer.stop()
    assert sorted(int(m.value.removeprefix(b"value-")) for m in seen) == list(range(20_000))
    partitions = sorted({m.partition for m in seen})
    assert all(m.partition == kafka_io.partition_for(m.key, partitions) for m in seen)
    assert all(m.headers == (("h", m.value.removeprefix(b"value-")),) for m in seen)


async def test_a_second_embedded_broker_on_a_taken_port_is_refused() -> None:
    async with EmbeddedBroker(free_port()) as first:
        with pytest.raises(BrokerError, match="already in use"):
            await EmbeddedBroker(first.port).start()


async def test_the_topics_command_creates_what_is_missing_and_can_run_again(
    kafka: KafkaSettings,
) -> None:
    kafka = msgspec.structs.replace(kafka, topic_prefix=f"{kafka.topic_prefix}command.")
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "topics", "--kafka", kafka.bootstrap,
            env=env_for(kafka, {"CALLSTREAM_KAFKA__PARTITIONS": "3"}),
        )  # fmt: skip
        assert await asyncio.wait_for(process.wait(), 60) == 0
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        names = [kafka.topic(name) for name in topics.ALL]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(names, 3)
