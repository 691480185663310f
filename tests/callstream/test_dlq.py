"""`callstream dlq` against the real broker: list, show, filters, and a redrive to the store."""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import drained, env_for, normalizer, raw, serving, store_sink

from callstream import dlq, samples
from callstream.progress import Progress
from foundation import kafka as kafka_io
from foundation.errors import NormalizeError
from foundation.kafka import OutRecord
from foundation.settings import KafkaSettings
from normalize import ADAPTERS
from normalize.report import Adapter, Report
from schemas import CallEvent, topics
from schemas.raw import dead_letter_headers


def _letter(provider: str, body: bytes, stage: str, error: str) -> OutRecord:
    record = raw(provider, body)
    return msgspec.structs.replace(
        record, headers=dead_letter_headers(record.headers, stage, error)
    )


async def _letters(kafka: KafkaSettings, **filters: Any) -> list[dlq.DeadLetter]:
    return [letter async for letter in dlq.letters(kafka, **filters)]


def _quiet() -> Progress:
    return Progress("redrive", stream=io.StringIO())


async def test_a_fixed_normalizer_bug_redriven_lands_each_event_once(
    kafka: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    good = ADAPTERS["wavecell"]

    def broken(_body: bytes, _report: Report) -> list[CallEvent]:
        raise NormalizeError("wavecell", "$", "simulated normalizer bug")

    monkeypatch.setitem(ADAPTERS, "wavecell", Adapter(good.name, good.source, broken))
    bodies = [raw("wavecell", body) for body in samples.payloads("wavecell", 30)]
    bodies.append(raw("wavecell", b"[]"))  # really bad: fails again after the fix
    await kafka_io.publish(kafka, topics.RAW, bodies)
    async with serving(normalizer(kafka)) as task:
        await drained(kafka, "test-normalizer", topics.RAW, task)
    assert len(await _letters(kafka, stage="normalize")) == len(bodies)

    monkeypatch.setitem(ADAPTERS, "wavecell", good)  # the fix
    result = await dlq.redrive(kafka, stage="normalize", progress=_quiet())
    events = await kafka_io.read_all(kafka, topics.EVENTS)
    assert (result.ok, result.failed, result.events) == (len(bodies) - 1, 1, len(events))
    [again] = await _letters(kafka)
    assert (again.stage, again.body) == ("redrive", b"[]")
    assert again.reason.startswith("wavecell: $: wrong type")
    assert await dlq.redrive(kafka, stage="normalize", progress=_quiet()) == (0, 0, 0)  # once

    async with serving(store_sink(kafka, url)) as task:
        await drained(kafka, "test-store", topics.EVENTS, task)
    ids = [msgspec.json.decode(e.value)["event_id"] for e in events]
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        stored = db.execute("SELECT event_id, count(*) FROM call_events GROUP BY event_id")
        assert dict(stored.fetchall()) == dict.fromkeys(ids, 1)


async def test_list_and_show_render_letters_and_filters_apply(kafka: KafkaSettings) -> None:
    await kafka_io.publish(
        kafka,
        topics.DLQ,
        [
            _letter("wavecell", b'{"a": 1}', "normalize", "wavecell: $.a: bad"),
            _letter("voice_messaging", b"not json", "ingress", "not a JSON object"),
            OutRecord(b"k", b"{}", [(topics.ERROR_STAGE, b"store"), (topics.ERROR, b"no event")]),
        ],
    )
    every = await _letters(kafka)
    assert sorted((d.stage, d.provider, d.size) for d in every) == [
        ("ingress", "voice_messaging", 8), ("normalize", "wavecell", 8), ("store", None, 2),
    ]  # fmt: skip
    assert [d.reason for d in await _letters(kafka, stage="ingress")] == ["not a JSON object"]
    assert [d.stage for d in await _letters(kafka, provider="wavecell")] == ["normalize"]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await _letters(kafka, since=later) == []

    table = dlq.render_list(every).splitlines()
    assert table[0].split() == list(dlq.LIST_HEADER)
    assert len(table) == 4
    assert any("not a JSON object" in line for line in table)
    ingress = next(d for d in every if d.stage == "ingress")
    shown = dlq.render_show(await dlq.show(kafka, ingress.id))
    assert f"id: {ingress.id}" in shown
    assert "cs-error-stage: ingress" in shown
    assert shown.endswith("\n\nnot json")
    with pytest.raises(dlq.DlqError):
        await dlq.show(kafka, "0:999")
    with pytest.raises(dlq.DlqError):
        await dlq.show(kafka, "nope")
    with pytest.raises(dlq.DlqError):
        await dlq.redrive(kafka, stage="store")


async def test_redrive_takes_ingress_letters_and_only_the_ids_asked_for(
    kafka: KafkaSettings,
) -> None:
    await kafka_io.publish(
        kafka,
        topics.DLQ,
        [
            _letter("voice_messaging", b"not json", "ingress", "not a JSON object"),
            _letter("wavecell", samples.payloads("wavecell", 1)[0], "normalize", "old bug"),
            OutRecord(b"k", b"{}", [(topics.ERROR_STAGE, b"store"), (topics.ERROR, b"no event")]),
        ],
    )
    before = {d.stage: d for d in await _letters(kafka)}
    result = await dlq.redrive(kafka, ids=[before["ingress"].id], progress=_quiet())
    assert (result.ok, result.failed) == (0, 1)
    after = {d.stage: d for d in await _letters(kafka)}
    assert after.keys() == {"redrive", "normalize", "store"}  # the ingress one is superseded
    assert after["redrive"].headers[topics.REDRIVE_OF] == before["ingress"].id
    result = await dlq.redrive(kafka, progress=_quiet())  # the rest; store letters are not raw
    assert (result.ok, result.failed) == (1, 1)
    assert {d.stage for d in await _letters(kafka)} == {"redrive", "store"}
    every = await _letters(kafka, include_redriven=True)
    assert sorted(d.stage for d in every) == sorted(
        ["ingress", "normalize", "store", "redrive", "redrive", "redriven"]
    )
    assert len(await kafka_io.read_all(kafka, topics.EVENTS)) == result.events > 0


LETTERS, LETTER_BYTES = 100_000, 3_000


_PEAK_REPORTED = """
import atexit, sys
from callstream.cli import main

def report(path=sys.argv[1]):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))

atexit.register(report)
sys.exit(main(sys.argv[2:]))
"""
"""`callstream ARGS` that writes its peak resident memory (VmHWM) to a file as it exits. Not
the rusage of a waited-for child: its ru_maxrss starts at the parent's own peak, which exec
records from the memory it shared with the parent (vfork)."""


def _measured(kafka: KafkaSettings, *args: str) -> tuple[list[str], int]:
    """`callstream ARGS` in a process of its own, on `kafka`: its first and last lines of
    output, its line count, and its peak resident memory in bytes."""
    first = last = ""
    count = 0
    with tempfile.TemporaryDirectory() as directory:
        peak_file = Path(directory) / "peak"
        with subprocess.Popen(
            [sys.executable, "-c", _PEAK_REPORTED, str(peak_file), *args],
            stdout=subprocess.PIPE,
            env=env_for(kafka),
        ) as run:
            assert run.stdout is not None
            for count, line in enumerate(run.stdout, 1):  # noqa: B007 - the count is wanted
                first, last = first or line.decode(), line.decode()
        assert run.returncode == 0
        peak_kb = int(peak_file.read_text().split()[1])  # "VmHWM:  123456 kB"
    return [first.rstrip(), last.rstrip(), str(count)], peak_kb * 1024


def _noise(size: int, seed: int) -> bytes:
    """`size` hex digits that compress as little as a real report's fields: padding of one
    repeated character would shrink a hundredfold on the wire and swell back in the consumer,
    which then holds far more letters than its fetch size suggests."""
    return random.Random(seed).randbytes(size // 2 + 1).hex()[:size].encode()


@pytest.mark.slow
async def test_list_redrive_and_show_hold_a_batch_not_the_topic(kafka: KafkaSettings) -> None:
    """Letters totalling ~290 MB; each command peaks well below half of that (the whole topic
    read into memory, as `read_all` does, peaks at ~3x the letters' size)."""
    padded = [
        body[:-1] + b',"padding":"' + _noise(LETTER_BYTES - len(body) - 13, seed=i) + b'"}'
        for i, body in enumerate(samples.payloads("wavecell", 100))
    ]
    async with kafka_io.producer(kafka) as producer:
        for start in range(0, LETTERS, 10_000):
            await kafka_io.send_all(
                producer,
                kafka.topic(topics.DLQ),
                (_letter("wavecell", padded[i % 100], "normalize", "old bug")
                 for i in range(start, start + 10_000)),
            )  # fmt: skip
    limit = LETTERS * LETTER_BYTES // 2
    bootstrap = ("--kafka", kafka.bootstrap)

    (header, last, lines), peak = await asyncio.to_thread(
        _measured, kafka, "dlq", "list", *bootstrap
    )
    assert (header.split(), int(lines)) == (list(dlq.LIST_HEADER), LETTERS + 1)
    assert last.split()[2:5] == ["normalize", "wavecell", str(LETTER_BYTES)]
    assert peak < limit

    (_, result, _), peak = await asyncio.to_thread(_measured, kafka, "dlq", "redrive", *bootstrap)
    assert result.split()[:2] == [f"ok={LETTERS}", "failed=0"]
    assert peak < limit

    (shown, _, _), peak = await asyncio.to_thread(
        _measured, kafka, "dlq", "show", last.split()[0], *bootstrap
    )
    assert shown == f"id: {last.split()[0]}"
    assert peak < limit
    assert await _letters(kafka) == []  # all redriven, each once
