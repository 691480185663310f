"""vpbx poller: each client's calls, read window after window from GET /client/{id}/calls/.

Seed 002. A window is a range of call start times (`start_datetime`, `end_datetime`, GMT),
`window_s` long. The API lists a call only once it has ended, so a window is read when it is
over and again on a schedule (`schedule.py`): `rereads_s` after its end (1 min, 10 min, 1 h by
default), and last `max_call_s` after it (4 h), which reads every call up to that long. Ranges
due together that touch are read in one request; each window is read at most
len(schedule) + 1 times, counted by poller_window_reads_total{provider, read=first|reread}.
Every page (`page`, `per_page`; the last is the first one not full) is one raw record on
calls.raw, context `client_id`, `window_start`, `window_end` (the range read), `page`. Once
every page of a range is acknowledged, the schedule's progress (the first read's frontier, and
each re-read's) becomes the client's checkpoint on calls.checkpoints (compacted, key
`vpbx:<client_id>`): a restart resumes there, mid-schedule, so no read is skipped and none that
was checkpointed is done again; the pages a read done twice publishes again are duplicates that
event_id makes harmless. Time is the injected clock's (foundation.clock).

A page that is not a JSON object with a `calls` list is dead-lettered (stage `poll`) and asked
for again; if it stays malformed it is skipped (it is in calls.dlq) and paging goes on, unless
the next page is malformed too. A range whose pages cannot be fetched (the API keeps failing,
or answers nothing readable) is read again after `retry_interval_s`, from the same checkpoint,
so nothing is skipped for an API that is down. Tokens: OAuth2 client credentials.
"""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from urllib.parse import quote_plus

import msgspec
import structlog
from aiohttp import hdrs
from aiokafka.errors import KafkaError

from foundation import kafka as kafka_io
from foundation.clock import Clock
from foundation.kafka import OutRecord
from foundation.settings import Secret, SettingsError, VpbxPollSettings
from ingest.pollers import state
from ingest.pollers.common import Plumbing, Publisher
from ingest.pollers.http import Api, MalformedError, PollError, decoded
from ingest.pollers.schedule import Read, Schedule, offsets_of
from ingest.pollers.tokens import ExchangedToken
from schemas import topics
from schemas.records import Checkpoint, Reread

PROVIDER = "vpbx"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
"""How the API writes times (GMT), in records and in the window filters."""
SETTING = "CALLSTREAM_POLL__VPBX__"
MAX_SKIPPED_IN_A_ROW = 2
"""A page still malformed after its attempts is skipped (it is in calls.dlq), so that one bad
page cannot hold a client back; a second one in a row fails the window, to be read again later."""

log = structlog.get_logger("callstream.poll")


class _Page(msgspec.Struct):
    calls: list[msgspec.Raw]


class _OAuthToken(msgspec.Struct):
    access_token: str
    expires_in: float = 3_600.0


_page = msgspec.json.Decoder(_Page)
_checkpoint = msgspec.json.Decoder(Checkpoint)
_oauth_token = msgspec.json.Decoder(_OAuthToken)
_encode = msgspec.json.Encoder().encode


def checkpoint_key(client_id: str) -> bytes:
    return f"{PROVIDER}:{client_id}".encode()


async def run(settings: VpbxPollSettings, plumbing: Plumbing, stop: asyncio.Event) -> None:
    """Poll the clients this instance owns (by partition of calls.checkpoints) until `stop`.

    Raises PollerCrashedError if a client's task fails.
    """
    api = Api(PROVIDER, settings, plumbing.session, plumbing.metrics)
    api.token = ExchangedToken(lambda: _exchange(api, settings))
    checkpoints = plumbing.kafka.topic(topics.CHECKPOINTS)
    partitions = sorted(await plumbing.producer.partitions_for(checkpoints))
    publisher = Publisher(PROVIDER, plumbing)
    poller = VpbxPoller(settings, api, publisher, partitions, plumbing.clock)
    log.info("vpbx_poller_started", clients=len(settings.client_ids), url=settings.base_url)
    await state.follow(
        plumbing.kafka, topics.CHECKPOINTS, settings.group_id, poller, stop,
        counted=plumbing.metrics.hole,
    )  # fmt: skip


