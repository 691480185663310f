"""KAFKA__TOPIC_PREFIX: two environments on one broker see nothing of each other, end to end, and
their consumer groups are theirs; a prefix Kafka cannot take stops a command at start."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from helpers import committed, eventually, normalizer, raw, serving, store_sink

from callstream import samples
from callstream.cli import EXIT_USAGE, main
from foundation import kafka as kafka_io
from foundation.settings import AggregatorSettings, KafkaSettings, SettingsError, load
from normalize import aggregator
from schemas import topics


def _calls(url: str) -> set[str]:
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        return {row[0] for row in db.execute("SELECT session_key FROM call_sessions")}


async def test_two_prefixes_on_one_broker_see_nothing_of_each_other(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """The normalizer, the aggregator and the store of environments `a` and `b` run at once on
    one broker with the same group ids; each store holds exactly its environment's calls."""
    envs = {
        name: msgspec.structs.replace(kafka, topic_prefix=f"{kafka.topic_prefix}{name}.")
        for name in ("a", "b")
    }
    bodies = {"a": samples.payloads("wavecell", 10), "b": samples.payloads("wavecell", 25, 1)}
    urls = {name: f"sqlite:///{tmp_path}/{name}.sqlite3" for name in envs}
    for name, env in envs.items():
        await kafka_io.ensure_topics(env)
        await kafka_io.publish(env, topics.RAW, [raw("wavecell", body) for body in bodies[name]])
    settings = {  # each aggregator its own state directory: a partition's database is locked
        name: AggregatorSettings(group_id="test-aggregator", state_dir=str(tmp_path / name))
        for name in envs
    }
    async with (
        serving(normalizer(envs["a"])), serving(normalizer(envs["b"])),
        serving(lambda stop: aggregator.serve(settings["a"], envs["a"], stop)),
        serving(lambda stop: aggregator.serve(settings["b"], envs["b"], stop)),
        serving(store_sink(envs["a"], urls["a"])), serving(store_sink(envs["b"], urls["b"])),
    ):  # fmt: skip
        expected: dict[str, set[str]] = {}

        async def stored() -> bool:
            for name, env in envs.items():
                sessions = await kafka_io.read_all(env, topics.SESSIONS)
                expected[name] = {(r.key or b"").decode() for r in sessions}
            return all(
                len(expected[name]) == len(bodies[name]) and _calls(urls[name]) == expected[name]
                for name in envs
            )

        await eventually(stored, "each environment's sessions in its own store")
    assert not expected["a"] & expected["b"]  # distinct payloads: nothing could hide a leak
    for name, env in envs.items():
        assert len(await kafka_io.read_all(env, topics.RAW)) == len(bodies[name])
        assert len(await kafka_io.read_all(env, topics.EVENTS)) == 2 * len(bodies[name])
        assert await kafka_io.read_all(env, topics.DLQ) == []
        offsets = await committed(env, "test-normalizer", topics.RAW)
        assert sum(offsets.values()) == len(bodies[name])
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        groups = {group for group, _ in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    for service in ("test-normalizer", "test-aggregator", "test-store"):
        assert {env.group(service) for env in envs.values()} <= groups
        assert service not in groups


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("staging calls.", "has characters a Kafka topic name cannot have"),
        ("staging/", "has characters a Kafka topic name cannot have"),
        ("é.", "has characters a Kafka topic name cannot have"),
        ("x" * 230, "230 characters is too long: 'calls.alerts.samples' would be 250"),
    ],
)
def test_a_prefix_kafka_cannot_take_is_refused_naming_the_setting(
    prefix: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLSTREAM_KAFKA__TOPIC_PREFIX", prefix)
    with pytest.raises(SettingsError, match=f"^CALLSTREAM_KAFKA__TOPIC_PREFIX: .*{message}"):
        load(KafkaSettings, "kafka")
    assert main(["topics", "--kafka", "127.0.0.1:1"]) == EXIT_USAGE  # before any connection
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("callstream: setting CALLSTREAM_KAFKA__TOPIC_PREFIX: ")


def test_a_prefix_goes_before_every_topic_and_group() -> None:
    kafka = KafkaSettings(topic_prefix="x" * 229)  # calls.alerts.samples: 249, the most
    assert len(kafka.topic(topics.ALERT_SAMPLES)) == 249
    staging = KafkaSettings(topic_prefix="staging.")
    assert staging.topic(topics.RAW) == "staging.calls.raw"
    assert staging.group("callstream-normalizer") == "staging.callstream-normalizer"
    assert KafkaSettings().topic(topics.RAW) == topics.RAW
