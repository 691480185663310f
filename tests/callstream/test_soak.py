"""The soak benchmark's promise at a small scale: the `up` topology under callbacks while one
instance of the normalizer, the aggregator, the store and the alert sink is SIGKILLed in turn and
the broker is paused loses, doubles and misfolds nothing that the ingress acknowledged, with one
instance of each consumer service and with two, storing into SQLite (one store) or PostgreSQL
(a store per instance). (`callstream bench soak` runs it at 2,000 callbacks/s for 120 s; this run
sends 3,000 in about 15 s.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import msgspec
import pytest
from helpers import RECEIVED_AT, raw, settings_for
from msgspec.structs import replace

from callstream.bench import soak
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.settings import KafkaSettings
from normalize import normalize
from normalize.sessions import fold
from schemas import topics
from sinks.postgres import PostgresBackend

GOLDEN = Path(__file__).parent.parent / "golden" / "wavecell"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("instances", "backend"), [(1, "sqlite"), (2, "sqlite"), (2, "postgresql")]
)
async def test_nothing_acknowledged_is_lost_doubled_or_misfolded_under_faults(
    instances: int, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The services run on the tests' group timings (the same faults strike): a killed member's
    # partitions move on within seconds, not after the default 10 s session.
    timings = settings_for("")
    monkeypatch.setenv("CALLSTREAM_KAFKA__SESSION_TIMEOUT_MS", str(timings.session_timeout_ms))
    monkeypatch.setenv(
        "CALLSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS", str(timings.heartbeat_interval_ms)
    )
    store = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    results = await asyncio.to_thread(
        soak.run, duration=15.0, rate=200.0, instances=instances, store=store
    )

    assert results["acknowledged"] == 3_001  # with the warm-up callback
    assert results["answers"].get("503", 0) > 0  # the pause was felt: callbacks were sent again
    # One SQLite store whatever the instances (up.SQLITE_WRITERS); PostgreSQL takes several.
    stores = 1 if backend == "sqlite" else instances
    assert (results["store"], results["stores"]) == (backend, stores)

    def nth(service: str, turn: int, count: int = instances) -> str:
        return service if count == 1 else f"{service}-{turn % count + 1}"

    assert [fault.split(": ")[1] for fault in results["faults"]] == [
        f"{nth('normalizer', 0)} killed",
        f"{nth('aggregator', 1)} killed",
        f"{nth('store', 2, stores)} killed",
        f"{nth('alerts', 3)} killed",
        f"broker paused {soak.PAUSE_S:.0f}s",
    ]
    killed = {fault.split(": ")[1].removesuffix(" killed") for fault in results["faults"]}
    assert results["restarts"] == {
        name: int(name in killed) for name in results["restarts"]
    }  # each killed instance restarted once, and nothing else
    assert len(results["restarts"]) == 3 * instances + stores + 1  # and the ingress
    assert results["events"] > results["acknowledged"]  # wavecell callbacks carry two legs
    lost = (results["missing"], results["duplicated_rows"], results["wrong_sessions"])
    assert lost == (0, 0, 0), soak.report(results)
    assert results["alerts"] > 0  # the soak's flapping rule fires and resolves episodes
    assert results["alerts_duplicated"] == 0  # with two alert sinks as with one
    assert results["stored"] == results["events"]
    assert results["sessions"] == results["acknowledged"]
    assert results["p50_ms"] <= results["p99_ms"]
    assert set(results["hops_ms"]) == {"raw_ack", "events", "sessions", "store"}


async def test_a_lost_event_and_a_wrong_session_are_traced_to_the_records_holding_them(
    kafka: KafkaSettings,
) -> None:
    body = (GOLDEN / "doc_sample.json").read_bytes()
    events = normalize("wavecell", body, received_at=RECEIVED_AT)
    await kafka_io.publish(kafka, topics.RAW, [replace(raw("wavecell", body), partition=1)])
    other = OutRecord(None, b'{"event_id": "another"}', [], partition=1)
    await kafka_io.publish(
        kafka,
        topics.EVENTS,
        [
            other,
            *(
                OutRecord(e.session_key.encode(), msgspec.json.encode(e), [], partition=1)
                for e in events
            ),
        ],
    )

    lost, wrong = events[0].event_id, events[0].session_key
    session = None
    for event in events:
        session = fold(session, event) or session
    assert session is not None
    version = OutRecord(wrong.encode(), msgspec.json.encode(session), [], partition=0)
    await kafka_io.publish(kafka, topics.SESSIONS, [version])

    found = await soak._trace(kafka, {lost}, {wrong})

    assert found == {
        lost: ["calls.raw 1:0", "calls.events 1:1"],
        wrong: [
            "calls.events 1:1",
            "calls.events 1:2",
            f"calls.sessions 0:0 {session.status.value} of 2 events",
        ],
    }


async def test_a_postgresql_soak_sees_each_stored_event_once_and_a_lost_connection_loses_none(
    postgres_url: str,
) -> None:
    first, later = (
        normalize("wavecell", (GOLDEN / name).read_bytes(), received_at=RECEIVED_AT)
        for name in ("doc_sample.json", "at_the_bounds.json")
    )
    assert len({e.event_id for e in [*first, *later]}) == 4  # two calls of two legs each
    async with soak._postgres_schema(postgres_url) as store:
        backend = PostgresBackend(store)
        await backend.open()
        taken = soak._TakenArrivals(store)
        try:
            await backend.write(first, [])
            assert sorted(await taken()) == sorted(e.event_id for e in first)
            await backend.write(first, [])  # written again: no new row, nothing new to see
            assert await taken() == []

            await backend.write(later, [])
            assert taken.db is not None
            await backend.fetch("SELECT pg_terminate_backend($1)", [taken.db.get_server_pid()])
            assert await taken() == []  # the watch's connection was lost: nothing read
            assert sorted(await taken()) == sorted(e.event_id for e in later)  # read again
        finally:
            await taken.close()
            await backend.close()
        schema = store.rpartition("search_path=")[2]
    db = await asyncpg.connect(postgres_url)
    try:
        assert await db.fetchval("SELECT to_regnamespace($1)", schema) is None  # dropped
    finally:
        await db.close()
