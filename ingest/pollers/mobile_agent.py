"""mobile_agent poller: each tracked call's state from queryCallState, until state 3 or deadline.

Seed 001. Calls are registered on calls.track (by POST /v1/track/mobile_agent, ingest/track.py),
key callSerialNo; the instance that owns a partition polls its calls, each every `interval_s`
(± `jitter`). A state higher than the last one published goes to calls.raw as the answer's
body, context `callSerialNo` (and `account`, `reason_table` when set); then the call's record
on calls.track notes that state, or, at state 3, a tombstone ends its tracking. A call still
not ended `deadline_s` (max_call_s + setup_allowance_s: the longest call, as vpbx reads it, and
the time it may queue and ring before) after its registration, on the injected clock, is asked
once more, then dropped the same way. Polling intervals are loop time. A restart re-reads
calls.track, so tracked calls survive it; a state published just before a crash may be
published again, a duplicate that event_id makes harmless.

An answer with retCode ≠ "0" is counted (poller_failed_queries_total) and retried, never
published; an answer that is not a readable queryCallState answer is dead-lettered (stage
`poll`) and retried. Tokens: a static one, or the tokenByAkSk exchange (X-Token-Expire).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import NoReturn

import msgspec
import structlog
from aiokafka.errors import KafkaError

from foundation.clock import SYSTEM, Clock
from foundation.settings import MobileAgentPollSettings, Secret, SettingsError
from ingest.pollers import state
from ingest.pollers.common import Plumbing, Publisher
from ingest.pollers.http import Api, MalformedError, PollError, decoded
from ingest.pollers.tokens import ExchangedToken, StaticToken, TokenSource
from ingest.tracked import end_record, track_record
from schemas import topics
from schemas.records import Track

PROVIDER = "mobile_agent"
QUERY_PATH = "/apiaccess/CC-Management/v1/mobileAgent/queryCallState"
AK_SK_PATH = "/apigovernance/api/oauth/tokenByAkSk"
STATES = range(4)
ENDED = 3
TICK_S = 0.05
"""How often due calls are looked for."""
SETTING = "CALLSTREAM_POLL__MOBILE_AGENT__"

log = structlog.get_logger("callstream.poll")


class _Result(msgspec.Struct):
    state: int | None = None


class _Answer(msgspec.Struct, rename="camel"):
    ret_code: str | int
    ret_msg: str | None = None
    result: _Result | None = None


class _AkSkToken(msgspec.Struct, rename="pascal"):
    access_token: str
    expires: float = 600.0


_answer = msgspec.json.Decoder(_Answer, strict=False)
_aksk_token = msgspec.json.Decoder(_AkSkToken, strict=False)
_track = msgspec.json.Decoder(Track)


class QueryFailedError(PollError):
    """queryCallState answered retCode ≠ "0": nothing to publish; asked again."""

    retriable = True


async def run(settings: MobileAgentPollSettings, plumbing: Plumbing, stop: asyncio.Event) -> None:
    """Poll the calls tracked on the partitions of calls.track this instance owns, until `stop`.

    Raises PollerCrashedError if polling fails in a way it does not handle.
    """
    api = Api(PROVIDER, settings, plumbing.session, plumbing.metrics)
    api.token = _token_source(settings, api)
    partitions = sorted(await plumbing.producer.partitions_for(plumbing.kafka.topic(topics.TRACK)))
    publisher = Publisher(PROVIDER, plumbing)
    poller = MobileAgentPoller(settings, api, publisher, plumbing.clock)
    log.info("mobile_agent_poller_started", url=settings.base_url, partitions=len(partitions))
    scheduler = poller.background.start(poller.run(), "mobile_agent-scheduler")
    try:
        await state.follow(
            plumbing.kafka, topics.TRACK, settings.group_id, poller, stop,
            counted=plumbing.metrics.hole,
        )  # fmt: skip
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)


def check(settings: MobileAgentPollSettings) -> None:
    """Raise SettingsError, naming the variables, when there is no way to get a token."""
    if not (settings.token or (settings.app_key and settings.app_secret)):
        raise SettingsError(
            f"{SETTING}TOKEN, or {SETTING}APP_KEY and {SETTING}APP_SECRET: required when "
            f"{SETTING}BASE_URL is set"
        )


def _token_source(settings: MobileAgentPollSettings, api: Api) -> TokenSource:
    if settings.token:
        return StaticToken(settings.token)
    return ExchangedToken(lambda: _exchange(api, settings))


async def _exchange(api: Api, settings: MobileAgentPollSettings) -> tuple[Secret, float]:
    """tokenByAkSk: app_key and app_secret for an AccessToken that lasts `Expires` seconds."""
    _, token = await api.call(
        "POST",
        settings.token_url or settings.base_url.rstrip("/") + AK_SK_PATH,
        decoded(_aksk_token, "mobile_agent token answer"),
        authorized=False,
        json={"app_key": settings.app_key, "app_secret": settings.app_secret},
        headers={"X-Token-Expire": str(settings.token_expire_s)},
    )
    return Secret(token.access_token), token.expires


@dataclass(slots=True)
class _Call:
    serial: str
    partition: int
    registered_at: datetime
    state: int | None
    """The last state published."""
    due: float = 0.0
    """When to poll it next (loop time)."""


class MobileAgentPoller:
    """The tracked calls of the owned partitions, and the scheduler that polls them when due."""

    def __init__(
        self,
        settings: MobileAgentPollSettings,
        api: Api,
        publisher: Publisher,
        clock: Clock = SYSTEM,
    ) -> None:
        self.settings, self.api, self.publisher, self.clock = settings, api, publisher, clock
        self.url = settings.base_url.rstrip("/") + QUERY_PATH
        self.headers = {"X-APP-Key": settings.app_key} if settings.app_key else {}
        self.context = {"account": settings.account} if settings.account else {}
        if settings.reason_table != "default":
            self.context["reason_table"] = settings.reason_table
        self.calls: dict[str, _Call] = {}
        self.ending: dict[str, int] = {}
        """Calls whose tombstone we wrote, until it is read back: older records of theirs that
        are read meanwhile must not bring them back. (serial → partition)"""
        self.ready: set[int] = set()
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.queue: list[tuple[float, str]] = []
        self.concurrency = max(1, round(settings.rate_per_s * 2))
        self.background = state.Background()

    # The state: records of calls.track, in offset order.

    def apply(self, record: state.Record) -> None:
        serial = (record.key or b"").decode()
        if record.value is None:
            self.ending.pop(serial, None)
            self._forget(serial)
            return
        if serial in self.ending:
            return
        try:
            track = _track.decode(record.value)
        except msgspec.DecodeError as exc:
            log.error("track_record_unreadable", offset=record.offset, error=str(exc))
            return
        call = self.calls.get(serial)
        if call is None:
            call = self.calls[serial] = _Call(
                serial, record.partition, track.registered_at, track.state
            )
            if call.partition in self.ready:
                self._schedule(call, first=True)
            self.publisher.metrics.tracked.set(len(self.calls))
        elif track.state is not None and (call.state is None or track.state > call.state):
            call.state = track.state

    async def start(self, partition: int) -> None:
        self.ready.add(partition)
        calls = [call for call in self.calls.values() if call.partition == partition]
        for call in calls:
            self._schedule(call, first=True)
        log.info("mobile_agent_calls_restored", partition=partition, calls=len(calls))

    async def stop(self, partitions: Collection[int]) -> None:
        """Let the polls in hand finish, then forget the partitions' calls."""
        self.ready.difference_update(partitions)
        serials = [serial for serial, call in self.calls.items() if call.partition in partitions]
        await asyncio.gather(
            *(self.in_flight[s] for s in serials if s in self.in_flight), return_exceptions=True
        )
        for serial in serials:
            self._forget(serial)
        for serial in [s for s, partition in self.ending.items() if partition in partitions]:
            del self.ending[serial]

    def _forget(self, serial: str) -> None:
        self.calls.pop(serial, None)
        self.publisher.metrics.tracked.set(len(self.calls))

    def _schedule(self, call: _Call, *, first: bool = False) -> None:
        """Next poll in interval_s ± jitter (a first one within one interval: calls restored
        together spread out)."""
        interval = self.settings.interval_s
        delay = (
            random.uniform(0, interval)
            if first
            else interval * random.uniform(1 - self.settings.jitter, 1 + self.settings.jitter)
        )
        call.due = time.monotonic() + delay
        heapq.heappush(self.queue, (call.due, call.serial))

    # The scheduler.

    async def run(self) -> None:
        """Start a poll for each call that is due, as many at once as `concurrency`."""
        while True:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now and len(self.in_flight) < self.concurrency:
                due, serial = heapq.heappop(self.queue)
                call = self.calls.get(serial)
                if call is None or call.due != due or call.partition not in self.ready:
                    continue  # ended, rescheduled or revoked since
                task = self.background.start(self._poll(call))
                self.in_flight[serial] = task
                task.add_done_callback(partial(self._polled, serial))
            await asyncio.sleep(TICK_S)

    def _polled(self, serial: str, task: asyncio.Task[None]) -> None:
        if self.in_flight.get(serial) is task:
            del self.in_flight[serial]

    async def _poll(self, call: _Call) -> None:
        """Ask, publish a new state; past the deadline, a call not ended is dropped (after this
        last answer: a call whose poller was down that long still gets its state published)."""
        try:
            body, reached = await self.api.call(
                "POST",
                self.url,
                lambda body: self._read(body, call),
                json={"callSerialNo": call.serial},
                headers=self.headers,
            )
            if call.state is None or reached > call.state:
                await self._publish(call, body, reached)
                if reached == ENDED:
                    return
        except (PollError, KafkaError) as exc:
            log.warning("mobile_agent_poll_failed", call_serial_no=call.serial, error=str(exc))
        try:
            if (self.clock.now() - call.registered_at).total_seconds() > self.settings.deadline_s:
                await self._end(call, expired=True)
                return
        except KafkaError as exc:
            log.warning("mobile_agent_end_failed", call_serial_no=call.serial, error=repr(exc))
        self._schedule(call)

    async def _publish(self, call: _Call, body: bytes, reached: int) -> None:
        """The answer to calls.raw, then the state to calls.track (or, at 3, the tombstone)."""
        await self.publisher.raw(body, {"callSerialNo": call.serial, **self.context})
        if reached == ENDED:
            await self._end(call)
            return
        call.state = reached
        await self.publisher.send(
            topics.TRACK, track_record(Track(call.serial, call.registered_at, reached))
        )

    async def _read(self, body: bytes, call: _Call) -> int:
        """The state the answer reports; QueryFailedError for retCode ≠ 0, MalformedError
        (after dead-lettering it) for an answer that says no state."""
        context = {"callSerialNo": call.serial, **self.context}
        try:
            answer = _answer.decode(body)
        except msgspec.DecodeError as exc:
            await self._malformed(body, context, f"not a queryCallState answer: {exc}")
        if str(answer.ret_code) != "0":
            self.publisher.metrics.failed_queries.labels(str(answer.ret_code)).inc()
            raise QueryFailedError(
                f"{PROVIDER} {call.serial}: retCode {answer.ret_code!r}: {answer.ret_msg or ''}"
            )
        reached = answer.result.state if answer.result is not None else None
        if reached not in STATES:
            await self._malformed(body, context, f"$.result.state: expected 0-3, got {reached}")
        return reached

    async def _malformed(self, body: bytes, context: dict[str, str], error: str) -> NoReturn:
        error = f"{PROVIDER}: {error}"
        await self.publisher.dead_letter(body, context, error)
        raise MalformedError(error)

    async def _end(self, call: _Call, *, expired: bool = False) -> None:
        """Stop tracking `call`: its tombstone on calls.track, once acknowledged."""
        await self.publisher.send(topics.TRACK, end_record(call.serial))
        self.ending[call.serial] = call.partition
        self._forget(call.serial)
        if expired:
            self.publisher.metrics.expired.inc()
            log.warning(
                "mobile_agent_call_expired",
                call_serial_no=call.serial,
                deadline_s=self.settings.deadline_s,
                last_state=call.state,
            )
