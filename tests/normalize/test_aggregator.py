"""The session aggregator against the real broker: folding, state, handover, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from aiokafka import ConsumerRecord
from helpers import env_for, eventually

from callstream import samples
from callstream.broker import EmbeddedBroker, free_port
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.runtime import Metrics
from foundation.settings import AggregatorSettings, KafkaSettings
from normalize import aggregator, normalize
from normalize.sessions import fold
from normalize.state import StateDirInUse
from schemas import CallEvent, SessionRecord, Status, cloudevents, topics

GOLDEN = Path(__file__).parent.parent / "golden"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEADLINE_S = 60.0
GROUP = "test-aggregator"
FOREVER_S = 1e9
"""Retention and timeout for tests about folding: golden events are years old, and must be
neither evicted nor closed while the test runs."""
SETTINGS = AggregatorSettings(
    group_id=GROUP,
    max_batch=50,
    open_timeout_s=FOREVER_S,
    final_retention_s=FOREVER_S,
    sweep_interval_s=0.2,
)

Read = ConsumerRecord[bytes, bytes]
_session = msgspec.json.Decoder(SessionRecord)


def _golden(case: str) -> list[CallEvent]:
    body = (GOLDEN / "wavecell" / f"{case}.json").read_bytes()
    return normalize("wavecell", body, received_at=T0)


def _two_leg_sessions(count: int) -> list[list[CallEvent]]:
    return [
        normalize("wavecell", body, received_at=T0) for body in samples.payloads("wavecell", count)
    ]


def _poll(state: int, at: datetime, reason: int | None = None) -> CallEvent:
    result = {"state": state} | ({"reasonCode": reason} if reason is not None else {})
    body = msgspec.json.encode({"retCode": "0", "result": result})
    (event,) = normalize("mobile_agent", body, received_at=at, context={"callSerialNo": "42"})
    return event


def _fold_all(events: Iterable[CallEvent]) -> SessionRecord | None:
    session = None
    for event in events:
        session = fold(session, event) or session
    return session


async def _produce(kafka: KafkaSettings, events: Iterable[CallEvent | OutRecord]) -> None:
    await kafka_io.publish(
        kafka,
        topics.EVENTS,
        [
            event
            if isinstance(event, OutRecord)
            else OutRecord(
                event.session_key.encode(),
                msgspec.json.encode(event),
                cloudevents.headers(
                    event.event_id, event.provider, cloudevents.EVENT_TYPE, event.occurred_at
                ),
            )
            for event in events
        ],
    )


async def _sessions(kafka: KafkaSettings) -> tuple[dict[str, SessionRecord], Counter[str]]:
    """The latest record of each session on calls.sessions, and how many records each has."""
    latest: dict[str, SessionRecord] = {}
    counts: Counter[str] = Counter()
    for record in await kafka_io.read_all(kafka, topics.SESSIONS):
        session = _session.decode(record.value)
        assert record.key == session.session_key.encode()
        latest[session.session_key] = session
        counts[session.session_key] += 1
    return latest, counts


async def _consumed(metrics: Metrics, count: int) -> None:
    """Wait until `count` events are folded, their sessions acknowledged and offsets committed."""

    async def done() -> bool:
        return metrics.total("received") >= count

    await eventually(done, f"{count} events consumed")


@contextlib.asynccontextmanager
async def _running(
    kafka: KafkaSettings, state_dir: Path, settings: AggregatorSettings = SETTINGS
) -> AsyncIterator[Metrics]:
    """The aggregator in this process, its state in `state_dir`; stopped (and awaited) on
    leaving the block."""
    metrics, stop = Metrics("aggregator"), asyncio.Event()
    settings = msgspec.structs.replace(settings, state_dir=str(state_dir))
    task = asyncio.create_task(aggregator.serve(settings, kafka, stop, metrics))
    try:
        yield metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


async def test_legs_out_of_order_and_duplicated_make_one_correct_session(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    doc, busy = _golden("doc_sample"), _golden("table_completed_busy")
    busy = [msgspec.structs.replace(event, session_key="wavecell:x:busy") for event in busy]
    arrivals = [doc[1], busy[1], doc[1], doc[0], busy[0], doc[0], busy[1]]
    await _produce(kafka, arrivals)
    async with _running(kafka, tmp_path) as metrics:
        await _consumed(metrics, len(arrivals))
        latest, counts = await _sessions(kafka)
        assert latest == {
            doc[0].session_key: _fold_all(doc),
            busy[0].session_key: _fold_all(busy),
        }
        assert latest[busy[0].session_key].status is Status.BUSY
        assert all(session.event_count == 2 for session in latest.values())

        await _produce(kafka, [*doc, *busy])  # duplicates, a batch of their own
        await _consumed(metrics, len(arrivals) + 4)
    assert await _sessions(kafka) == (latest, counts)
    for record in await kafka_io.read_all(kafka, topics.SESSIONS):
        session = _session.decode(record.value)
        ce_id = f"{session.session_key}:{session.event_count}"
        assert record.headers == (
            *cloudevents.headers(ce_id, "wavecell", cloudevents.SESSION_TYPE, session.updated_at),
            (topics.RECEIVED_AT, b"2026-11-01T12:00:00Z"),  # when its newest report was received
        )


async def test_a_late_non_final_report_does_not_regress_the_session(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    ringing, talking, ended = _poll(1, T0), _poll(2, T0.replace(second=5)), _poll(3, T0, 0)
    ended = msgspec.structs.replace(ended, occurred_at=T0.replace(second=9))
    late_talking = _poll(2, T0.replace(minute=30))
    async with _running(kafka, tmp_path) as metrics:
        await _produce(kafka, [talking, ringing, ended])
        await _consumed(metrics, 3)
        await _produce(kafka, [late_talking, ringing])
        await _consumed(metrics, 5)
    latest, counts = await _sessions(kafka)
    session = latest[ended.session_key]
    assert (session.status, session.final, session.event_count) == (Status.COMPLETED, True, 2)
    assert counts[ended.session_key] <= 2  # ringing, older than talking, changed nothing


async def test_records_that_are_not_call_events_go_to_the_dlq(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    bad = OutRecord(b"k", b'{"schema": "call_event/1"}', [("origin", b"test")])
    events = _golden("doc_sample")
    await _produce(kafka, [bad, *events])
    async with _running(kafka, tmp_path) as metrics:
        await _consumed(metrics, 3)
    (letter,) = await kafka_io.read_all(kafka, topics.DLQ)
    assert (letter.key, letter.value) == (bad.key, bad.value)
    headers = dict(letter.headers)
    assert headers["origin"] == b"test"
    assert headers[topics.ERROR_STAGE] == b"aggregate"
    assert headers[topics.ERROR].startswith(b"not a call event: Object missing required field")
    latest, _ = await _sessions(kafka)
    assert latest == {events[0].session_key: _fold_all(events)}


async def _start_aggregator(
    kafka: KafkaSettings, log: Path, state_dir: Path
) -> asyncio.subprocess.Process:
    env = env_for(
        kafka,
        {
            "CALLSTREAM_AGGREGATOR__MAX_BATCH": "50",
            "CALLSTREAM_AGGREGATOR__FINAL_RETENTION_S": str(FOREVER_S),
            "CALLSTREAM_AGGREGATOR__STATE_DIR": str(state_dir),
        },
    )
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "aggregator", "--kafka", kafka.bootstrap,
            env=env, stdout=stderr, stderr=stderr,
        )  # fmt: skip


async def _all_sessions_have(kafka: KafkaSettings, keys: set[str], leg: str) -> None:
    """Wait until each session's latest record has `leg` (whether it kept the others is for
    the test to check, so that a lost state fails at once with a diff rather than a timeout)."""

    async def done() -> bool:
        latest, _ = await _sessions(kafka)
        return keys <= latest.keys() and all(leg in latest[key].legs for key in keys)

    await eventually(done, f"{len(keys)} sessions with leg {leg}")


async def test_a_killed_aggregator_restarts_from_its_stored_sessions(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    sessions = _two_leg_sessions(300)
    keys = {a.session_key for a, _ in sessions}
    log = tmp_path / "aggregator.log"
    process = await _start_aggregator(kafka, log, tmp_path / "state")
    try:
        await _produce(kafka, [a for a, _ in sessions])
        await _all_sessions_have(kafka, keys, "a")
        process.kill()  # SIGKILL: no last batch, no commit, no leaving the group
        await process.wait()
        await _produce(kafka, [b for _, b in sessions[:150]])
        process = await _start_aggregator(kafka, log, tmp_path / "state")
        await _produce(kafka, [a for a, _ in sessions[::3]])  # duplicates
        await _produce(kafka, [b for _, b in sessions[150:]])
        await _all_sessions_have(kafka, keys, "b")
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
    latest, _ = await _sessions(kafka)
    assert latest == {a.session_key: _fold_all([a, b]) for a, b in sessions}, log.read_text()


async def test_a_second_instance_takes_over_partitions_with_their_state(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    sessions = _two_leg_sessions(200)
    async with _running(kafka, tmp_path / "staying") as staying:
        async with _running(kafka, tmp_path / "leaving") as leaving:
            produced = 0
            while not (leaving.total("received") and staying.total("received")):
                assert produced < len(sessions), "the two instances never shared the partitions"
                await _produce(kafka, [a for a, _ in sessions[produced : produced + 10]])
                produced += 10
                await asyncio.sleep(0.2)
            await _produce(kafka, [a for a, _ in sessions[produced:]])

            async def all_a_legs() -> bool:
                folded = leaving.total("received") + staying.total("received")
                return folded >= len(sessions)

            await eventually(all_a_legs, "every a leg folded")
        # The leaving instance has committed and left: its partitions move to the staying one.
        await _produce(kafka, [b for _, b in sessions])
        await _all_sessions_have(kafka, {a.session_key for a, _ in sessions}, "b")
    latest, _ = await _sessions(kafka)
    assert latest == {a.session_key: _fold_all([a, b]) for a, b in sessions}


async def test_an_open_session_is_closed_as_unknown_and_a_real_outcome_still_replaces_it(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    ringing, ended = _poll(1, now), _poll(3, now, 0)
    settings = msgspec.structs.replace(SETTINGS, open_timeout_s=0.5)
    async with _running(kafka, tmp_path, settings) as metrics:
        await _produce(kafka, [ringing])

        async def closed() -> bool:
            return (
                metrics.registry.get_sample_value(
                    "callstream_aggregator_timed_out_sessions_total", {"service": "aggregator"}
                )
                == 1
            )

        await eventually(closed, "the session closed")
        latest, _ = await _sessions(kafka)
        guess = latest[ringing.session_key]
        assert (guess.status, guess.final, guess.event_count) == (Status.UNKNOWN, True, 2)
        assert guess.close_reason == "no final status within 0.5 s"
        assert guess.legs == _fold_all([ringing]).legs  # type: ignore[union-attr]

        await _produce(kafka, [ended])
        await _consumed(metrics, 2)
    latest, _ = await _sessions(kafka)
    outcome = latest[ringing.session_key]
    assert (outcome.status, outcome.final, outcome.event_count) == (Status.COMPLETED, True, 3)
    assert outcome.close_reason is None


async def test_evicted_sessions_ignore_late_reports_also_after_a_restart(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    (leg_a,) = _golden("table_completed_null_leg_missing")
    leg_a = msgspec.structs.replace(leg_a, received_at=datetime.now(UTC))  # the clock: caught up
    late_b = msgspec.structs.replace(
        leg_a, leg="b", call_id="b-1", event_id="b-busy", status=Status.BUSY
    )
    settings = msgspec.structs.replace(SETTINGS, final_retention_s=0.5)
    async with _running(kafka, tmp_path, settings) as metrics:
        await _produce(kafka, [leg_a])
        await _consumed(metrics, 1)

        async def evicted() -> bool:
            return _sample(metrics, "evicted_sessions_total") == 1

        await eventually(evicted, "the final session evicted")
        await _produce(kafka, [late_b, leg_a])
        await _consumed(metrics, 3)
        assert _sample(metrics, "late_events_total") == 2
    async with _running(kafka, tmp_path, settings) as metrics:  # the evicted key is on disk
        await _produce(kafka, [late_b])
        await _consumed(metrics, 1)
        assert _sample(metrics, "late_events_total") == 1
        assert _sample(metrics, "restored_records_total") == 0
    latest, counts = await _sessions(kafka)
    assert latest == {leg_a.session_key: fold(None, leg_a)}
    assert counts[leg_a.session_key] == 1


def _sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(
        f"callstream_aggregator_{name}", {"service": "aggregator"}
    )


async def test_a_restart_restores_only_the_tail_of_calls_sessions(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """A crash after the sessions of a batch were acknowledged and before the state was written
    leaves calls.sessions ahead of the state: a restart reads that tail, and no more, and the
    batch's events, redone, fold into it as duplicates."""
    sessions = _two_leg_sessions(300)
    async with _running(kafka, tmp_path) as metrics:
        await _produce(kafka, [a for a, _ in sessions])
        await _consumed(metrics, len(sessions))
        assert _sample(metrics, "restored_records_total") == 0
    before, _ = await _sessions(kafka)
    crashed = sessions[:40]
    # What the crashed batch did: its sessions acknowledged on calls.sessions, its events not
    # committed (so read again), the state not written.
    await kafka_io.publish(
        kafka, topics.SESSIONS, [aggregator.session_record(_fold_all([a, b])) for a, b in crashed]
    )
    await _produce(kafka, [b for _, b in crashed])
    async with _running(kafka, tmp_path) as metrics:
        await _consumed(metrics, len(crashed))
        assert _sample(metrics, "restored_records_total") == len(crashed)
        assert metrics.total("produced") == 0  # the redone events changed nothing
        await _produce(kafka, [b for _, b in sessions[40:]])
        await _consumed(metrics, len(sessions))
    latest, counts = await _sessions(kafka)
    assert latest == {a.session_key: _fold_all([a, b]) for a, b in sessions}
    assert all(counts[key] == 2 for key in before)


