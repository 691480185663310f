"""`callstream dlq list|show|redrive`: read calls.dlq; normalize dead letters again.

calls.dlq is append-only, so a redrive cannot delete a letter. Instead it appends, for every
letter it redrove, one record that points back at it with the header `cs-redrive-of`
("partition:offset"): the letter itself again with stage `redrive` and the new reason if it
fails again, or an empty marker with stage `redriven` if its events were produced. `list` hides
letters with such a follow-up and the markers (unless `include_redriven`), and `redrive` never
takes them, so each letter is redriven at most once; the failed-again copy is the one to redrive
next time. Only letters of raw records (stages ingress, poll, normalize, replay, redrive) can be
redriven; those of the store, aggregator and alerts hold events or sessions, not raw reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
import structlog
from aiokafka import AIOKafkaProducer

from callstream.progress import Progress
from callstream.replay import provider_of
from callstream.reports import table
from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import OutRecord, Record
from foundation.settings import KafkaSettings
from foundation.text import printable
from normalize.service import route
from schemas import topics
from schemas.topics import RAW_STAGES, Stage

"""Stages whose dead letters hold a raw report with its raw headers."""
BATCH = 1_000
LIST_HEADER = ("id", "time", "stage", "provider", "size", "reason")

log = structlog.get_logger("callstream.dlq")


class DlqError(CallstreamError):
    """An unknown or malformed dead-letter id, or stages that cannot be redriven."""


class DeadLetter(NamedTuple):
    id: str
    """"partition:offset" in calls.dlq."""
    time: datetime
    """When it was written to calls.dlq."""
    stage: str
    provider: str | None
    reason: str
    size: int
    headers: dict[str, str]
    body: bytes
    record: Record


class RedriveResult(NamedTuple):
    ok: int
    """Letters whose events were produced to calls.events (a marker was appended for each)."""
    failed: int
    """Letters that failed again, appended anew with stage `redrive` and the new reason."""
    events: int
    """Events acknowledged on calls.events."""


def letter_id(record: Record) -> str:
    return f"{record.partition}:{record.offset}"


def _letter(record: Record) -> DeadLetter:
    headers = {name: value.decode(errors="replace") for name, value in record.headers}
    return DeadLetter(
        id=letter_id(record),
        time=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        stage=headers.get(topics.ERROR_STAGE, "?"),
        provider=provider_of(record),
        reason=headers.get(topics.ERROR, ""),
        size=len(record.value or b""),
        headers=headers,
        body=record.value or b"",
        record=record,
    )


async def letters(
    kafka: KafkaSettings,
    *,
    stage: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
    include_redriven: bool = False,
) -> list[DeadLetter]:
    """The dead letters of calls.dlq matching every filter given, oldest first per partition.

    Letters already redriven and the markers of successful redrives are left out unless
    `include_redriven`.
    """
    found = [_letter(record) for record in await kafka_io.read_all(kafka, topics.DLQ)]
    redriven = {
        letter.headers[topics.REDRIVE_OF] for letter in found if topics.REDRIVE_OF in letter.headers
    }
    return [
        letter
        for letter in found
        if (include_redriven or (letter.id not in redriven and letter.stage != Stage.REDRIVEN))
        and (stage is None or letter.stage == stage)
        and (provider is None or letter.provider == provider)
        and (since is None or letter.time >= since)
    ]


def render_list(found: Iterable[DeadLetter]) -> str:
    """A table of letters, one line each, the reason cut to 80 characters."""
    return table(
        LIST_HEADER,
        [[d.id, d.time, d.stage, d.provider, d.size, _cut(d.reason, 80)] for d in found],
    )


async def show(kafka: KafkaSettings, id: str) -> DeadLetter:
    """The letter at `id` ("partition:offset"), markers and redriven letters included."""
    partition, offset = _parse_id(id)
    for letter in await letters(kafka, include_redriven=True):
        if (letter.record.partition, letter.record.offset) == (partition, offset):
            return letter
    raise DlqError(f"no dead letter {id} in {kafka.topic(topics.DLQ)}")


def render_show(letter: DeadLetter) -> str:
    """Its id, time and headers, one per line, then a blank line and the body as text; control
    characters escaped, but for the body's line feeds and tabs."""
    lines = [f"id: {letter.id}", f"time: {letter.time.isoformat()}"]
    lines += [f"{printable(name)}: {printable(value)}" for name, value in letter.headers.items()]
    return "\n".join([*lines, "", printable(letter.body.decode(errors="replace"), keep="\n\t")])


async def redrive(
    kafka: KafkaSettings,
    *,
    stage: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
    ids: Iterable[str] = (),
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> RedriveResult:
    """Normalize the matching letters again: events to calls.events, failures back to calls.dlq.

    Takes the letters of raw stages not redriven before that match every filter (and, if `ids`
    are given, only those). Events are acknowledged before the follow-up records are written,
    so a crash in between only means those letters get redriven once more, harmlessly.
    """
    if stage is not None and stage not in RAW_STAGES:
        raise DlqError(f"letters of stage {stage!r} hold no raw report; redrive takes "
                       f"{', '.join(sorted(RAW_STAGES))}")  # fmt: skip
    wanted = {_parse_id(i) for i in ids}
    todo = [
        letter
        for letter in await letters(kafka, stage=stage, provider=provider, since=since)
        if letter.stage in RAW_STAGES
        and (not wanted or (letter.record.partition, letter.record.offset) in wanted)
    ]
    progress = progress or Progress("redrive")
    progress.total = len(todo)
    ok = failed = events = 0
    async with kafka_io.producer(kafka) as producer:
        for start in range(0, len(todo), BATCH):
            if stop is not None and stop.is_set():
                break
            chunk = todo[start : start + BATCH]
            batch_ok, batch_failed, batch_events = await _redrive(kafka, producer, chunk)
            ok, failed, events = ok + batch_ok, failed + batch_failed, events + batch_events
            progress.advance(len(chunk))
    progress.close()
    result = RedriveResult(ok, failed, events)
    log.info("redrive_finished", **result._asdict())
    return result


async def _redrive(
    kafka: KafkaSettings, producer: AIOKafkaProducer, chunk: list[DeadLetter]
) -> tuple[int, int, int]:
    """One chunk: its events (acked), then a follow-up record per letter. (ok, failed, events)"""
    outcomes: list[OutRecord] = []
    produced: list[OutRecord] = []
    failed = 0
    for letter in chunk:
        events, dead = route([letter.record], Stage.REDRIVE)
        of = (topics.REDRIVE_OF, letter.id.encode())
        if dead:
            failed += 1
            outcomes.append(msgspec.structs.replace(dead[0], headers=[*dead[0].headers, of]))
        else:
            produced.extend(events)
            marker = [(topics.ERROR_STAGE, Stage.REDRIVEN.encode()), (topics.ERROR, b""), of]
            outcomes.append(OutRecord(letter.record.key, b"", marker))
    await kafka_io.send_all(producer, kafka.topic(topics.EVENTS), produced)
    await kafka_io.send_all(producer, kafka.topic(topics.DLQ), outcomes)
    return len(chunk) - failed, failed, len(produced)


def _parse_id(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not (sep and partition.isdigit() and offset.isdigit()):
        raise DlqError(f"a dead-letter id is PARTITION:OFFSET, got {text!r}")
    return int(partition), int(offset)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
