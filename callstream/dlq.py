"""`callstream dlq list|show|redrive`: read calls.dlq; normalize dead letters again.

calls.dlq is append-only, so a redrive cannot delete a letter. Instead it appends, for every
letter it redrove, one record that points back at it with the header `cs-redrive-of`
("partition:offset"): the letter itself again with stage `redrive` and the new reason if it
fails again, or an empty marker with stage `redriven` if its events were produced. `list` hides
letters with such a follow-up and the markers (unless `include_redriven`), and `redrive` never
takes them, so each letter is redriven at most once; the failed-again copy is the one to redrive
next time. Only letters of raw records (stages ingress, poll, normalize, replay, redrive) can be
redriven; those of the store, aggregator and alerts hold events or sessions, not raw reports.

Memory stays bounded whatever calls.dlq holds: `list` and `redrive` stream it a batch at a time
(`foundation.kafka.TopicScan`), keeping only the ids of letters already redriven (one first
pass over the follow-ups), and `show` fetches the one record at its offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from callstream.progress import Progress
from callstream.replay import provider_of
from foundation import kafka as kafka_io
from foundation.errors import CallstreamError
from foundation.kafka import POLL_MS, OutRecord, Record, TopicScan
from foundation.settings import KafkaSettings
from foundation.text import printable
from normalize.service import route
from schemas import topics
from schemas.providers import PROVIDERS
from schemas.topics import RAW_STAGES, Stage
from sinks.backend import time_text

BATCH = 1_000
"""Letters read, and redriven, at a time."""
SHOW_WITHIN_S = 30.0
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
    scan: TopicScan | None = None,
) -> AsyncIterator[DeadLetter]:
    """The dead letters of calls.dlq matching every filter given, oldest first per partition,
    streamed: one batch of BATCH letters in memory at a time.

    Letters already redriven and the markers of successful redrives are left out unless
    `include_redriven`. A follow-up may be in another partition than its letter, so knowing
    which were redriven takes a first pass over calls.dlq that keeps only the ids the
    follow-ups point at: memory for that grows with the number of redrives (some 100 bytes
    each), never with the letters. Both passes read up to the same end (`scan`'s, if given).
    """
    scan = scan or TopicScan(kafka, topics.DLQ, max_records=BATCH)
    redriven = set() if include_redriven else await _redriven_ids(scan)
    async with aclosing(scan.batches()) as batches:  # its consumer closed if we stop early
        async for batch in batches:
            for letter in map(_letter, batch):
                hidden = letter.id in redriven or letter.stage == Stage.REDRIVEN
                if (
                    (include_redriven or not hidden)
                    and (stage is None or letter.stage == stage)
                    and (provider is None or letter.provider == provider)
                    and (since is None or letter.time >= since)
                ):
                    yield letter


async def _redriven_ids(scan: TopicScan) -> set[str]:
    """The ids of the letters that a follow-up record (`cs-redrive-of`) points at."""
    found: set[str] = set()
    async for batch in scan.batches():
        for record in batch:
            for name, value in record.headers:
                if name == topics.REDRIVE_OF:
                    found.add(value.decode(errors="replace"))
    return found


def render_list(found: Iterable[DeadLetter]) -> str:
    """A table of letters, one line each: `list_header()`, then `list_line()` of each."""
    lines = [list_header(), *(list_line(letter) for letter in found)]
    return "\n".join(lines if len(lines) > 1 else [*lines, "(none)"])


_WIDTHS = (
    len("0:0000000"),
    len(time_text(datetime.now(UTC))),
    max(len(stage) for stage in Stage),
    max(len(provider) for provider in PROVIDERS),
    len("size") + 4,
)
"""Columns of fixed widths, so that lines are printed as they are read; a longer value only
shifts the rest of its own line."""


def list_header() -> str:
    return _columns(LIST_HEADER)


def list_line(letter: DeadLetter) -> str:
    """One letter as a line of the list, the reason cut to 80 characters; control characters
    escaped (`foundation.text.printable`)."""
    return _columns(
        (letter.id, time_text(letter.time), letter.stage, letter.provider or "-",
         str(letter.size), _cut(letter.reason, 80))
    )  # fmt: skip


def _columns(cells: Sequence[str]) -> str:
    *fixed, reason = (printable(cell) for cell in cells)
    padded = [
        cell.rjust(width) if column == len(_WIDTHS) - 1 else cell.ljust(width)
        for column, (cell, width) in enumerate(zip(fixed, _WIDTHS, strict=True))
    ]
    return "  ".join([*padded, printable(reason)]).rstrip()


async def show(kafka: KafkaSettings, id: str) -> DeadLetter:
    """The letter at `id` ("partition:offset"), markers and redriven letters included: the one
    record fetched from its offset."""
    partition, offset = _parse_id(id)
    dlq = kafka.topic(topics.DLQ)
    async with kafka_io.consumer(kafka, group_id=None, fetch_max_wait_ms=50) as client:
        tp = TopicPartition(dlq, partition)
        if tp not in await kafka_io.partitions_of(client, dlq):
            raise DlqError(f"no dead letter {id} in {dlq}: it has no partition {partition}")
        client.assign([tp])
        start = (await client.beginning_offsets([tp]))[tp]
        if offset >= start:
            client.seek(tp, offset)
            async with asyncio.timeout(SHOW_WITHIN_S):
                while (highwater := client.highwater(tp)) is None or offset < highwater:
                    fetched = (await client.getmany(tp, timeout_ms=POLL_MS, max_records=1)).get(tp)
                    if fetched:
                        if fetched[0].offset == offset:
                            return _letter(fetched[0])
                        break
    raise DlqError(f"no dead letter {id} in {dlq}")


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
    are given, only those), up to the end calls.dlq had at the start, BATCH at a time: a batch's
    events are acknowledged before its follow-up records are written, and those before the next
    batch is taken, so a crash in between only means those letters get redriven once more,
    harmlessly. On `stop`, the batch in hand is finished. Progress counts the letters scanned.
    """
    if stage is not None and stage not in RAW_STAGES:
        raise DlqError(f"letters of stage {stage!r} hold no raw report; redrive takes "
                       f"{', '.join(sorted(RAW_STAGES))}")  # fmt: skip
    wanted = {_parse_id(i) for i in ids}
    scan = TopicScan(kafka, topics.DLQ, max_records=BATCH)
    found = letters(kafka, stage=stage, provider=provider, since=since, scan=scan)
    progress = progress or Progress("redrive")
    counts = RedriveResult(0, 0, 0)
    async with kafka_io.producer(kafka) as producer, aclosing(found):
        chunk: list[DeadLetter] = []
        async for letter in found:
            if stop is not None and stop.is_set():
                chunk.clear()
                break
            if letter.stage in RAW_STAGES and (
                not wanted or (letter.record.partition, letter.record.offset) in wanted
            ):
                chunk.append(letter)
            if len(chunk) == BATCH:
                counts = _add(counts, await _redrive(kafka, producer, chunk))
                chunk.clear()
            progress.total = scan.total
            progress.advance(scan.read - progress.done)
        if chunk:
            counts = _add(counts, await _redrive(kafka, producer, chunk))
    progress.advance(scan.read - progress.done)
    progress.close()
    log.info("redrive_finished", **counts._asdict())
    return counts


def _add(a: RedriveResult, b: RedriveResult) -> RedriveResult:
    return RedriveResult(*(x + y for x, y in zip(a, b, strict=True)))


async def _redrive(
    kafka: KafkaSettings, producer: AIOKafkaProducer, chunk: list[DeadLetter]
) -> RedriveResult:
    """One chunk: its events (acked), then a follow-up record per letter (acked)."""
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
    return RedriveResult(len(chunk) - failed, failed, len(produced))


def _parse_id(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not (sep and partition.isdigit() and offset.isdigit()):
        raise DlqError(f"a dead-letter id is PARTITION:OFFSET, got {text!r}")
    return int(partition), int(offset)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