async def test_a_partition_moved_and_back_restores_what_the_other_instance_wrote(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    sessions = _two_leg_sessions(100)
    async with _running(kafka, tmp_path / "first") as metrics:
        await _produce(kafka, [a for a, _ in sessions])
        await _consumed(metrics, len(sessions))
    async with _running(kafka, tmp_path / "second") as metrics:  # a new machine: all of it
        await _produce(kafka, [b for _, b in sessions[:30]])
        await _consumed(metrics, 30)
        assert _sample(metrics, "restored_records_total") == len(sessions)
    async with _running(kafka, tmp_path / "first") as metrics:  # back: what "second" wrote
        await _produce(kafka, [b for _, b in sessions[30:]])
        await _consumed(metrics, len(sessions) - 30)
        assert _sample(metrics, "restored_records_total") == 30
    latest, _ = await _sessions(kafka)
    assert latest == {a.session_key: _fold_all([a, b]) for a, b in sessions}


async def test_a_state_directory_of_another_cluster_is_restored_from_the_beginning(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    """A state whose offset is past the end of calls.sessions belongs to another history (the
    embedded broker restarted, another cluster): it is emptied, not trusted."""
    sessions = _two_leg_sessions(20)
    async with EmbeddedBroker(free_port()) as other:
        elsewhere = msgspec.structs.replace(kafka, bootstrap=other.bootstrap)
        await kafka_io.ensure_topics(elsewhere)
        await _produce(elsewhere, [a for a, _ in sessions])
        async with _running(elsewhere, tmp_path) as metrics:
            await _consumed(metrics, len(sessions))
    await _produce(kafka, [b for _, b in sessions])
    async with _running(kafka, tmp_path) as metrics:
        await _consumed(metrics, len(sessions))
        assert _sample(metrics, "restored_records_total") == 0
    latest, _ = await _sessions(kafka)
    assert latest == {b.session_key: _fold_all([b]) for _, b in sessions}  # no a legs


async def test_a_second_instance_on_the_same_state_directory_is_refused(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    async with _running(kafka, tmp_path) as metrics:
        await _produce(kafka, _golden("doc_sample"))
        await _consumed(metrics, 2)  # running on its state directory
        settings = msgspec.structs.replace(SETTINGS, state_dir=str(tmp_path))
        with pytest.raises(StateDirInUse, match="give each aggregator instance a state dir"):
            await aggregator.serve(settings, kafka, asyncio.Event())


async def test_topics_that_are_not_co_partitioned_are_refused(kafka: KafkaSettings) -> None:
    kafka = msgspec.structs.replace(kafka, topic_prefix=f"{kafka.topic_prefix}apart.")
    await kafka_io.ensure_topics(msgspec.structs.replace(kafka, partitions=2), [topics.SESSIONS])
    with pytest.raises(
        aggregator.AggregatorError,
        match=re.escape(
            f"{kafka.topic(topics.EVENTS)} has 4 partitions and {kafka.topic(topics.SESSIONS)} 2"
        ),
    ):
        await aggregator.serve(SETTINGS, kafka, asyncio.Event())