def check(settings: VpbxPollSettings) -> None:
    """Raise SettingsError, naming the variable, for a setting the poller cannot do without."""
    for name, value in (
        ("CLIENT_IDS", settings.client_ids),
        ("OAUTH_CLIENT_ID", settings.oauth_client_id),
        ("OAUTH_CLIENT_SECRET", settings.oauth_client_secret),
    ):
        if not value:
            raise SettingsError(f"{SETTING}{name}: required when {SETTING}BASE_URL is set")
    for name, ok in (
        ("WINDOW_S", settings.window_s > 0),
        ("MAX_CALL_S", settings.max_call_s >= 0),
        ("REREADS_S", all(s > 0 for s in settings.rereads_s)),
    ):
        if not ok:
            raise SettingsError(f"{SETTING}{name}: expected seconds > 0")


async def _exchange(api: Api, settings: VpbxPollSettings) -> tuple[Secret, float]:
    """OAuth2 client-credentials grant (RFC 6749 4.4), the client authenticated by HTTP Basic."""
    _, token = await api.call(
        "POST",
        settings.token_url or f"{settings.base_url.rstrip('/')}/oauth/token",
        decoded(_oauth_token, "vpbx token answer"),
        authorized=False,
        data={"grant_type": "client_credentials"},
        headers={
            hdrs.AUTHORIZATION: _basic(settings.oauth_client_id, settings.oauth_client_secret)
        },
    )
    return Secret(token.access_token), token.expires_in


