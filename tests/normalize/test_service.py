"""The normalizer service against the real broker: events, dead letters, offsets."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from aiokafka import ConsumerRecord
from helpers import DEADLINE_S, RECEIVED_AT, committed, drained, env_for, eventually, raw
from mutations import mutate, mutate_context, mutate_headers, seeds

from callstream import samples
from foundation import kafka as kafka_io
from foundation.kafka import OutRecord
from foundation.settings import KafkaSettings, NormalizerSettings
from normalize import ADAPTERS, normalize, service
from schemas import CallEvent, RawRef, cloudevents, topics

GOLDEN = Path(__file__).parent.parent / "golden"
GROUP = "test-normalizer"

Read = ConsumerRecord[bytes, bytes]
_event = msgspec.json.Decoder(CallEvent)


def _golden(errors: bool) -> list[tuple[Path, dict[str, str]]]:
    """Golden bodies that yield events (errors=False) or an .error.txt (True), with context."""
    cases = []
    for body in sorted(GOLDEN.glob("*/*.json")):
        if body.name.endswith((".expected.json", ".context.json")):
            continue
        if body.with_name(body.stem + ".error.txt").exists() == errors:
            context = body.with_name(body.stem + ".context.json")
            cases.append(
                (body, msgspec.json.decode(context.read_bytes()) if context.exists() else {})
            )
    return cases


async def _all_committed(kafka: KafkaSettings, count: int) -> None:
    async def done() -> bool:
        return sum((await committed(kafka, GROUP, topics.RAW)).values()) >= count

    await eventually(done, f"{count} raw records committed")


@contextlib.asynccontextmanager
async def _running(
    kafka: KafkaSettings, max_batch: int = 5_000
) -> AsyncIterator[asyncio.Task[None]]:
    """The service in this process; stopped (and awaited) on leaving the block."""
    stop = asyncio.Event()
    settings = NormalizerSettings(group_id=GROUP, max_batch=max_batch)
    task = asyncio.create_task(service.serve(settings, kafka, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


def _expected(raw: Read) -> list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]:
    """What the contract says a raw record read back from calls.raw becomes on calls.events."""
    headers = dict(raw.headers)
    events = normalize(
        headers[topics.PROVIDER].decode(),
        raw.value or b"",
        received_at=RECEIVED_AT,
        context=msgspec.json.decode(headers[topics.CONTEXT]) if topics.CONTEXT in headers else {},
        raw=RawRef(raw.topic, raw.partition, raw.offset),
    )
    return [
        (
            event.session_key.encode(),
            msgspec.json.encode(event),
            (
                *cloudevents.headers(
                    event.event_id, event.provider, cloudevents.EVENT_TYPE, event.occurred_at
                ),
                (topics.RECEIVED_AT, headers[topics.RECEIVED_AT]),  # the raw record's, unchanged
            ),
        )
        for event in events
    ]


async def test_golden_reports_become_their_canonical_events(kafka: KafkaSettings) -> None:
    cases = _golden(errors=False)
    await kafka_io.publish(
        kafka, topics.RAW, [raw(body.parent.name, body.read_bytes(), ctx) for body, ctx in cases]
    )
    async with _running(kafka):
        await _all_committed(kafka, len(cases))
    raws = await kafka_io.read_all(kafka, topics.RAW)
    expected = Counter(out for raw in raws for out in _expected(raw))
    produced = await kafka_io.read_all(kafka, topics.EVENTS)
    assert Counter((m.key, m.value, m.headers) for m in produced) == expected
    assert {_event.decode(m.value).provider for m in produced} == {
        body.parent.name for body, _ in cases
    }
    assert await kafka_io.read_all(kafka, topics.DLQ) == []


async def test_bad_records_go_to_the_dlq_with_their_error_and_the_rest_flows(
    kafka: KafkaSettings,
) -> None:
    reasons: dict[bytes, str] = {}
    bad: list[OutRecord] = []
    for body, ctx in _golden(errors=True):
        key = f"{body.parent.name}/{body.stem}".encode()
        bad.append(raw(body.parent.name, body.read_bytes(), ctx, key))
        reasons[key] = body.with_name(body.stem + ".error.txt").read_text().strip()
    bad.append(raw("nope", b"{}", key=b"unknown-provider"))
    reasons[b"unknown-provider"] = "nope: provider: unknown provider"
    bad.append(OutRecord(b"no-headers", b"{}", []))
    reasons[b"no-headers"] = "raw record headers: cs-provider and cs-received-at are required"
    bad_time = raw("wavecell", b"{}", key=b"bad-received-at")
    bad.append(
        msgspec.structs.replace(
            bad_time, headers=[(topics.PROVIDER, b"wavecell"), (topics.RECEIVED_AT, b"x")]
        )
    )
    reasons[b"bad-received-at"] = (
        "raw record headers: cs-received-at is not an RFC 3339 time with an offset"
    )
    good = raw("wavecell", (GOLDEN / "wavecell" / "doc_sample.json").read_bytes())
    await kafka_io.publish(kafka, topics.RAW, [*bad, good])

    async with _running(kafka, max_batch=7):
        await _all_committed(kafka, len(bad) + 1)
    dead = {m.key: m for m in await kafka_io.read_all(kafka, topics.DLQ)}
    sent = {record.key: record for record in bad}
    assert dead.keys() == sent.keys()
    for key, letter in dead.items():
        assert letter.value == sent[key].value
        *headers, (error_name, error) = letter.headers
        assert error_name == topics.ERROR
        said = error.decode()  # callstream's words, then perhaps a library's detail in parentheses
        assert said == reasons[key] or said.startswith(f"{reasons[key]} ("), key
        assert tuple(headers) == (
            *sent[key].headers,
            (topics.ERROR_STAGE, b"normalize"),
        ), key
    assert len(await kafka_io.read_all(kafka, topics.EVENTS)) == 2  # the good record's two legs


def _hostile_stream(count: int) -> list[OutRecord]:
    """`count` raw records of every provider, most mutated in body or context, some in headers;
    keyed by their number. Then a golden Wavecell report keyed for each partition."""
    rng = random.Random(9)
    records = []
    for number in range(count):
        provider = rng.choice(sorted(ADAPTERS))
        seed = rng.choice(seeds(provider))
        body = mutate(rng, seed.body) if rng.random() < 0.8 else seed.body
        record = raw(provider, body, mutate_context(rng, seed.context), str(number).encode())
        if rng.random() < 0.1:
            record = msgspec.structs.replace(record, headers=mutate_headers(rng, record.headers))
        records.append(record)
    golden = (GOLDEN / "wavecell" / "doc_sample.json").read_bytes()
    keys = {kafka_io.partition_for(str(n).encode(), range(4)): n for n in range(count, count + 99)}
    return records + [raw("wavecell", golden, key=str(n).encode()) for n in keys.values()]


async def test_a_hostile_stream_is_consumed_to_the_end_and_each_record_accounted_for(
    kafka: KafkaSettings,
) -> None:
    stream = _hostile_stream(1_000)
    await kafka_io.publish(kafka, topics.RAW, stream)
    async with _running(kafka, max_batch=50) as task:
        await drained(kafka, GROUP, topics.RAW, task)
    raws = await kafka_io.read_all(kafka, topics.RAW)
    assert len(raws) == len(stream)
    key_at = {(m.partition, m.offset): m.key for m in raws}
    legs = Counter(
        key_at[ref.partition, ref.offset]
        for m in await kafka_io.read_all(kafka, topics.EVENTS)
        if (ref := _event.decode(m.value).raw) is not None
    )
    letters = Counter(m.key for m in await kafka_io.read_all(kafka, topics.DLQ))
    for record in raws:
        events, dead = service.route([record])  # what the record alone must become
        assert (legs[record.key], letters[record.key]) == (len(events), len(dead)), record.key
        for letter in dead:
            error = dict(letter.headers)[topics.ERROR].decode()
            assert not error.startswith("unexpected"), error
    assert sum(letters.values()) > 500  # hostile indeed
    assert sum(legs.values()) > 100
    last = {m.partition: m for m in raws}  # each partition's last record is a golden report
    assert {m.key for m in last.values()} == {record.key for record in stream[-4:]}
    assert all(legs[m.key] == 2 for m in last.values())  # the partition moved on to it


async def test_offsets_are_committed_only_after_their_events_are_on_the_broker(
    kafka: KafkaSettings,
) -> None:
    count = 3_000
    await kafka_io.publish(
        kafka, topics.RAW, [raw("wavecell", body) for body in samples.payloads("wavecell", count)]
    )
    checks = 0
    async with _running(kafka, max_batch=40):
        while True:
            offsets = await committed(kafka, GROUP, topics.RAW)
            produced = {
                (ref.partition, ref.offset)
                for m in await kafka_io.read_all(kafka, topics.EVENTS)
                if (ref := _event.decode(m.value).raw) is not None
            }
            for tp, offset in offsets.items():
                missing = {(tp.partition, o) for o in range(offset)} - produced
                assert not missing, f"committed past records without events: {sorted(missing)[:5]}"
            checks += 1
            if sum(offsets.values()) == count:
                break
    assert checks > 1  # the invariant was checked while the service was still working


async def test_stop_finishes_commits_and_hands_the_partitions_over(kafka: KafkaSettings) -> None:
    bodies = samples.payloads("wavecell", 600)
    await kafka_io.publish(kafka, topics.RAW, [raw("wavecell", body) for body in bodies[:500]])
    async with _running(kafka) as first:
        await _all_committed(kafka, 500)
    assert first.done()
    assert first.exception() is None

    await kafka_io.publish(kafka, topics.RAW, [raw("wavecell", body) for body in bodies[500:]])
    async with _running(kafka):
        await _all_committed(kafka, 600)
    # Everything the first run had was committed when it stopped: nothing was done twice.
    assert len(await kafka_io.read_all(kafka, topics.EVENTS)) == 2 * 600


async def _start_normalizer(kafka: KafkaSettings, log: Path) -> asyncio.subprocess.Process:
    env = env_for(kafka, {"CALLSTREAM_NORMALIZER__MAX_BATCH": "100"})
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "normalizer", "--kafka", kafka.bootstrap,
            env=env, stdout=stderr, stderr=stderr,
        )  # fmt: skip


async def test_a_killed_normalizer_loses_no_raw_record(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    bodies = samples.payloads("wavecell", 4_000)
    log = tmp_path / "normalizer.log"
    normalizer = await _start_normalizer(kafka, log)
    try:
        for chunk in range(0, 2_000, 100):  # fed while it runs
            await kafka_io.publish(
                kafka, topics.RAW, [raw("wavecell", body) for body in bodies[chunk : chunk + 100]]
            )

        async def some_committed() -> bool:
            return sum((await committed(kafka, "callstream-normalizer", topics.RAW)).values()) > 0

        await eventually(some_committed, "the first commits")
        normalizer.kill()  # SIGKILL: no final batch, no commit, no leaving the group
        await normalizer.wait()
        await kafka_io.publish(
            kafka, topics.RAW, [raw("wavecell", body) for body in bodies[2_000:3_000]]
        )
        normalizer = await _start_normalizer(kafka, log)
        await kafka_io.publish(
            kafka, topics.RAW, [raw("wavecell", body) for body in bodies[3_000:]]
        )

        async def all_committed() -> bool:
            offsets = await committed(kafka, "callstream-normalizer", topics.RAW)
            return sum(offsets.values()) >= len(bodies)

        await eventually(all_committed, f"all raw records committed; see {log}")
    finally:
        if normalizer.returncode is None:
            normalizer.terminate()
            await normalizer.wait()

    legs = Counter()
    for message in await kafka_io.read_all(kafka, topics.EVENTS):
        event = _event.decode(message.value)
        assert event.raw is not None
        legs[event.raw.partition, event.raw.offset, event.leg] += 1
    raws = await kafka_io.read_all(kafka, topics.RAW)
    assert len(raws) == len(bodies)
    lost = [(m.partition, m.offset) for m in raws if not legs[m.partition, m.offset, "a"]]
    assert not lost, f"raw records without events: {lost[:5]}"
    assert sum(legs.values()) >= 2 * len(bodies)