class VpbxPoller:
    """The clients of the owned partitions, each followed by a task of its own."""

    def __init__(
        self,
        settings: VpbxPollSettings,
        api: Api,
        publisher: Publisher,
        partitions: list[int],
        clock: Clock,
    ) -> None:
        self.settings, self.api, self.publisher, self.clock = settings, api, publisher, clock
        self.clients: dict[int, list[str]] = defaultdict(list)
        for client in settings.client_ids:
            self.clients[kafka_io.partition_for(checkpoint_key(client), partitions)].append(client)
        self.window = timedelta(seconds=settings.window_s)
        self.offsets = offsets_of(settings.rereads_s, settings.max_call_s)
        self.checkpoints: dict[str, Checkpoint] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.background = state.Background()

    def apply(self, record: state.Record) -> None:
        client = (record.key or b"").decode().removeprefix(f"{PROVIDER}:")
        if client not in self.settings.client_ids:
            return
        if record.value is None:
            self.checkpoints.pop(client, None)
            return
        try:
            self.checkpoints[client] = _checkpoint.decode(record.value)
        except msgspec.DecodeError as exc:
            log.error("checkpoint_unreadable", client_id=client, error=str(exc))

    async def start(self, partition: int) -> None:
        for client in self.clients.get(partition, ()):
            self.tasks[client] = self.background.start(self._follow(client), f"vpbx:{client}")

    async def stop(self, partitions: Collection[int]) -> None:
        """Cancel the clients' tasks: a window in hand is read again by the next owner."""
        tasks = [
            self.tasks.pop(client)
            for partition in partitions
            for client in self.clients.get(partition, ())
            if client in self.tasks
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for partition in partitions:
            for client in self.clients.get(partition, ()):
                self.checkpoints.pop(client, None)

    def _schedule(self, client: str) -> Schedule:
        """The client's schedule from its checkpoint, or from `backfill_s` ago."""
        checkpoint = self.checkpoints.get(client)
        if checkpoint is None:
            origin = self.clock.now() - timedelta(seconds=self.settings.backfill_s)
            return Schedule.starting(self.window, self.offsets, _whole_second(origin))
        rereads = {timedelta(seconds=r.after_s): r.until for r in checkpoint.rereads}
        return Schedule(self.window, self.offsets, checkpoint.until, rereads)

    async def _follow(self, client: str) -> None:
        """Read what the schedule says is due, for ever, checkpointing each read."""
        schedule = self._schedule(client)
        log.info(
            "vpbx_client_resumed",
            client_id=client,
            until=schedule.until.isoformat(),
            rereads={str(o.total_seconds()): t.isoformat() for o, t in schedule.rereads.items()},
        )
        while True:
            read = schedule.plan(self.clock.now())
            if read is None:
                await self.clock.sleep_until(schedule.next_due(self.clock.now()))
            elif await self._read_window(client, read.start, read.end):
                schedule.done(read)
                await self._checkpoint(client, schedule, read)
            else:
                await self.clock.sleep(self.settings.retry_interval_s)

    async def _read_window(self, client: str, start: datetime, end: datetime) -> bool:
        """Publish every page of the window; False if a page could not be fetched or published."""
        url = f"{self.settings.base_url.rstrip('/')}/client/{client}/calls/"
        context = {
            "client_id": client,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
        }
        page, previous, skipped = 1, b"", 0
        try:
            while True:
                page_context = {**context, "page": str(page)}
                try:
                    body, size = await self.api.call(
                        "GET",
                        url,
                        lambda body, ctx=page_context: self._read_page(body, ctx),
                        params=self._params(start, end, page),
                    )
                except MalformedError:
                    skipped += 1
                    if skipped == MAX_SKIPPED_IN_A_ROW:  # no longer one bad page: a broken API
                        raise
                    log.error(
                        "vpbx_page_skipped", client_id=client, page=page, detail="in calls.dlq"
                    )
                else:
                    if body == previous:  # an API that ignores `page` would be read for ever
                        log.error("vpbx_page_repeated", client_id=client, page=page)
                        return True
                    await self.publisher.raw(body, page_context)
                    if size < self.settings.per_page:
                        return True
                    previous, skipped = body, 0
                page += 1
        except (PollError, KafkaError) as exc:
            log.warning(
                "vpbx_window_failed",
                client_id=client,
                window_start=context["window_start"],
                page=page,
                error=str(exc),
                retry_in_s=self.settings.retry_interval_s,
            )
            return False

    def _params(self, start: datetime, end: datetime, page: int) -> dict[str, str]:
        return {
            "start_datetime": start.strftime(TIME_FORMAT),
            "end_datetime": end.strftime(TIME_FORMAT),
            "page": str(page),
            "per_page": str(self.settings.per_page),
        }

    async def _read_page(self, body: bytes, context: dict[str, str]) -> int:
        """How many calls the page holds; MalformedError (after dead-lettering it) if unreadable."""
        try:
            return len(_page.decode(body).calls)
        except msgspec.DecodeError as exc:
            error = f"{PROVIDER}: not a page of calls: {exc}"
            await self.publisher.dead_letter(body, context, error)
            raise MalformedError(error) from None

    async def _checkpoint(self, client: str, schedule: Schedule, read: Read) -> None:
        """Record the schedule's progress once `read` is published; retried until the broker
        takes it."""
        checkpoint = Checkpoint(
            PROVIDER,
            client,
            schedule.until,
            tuple(Reread(o.total_seconds(), t) for o, t in schedule.rereads.items()),
        )
        record = OutRecord(checkpoint_key(client), _encode(checkpoint), [])
        while True:
            try:
                await self.publisher.send(topics.CHECKPOINTS, record)
                break
            except KafkaError as exc:
                log.warning("checkpoint_failed", client_id=client, error=repr(exc))
                await self.clock.sleep(self.settings.retry_interval_s)
        metrics = self.publisher.metrics
        metrics.window_reads.labels(PROVIDER, "first").inc(read.first)
        metrics.window_reads.labels(PROVIDER, "reread").inc(read.again)
        metrics.windows.labels(client).inc(read.first)
        metrics.checkpoint.labels(client).set(schedule.until.timestamp())


def _basic(client_id: str, secret: str | None) -> str:
    """HTTP Basic credentials of an OAuth2 client: each part form-encoded (RFC 6749 2.3.1)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)
