"""`callstream bench soak`: the whole pipeline under steady provider traffic while faults strike.

The `callstream up` topology (embedded broker; ingress, normalizer, aggregator, SQLite store and
alerts, each a child process of the supervisor, `instances` of each consumer service but the
store, which has one SQLite writer: `up.SQLITE_WRITERS`) takes
simulated wavecell and voice_messaging callbacks (`callstream.simulate`: a callback not answered
2xx is sent again, as providers do, and some accepted ones are sent twice) at `rate` a second
until `duration` x `rate` were sent. With `faults`, meanwhile, one at a time, one instance of
the normalizer, the aggregator, the store and the alert sink is SIGKILLed (the supervisor
restarts it) and the broker is paused with SIGSTOP, then resumed: it keeps its data in memory,
so it is paused, never restarted. Then the run waits for the store to hold every acknowledged
event and reconciles what was acknowledged with what was stored, and reads calls.alerts for
episodes fired twice.

Freshness is measured on the wall clock of this one machine, from the time the ingress received
each callback (`cs-received-at`): to its events' rows in the store (read every WATCH_S by a
thread of its own), and per hop (see `_freshness`).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import signal
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import msgspec
import structlog
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from callstream import status, up
from callstream.broker import EmbeddedBroker, free_port
from callstream.simulate.traffic import Ingress, Webhooks
from callstream.supervisor import Child
from foundation import metrics
from foundation.errors import Unavailable
from foundation.kafka import TopicScan
from foundation.settings import KafkaSettings, SettingsError
from normalize import normalize
from normalize.sessions import fold
from schemas import SessionRecord, topics
from schemas.raw import received_at_of
from schemas.records import Alert
from sinks import stores
from sinks.postgres import PostgresBackend
from sinks.rules import DEFAULT_RULES
from sinks.sqlite import SqliteBackend

KILLED = up.CONSUMERS
"""The services one instance of which is SIGKILLed, in this order, at FAULTS_AT of the traffic's
planned duration."""
FAULTS_AT = (0.15, 0.3, 0.45, 0.6, 0.8)
"""When each fault strikes: the four kills, then the broker's pause."""
PAUSE_S = 6.0
"""How long the broker is paused: past the ingress's publish bound (5 s), so that callbacks are
answered 503 and sent again, and some of those abandoned sends land anyway."""
CONNECTIONS = 256
DUPLICATES = 0.05
"""Share of accepted callbacks a provider sends again."""
WATCH_S = 0.02
"""How often the store is read for new events; the latencies to the store are this coarse."""
DRAIN_S = 180.0
"""How long the run waits, once the traffic is sent, for the store to catch up."""
DRAIN_POLL_S = 2.0
TRACED = 20
"""Missing events, and wrong sessions, traced through the topics at most (the first by id)."""
ALERT_GRACE_S = 8.0
"""The alert windows' grace in the soak: past the broker's pause, so that a sample held up by it
is still counted in order, and short enough that the run's last windows are decided soon after
its traffic (the default, 60 s, would outlast a short run)."""
CHILD_ENV = {
    "CALLSTREAM_LOG__LEVEL": "warning",
    "CALLSTREAM_ALERTS__GRACE_S": str(ALERT_GRACE_S),
    "CALLSTREAM_ALERTS__TICK_INTERVAL_S": "0.5",
}
FLAPPING_RULE = """
[[rules]]
name = "soak_asr_flapping"
kind = "asr"
window_s = 5
min_attempts = 10
scopes = ["account"]
fire = 0.55
clear = 0.60
"""
"""Added to the default rules: each account's ASR (~0.58 in the simulated traffic) over 5 s of
sessions crosses these thresholds again and again, so that episodes fire and resolve all through
the faults and one fired twice would be seen."""

log = structlog.get_logger("callstream.bench")
T = TypeVar("T")


def run(
    duration: float = 120.0,
    rate: float = 2_000.0,
    faults: str = "all",
    instances: int = 1,
    store: str | None = None,
) -> dict[str, Any]:
    """Reconciled figures of a soak of `duration` seconds at `rate` callbacks a second, with
    `instances` of each consumer service, under the faults (`all`) or none (`none`), storing
    into `up`'s SQLite file or (`store`, a PostgreSQL URL) a schema of the run's own there."""
    return asyncio.run(
        _soak(duration, rate, faults=faults == "all", instances=instances, store_asked=store)
    )


@dataclass
class _Ledger:
    """What the ingress acknowledged: each callback's events, and the sessions they fold into.

    The callbacks are kept as sent and normalized by `settle`, after the traffic: during it,
    the load generator's CPU is the pipeline's too."""

    accepted_bodies: list[tuple[str, bytes]] = field(default_factory=list)
    callbacks: list[tuple[str, ...]] = field(default_factory=list)
    """The event ids of each acknowledged callback, once settled."""
    events: set[str] = field(default_factory=set)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)

    def accepted(self, provider: str, body: bytes, first_attempt: float) -> None:
        del first_attempt  # the load generator's clock: see _freshness
        self.accepted_bodies.append((provider, body))

    def settle(self) -> None:
        """Normalize and fold the callbacks accepted since the last call."""
        for provider, body in self.accepted_bodies:
            # Received about now: a report is plausible up to 24 h after its times.
            events = normalize(provider, body, received_at=datetime.now(UTC))
            self.callbacks.append(tuple(event.event_id for event in events))
            for event in events:
                self.events.add(event.event_id)
                current = self.sessions.get(event.session_key)
                self.sessions[event.session_key] = fold(current, event) or current  # type: ignore[assignment]
        self.accepted_bodies.clear()


class _StoreWatch(threading.Thread):
    """When each event first appeared in the store: a thread of its own reads the new rows every
    WATCH_S and stamps them at once, so that the load generator's busy event loop does not delay
    the stamps."""

    def __init__(self, store: str) -> None:
        super().__init__(name="store-watch", daemon=True)
        self.store = store
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def seen(self) -> dict[str, float]:
        """Event id → when it was first seen in the store (epoch seconds), so far."""
        with self._lock:
            return dict(self._seen)

    def run(self) -> None:
        with _arrivals(self.store) as arrived:
            while not self._stopping.wait(WATCH_S):
                rows = arrived()
                now = time.time()
                with self._lock:
                    for event_id in rows:
                        self._seen.setdefault(event_id, now)

    def stop(self) -> None:
        self._stopping.set()
        self.join()


@contextmanager
def _arrivals(store: str) -> Iterator[Callable[[], list[str]]]:
    """A function that returns the event ids the store committed since its last call: in SQLite
    the rows past the last rowid read; in PostgreSQL those `_postgres_schema`'s trigger queued
    (`_TakenArrivals`: row order there is not commit order)."""
    if _sqlite_path(store) is not None:
        last_rowid = 0

        def new_in_sqlite() -> list[str]:
            nonlocal last_rowid
            rows = _query(store, NEW_SQLITE_ROWS, last_rowid)
            if rows:
                last_rowid = rows[-1][0]
            return [event_id for _, event_id in rows]

        yield new_in_sqlite
        return
    with closing(asyncio.new_event_loop()) as loop:
        taken = _TakenArrivals(store)
        try:
            yield lambda: loop.run_until_complete(taken())
        finally:
            loop.run_until_complete(taken.close())


class _TakenArrivals:
    """The event ids queued in a PostgreSQL soak's ARRIVALS, each call those queued since the
    last: read, then deleted, so that a connection lost between the two reads them again rather
    than loses them (the watch keeps an event's first stamp). A database that does not answer
    gives none this time; the next call connects again."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.db: asyncpg.Connection | None = None
        self.unanswered = False
        """Whether the last call found the database not answering (logged once a time)."""

    async def __call__(self) -> list[str]:
        try:
            if self.db is None or self.db.is_closed():
                self.db = await _connect(self.store)
            rows = await self.db.fetch(f"SELECT event_id FROM {ARRIVALS}")  # noqa: S608 - ours
            ids = [row[0] for row in rows]
            await self.db.execute(f"DELETE FROM {ARRIVALS} WHERE event_id = ANY($1)", ids)  # noqa: S608
        except (Unavailable, *_UNANSWERED) as exc:
            if not self.unanswered:
                log.warning("soak_store_unread", error=str(exc))
            self.unanswered = True
            await self.close()
            return []
        if self.unanswered:
            log.warning("soak_store_read_again")
            self.unanswered = False
        return ids

    async def close(self) -> None:
        if self.db is not None:
            await _close(self.db)
            self.db = None


NEW_SQLITE_ROWS = "SELECT rowid, event_id FROM call_events WHERE rowid > ? ORDER BY rowid"


def _query(store: str, sql: str, *args: Any) -> list[Any]:
    """The rows of `sql` (with `args`, in the store's own parameter style) in the store, read on
    a connection of its own (SQLite's read-only: a reader that may checkpoint would be a second
    writer of the WAL). [] while an SQLite store has not made its tables yet."""
    path = _sqlite_path(store)
    if path is None:
        return list(asyncio.run(_on_postgres(store, lambda db: db.fetch(sql, *args))))
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []


async def _on_postgres(store: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """What `work` gives on a connection of its own to the PostgreSQL store; raises
    Unavailable when the database does not answer."""
    db = await _connect(store)
    try:
        return await work(db)
    except _UNANSWERED as exc:
        raise _unanswered(store, exc) from exc
    finally:
        await _close(db)


async def _close(db: asyncpg.Connection) -> None:
    """`db` closed, its socket too before this returns (a connection only aborted is closed by
    a callback that a loop about to end may never run); one already lost, aborted."""
    with suppress(*_UNANSWERED, TimeoutError):
        await db.close(timeout=CLOSE_TIMEOUT_S)


CLOSE_TIMEOUT_S = 5.0
_UNANSWERED = (*PostgresBackend.transient, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What a lost or refused connection raises (InternalClientError: one lost mid-operation)."""


async def _connect(store: str) -> asyncpg.Connection:
    """A connection to the PostgreSQL store; raises Unavailable when it does not answer or
    refuses (no such role or database)."""
    try:
        return await asyncpg.connect(store)
    except (*_UNANSWERED, asyncpg.PostgresError) as exc:
        raise _unanswered(store, exc) from exc


def _unanswered(store: str, exc: Exception) -> Unavailable:
    return Unavailable(f"the store at {stores.redacted(store)} does not answer ({exc})")


def _sqlite_path(store: str) -> Path | None:
    """The file of an SQLite store; None for a PostgreSQL one (`stores.backend_for` tells)."""
    backend = stores.backend_for(store)
    return backend.path if isinstance(backend, SqliteBackend) else None


async def _soak(
    duration: float, rate: float, *, faults: bool, instances: int, store_asked: str | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="callstream-soak-") as data_dir:
        async with (
            _store(store_asked, Path(data_dir)) as store,
            _pipeline(Path(data_dir), instances, store) as (broker, children, url),
        ):
            ledger, watch = _Ledger(), _StoreWatch(store)
            watch.start()
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTIONS)
            ) as session:
                ingress = Ingress(url, session, {})
                webhooks = Webhooks(ingress, duplicates=DUPLICATES, on_accepted=ledger.accepted)
                await _warm_up(webhooks, ledger, watch)
                ledger.callbacks.clear()  # its latency counts the groups' joins
                traffic_from = time.time()
                started = time.monotonic()
                killed_holes: Counter[str] = Counter()
                striking = (
                    _strike(broker, children, duration, killed_holes) if faults else _no_faults()
                )
                struck = asyncio.create_task(striking)
                await webhooks.fire(rate, count=round(duration * rate), connections=CONNECTIONS)
                sent_s = time.monotonic() - started
                done = await struck
            ledger.settle()
            drain_s = await _drain(ledger, watch, store)
            watch.stop()
            seen = watch.seen()
            figures = await asyncio.to_thread(_reconcile, ledger, seen, store)
            kafka = KafkaSettings(bootstrap=broker.bootstrap)
            ingress_metrics = await _ingress_metrics(children)
            freshness = await _freshness(kafka, ledger, seen, ingress_metrics, traffic_from)
            await _alerts_decided(children, until=time.time())
            alerts = await _alerts(kafka)
            lag = {group.group: group.lag for group in (await status.collect(kafka)).groups}
            lost = set(sorted(ledger.events - seen.keys())[:TRACED])
            wrong = set(figures["wrong_session_keys"])
            trace = await _trace(kafka, lost, wrong) if lost or wrong else {}
            restarts = {child.name: child.restarts for child in children}
            holes = dict(sorted((await _holes(children) + killed_holes).items()))
    return {
        "duration_s": duration,
        "rate": rate,
        "instances": instances,
        "ingress_workers": instances,
        "store": "postgresql" if _sqlite_path(store) is None else "sqlite",
        "stores": sum(up.service_of(child) == "store" for child in children),
        "sent_s": round(sent_s, 1),
        "acknowledged_per_s": round(webhooks.accepted / sent_s),
        "acknowledged": webhooks.accepted,
        "answers": dict(sorted(ingress.answers.items())),
        "faults": done,
        "restarts": restarts,
        "drain_s": round(drain_s, 1),
        **figures,
        **alerts,
        "lag": lag,
        "holes": holes,
        "found_on": trace,
        **freshness,
    }


async def _no_faults() -> list[str]:
    return []


@asynccontextmanager
async def _store(url: str | None, data_dir: Path) -> AsyncIterator[str]:
    """The run's store, as a URL: `up`'s SQLite file under `data_dir` (`url` None), or a
    PostgreSQL schema of the run's own in the database at `url`, made (and its arrivals queued:
    `_postgres_schema`) before and dropped after. Raises SettingsError for another URL: a store
    that holds rows already would not reconcile."""
    if url is None:
        yield up.store_url(data_dir)
        return
    try:
        backend = stores.backend_for(url)
    except SettingsError:
        backend = None
    if not isinstance(backend, PostgresBackend):
        raise SettingsError(
            f"--store: expected postgresql://USER@HOST/DB, got {stores.redacted(url)!r} "
            "(without --store, the run stores into an SQLite file of its own)"
        )
    async with _postgres_schema(url) as schema_url:
        yield schema_url


ARRIVALS = "soak_arrivals"
"""In a PostgreSQL soak, the event ids of the rows call_events gained (a trigger's queue)."""
QUEUE_ARRIVALS = """
CREATE TABLE {schema}.{arrivals} (event_id text NOT NULL);
CREATE FUNCTION {schema}.soak_arrived() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO {schema}.{arrivals} SELECT event_id FROM arrived; RETURN NULL; END $$;
CREATE TRIGGER soak_arrived AFTER INSERT ON {schema}.call_events
    REFERENCING NEW TABLE AS arrived FOR EACH STATEMENT EXECUTE FUNCTION {schema}.soak_arrived();
"""


@asynccontextmanager
async def _postgres_schema(url: str) -> AsyncIterator[str]:
    """A new schema in the database at `url`, migrated as a store does, where a statement
    trigger queues the event id of each row call_events gains (ARRIVALS): PostgreSQL has no
    rowid to read new rows by. Yields the store URL of that schema; drops it after."""
    schema = f"soak_{secrets.token_hex(4)}"
    await _on_postgres(url, lambda db: db.execute(f"CREATE SCHEMA {schema}"))
    try:
        schema_url = f"{url}{'&' if '?' in url else '?'}search_path={schema}"
        backend = PostgresBackend(schema_url)
        await backend.open()  # migrates
        await backend.close()
        queue = QUEUE_ARRIVALS.format(schema=schema, arrivals=ARRIVALS)
        await _on_postgres(url, lambda db: db.execute(queue))
        yield schema_url
    finally:
        try:
            await _on_postgres(url, lambda db: db.execute(f"DROP SCHEMA {schema} CASCADE"))
        except Unavailable as exc:
            log.warning("soak_schema_left", schema=schema, error=str(exc))


@asynccontextmanager
async def _pipeline(
    data_dir: Path, instances: int, store: str
) -> AsyncIterator[tuple[EmbeddedBroker, list[Child], str]]:
    """`callstream up`'s broker and services, `instances` of each consumer, with this run's data
    directory and `store`; yields the broker, the children and the ingress URL once the ingress
    is ready."""
    broker = EmbeddedBroker(free_port(), log_file=data_dir / "broker.log")
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    http_port = free_port()
    rules = data_dir / "rules.toml"
    rules.write_text(DEFAULT_RULES.read_text() + FLAPPING_RULE)
    env = {**CHILD_ENV, "CALLSTREAM_ALERTS__RULES": str(rules)}
    children = [
        Child(child.name, child.args, env={**child.env, **env}, metrics=child.metrics)
        for child in up.services(
            kafka, http_port, data_dir, instances=instances, ingress_workers=instances, store=store
        )
    ]
    stop = asyncio.Event()
    running = asyncio.create_task(up.run(kafka, broker, children, stop))
    url = f"http://127.0.0.1:{http_port}"
    try:
        await _until_ready(url, running)
        yield broker, children, url
    finally:
        stop.set()
        await running


async def _until_ready(url: str, running: asyncio.Task[None], within_s: float = 60.0) -> None:
    async with asyncio.timeout(within_s), aiohttp.ClientSession() as session:
        while True:
            if running.done():
                running.result()  # the pipeline failed to start: say why
            try:
                async with session.get(f"{url}/readyz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def _warm_up(webhooks: Webhooks, ledger: _Ledger, watch: _StoreWatch) -> None:
    """One callback through to the store: every consumer group has joined, so that the clock of
    the run does not count the pipeline's start."""
    await webhooks.fire(1.0, count=1)

    async def stored() -> bool:
        ledger.settle()
        return not ledger.events - watch.seen().keys()

    if not await _poll(stored, within_s=60.0, every_s=WATCH_S):
        raise TimeoutError("the first callback did not reach the store within 60 s")


async def _poll(done: Callable[[], Awaitable[bool]], within_s: float, every_s: float) -> bool:
    """Whether `done()` came true within `within_s`, asked every `every_s` (the store is polled:
    there is nothing to await)."""
    for _ in range(max(1, round(within_s / every_s))):
        if await done():
            return True
        await asyncio.sleep(every_s)
    return await done()


async def _strike(
    broker: EmbeddedBroker, children: list[Child], duration: float, holes: Counter[str]
) -> list[str]:
    """The faults, each at its time: one instance of each service killed in turn (the first
    one, then the second…), then the broker paused; what was done, with when (seconds into the
    traffic). The holes each killed instance had met are added to `holes` just before."""
    started, done = time.monotonic(), []
    for turn, (name, at) in enumerate(zip((*KILLED, "broker"), FAULTS_AT, strict=True)):
        await asyncio.sleep(max(0.0, started + at * duration - time.monotonic()))
        moment = round(time.monotonic() - started, 1)
        if name == "broker":
            await _pause(broker)
            done.append(f"{moment}s: broker paused {PAUSE_S:.0f}s")
        else:
            instances = [child for child in children if up.service_of(child) == name]
            child = instances[turn % len(instances)]
            assert child.process is not None  # noqa: S101 - started by the supervisor
            holes.update(await _holes([child]))
            os.kill(child.process.pid, signal.SIGKILL)
            done.append(f"{moment}s: {child.name} killed")
        log.warning("soak_fault", fault=done[-1])
    return done


async def _pause(broker: EmbeddedBroker) -> None:
    assert broker.process is not None  # noqa: S101 - started by up.run
    broker.process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(PAUSE_S)
    finally:
        broker.process.send_signal(signal.SIGCONT)


async def _drain(ledger: _Ledger, watch: _StoreWatch, store: str) -> float:
    """Seconds until the store holds every acknowledged event and every session as its events
    fold (DRAIN_S at most: what is still missing or wrong then is reported as such)."""
    started = time.monotonic()

    async def caught_up() -> bool:
        if ledger.events - watch.seen().keys():
            return False
        return not await asyncio.to_thread(_wrong_sessions, ledger, store)

    await _poll(caught_up, within_s=DRAIN_S, every_s=DRAIN_POLL_S)
    return time.monotonic() - started


def _wrong_sessions(ledger: _Ledger, store: str) -> dict[str, str]:
    """Sessions the store lacks, or holds with another status than their events fold into: each
    key, with what is wrong (`absent`, or `<folded>_stored_as_<stored>`)."""
    stored = dict(_query(store, "SELECT session_key, status FROM call_sessions"))
    return {
        key: "absent" if key not in stored else f"{session.status.value}_stored_as_{stored[key]}"
        for key, session in ledger.sessions.items()
        if stored.get(key) != session.status.value
    }


def _reconcile(ledger: _Ledger, seen: dict[str, float], store: str) -> dict[str, Any]:
    [(rows, distinct)] = _query(
        store,
        "SELECT count(*), count(DISTINCT provider || '|' || call_id || '|' ||"
        " coalesce(leg, '') || '|' || status) FROM call_events",
    )
    wrong = _wrong_sessions(ledger, store)
    missing = len(ledger.events - seen.keys())
    return {
        "events": len(ledger.events),
        "stored": len(ledger.events) - missing,
        "missing": missing,
        "rows": rows,
        "duplicated_rows": rows - distinct,
        "sessions": len(ledger.sessions),
        "wrong_sessions": len(wrong),
        "wrong_sessions_by_kind": dict(Counter(wrong.values())),
        "wrong_session_keys": sorted(wrong)[:TRACED],
    }


async def _trace(kafka: KafkaSettings, lost: set[str], wrong: set[str]) -> dict[str, list[str]]:
    """Where the acknowledged events the store lacks, and the sessions it holds wrong, are
    found, so that a loss is traced to the hop that made it: by event id or session key, each
    record that holds one (a raw callback, an event, a session version, or a dead letter of
    them) as `topic partition:offset`, with a session version's status and event count."""
    found: dict[str, list[str]] = {}

    def note(what: str, topic: str, record: Any, detail: str = "") -> None:
        where = f"{topic} {record.partition}:{record.offset}{detail}"
        found.setdefault(what, []).append(where)

    for topic in (topics.RAW, topics.EVENTS, topics.SESSIONS, topics.DLQ):
        async for batch in TopicScan(kafka, topic, max_records=5_000).batches():
            for record in batch:
                if lost and topic != topics.SESSIONS:
                    for event_id in lost.intersection(_event_ids(record)):
                        note(event_id, topic, record)
                if (key := (record.key or b"").decode()) in wrong:
                    note(key, topic, record, _version(topic, record))
    log.warning("soak_wrong", events=sorted(lost), sessions=sorted(wrong), found_on=found)
    return found


def _version(topic: str, record: Any) -> str:
    if topic != topics.SESSIONS:
        return ""
    try:
        session = _session.decode(record.value or b"")
    except msgspec.DecodeError:
        return " (not a session record)"
    return f" {session.status.value} of {session.event_count} events"


def _event_ids(record: Any) -> list[str]:
    """The event ids a record of calls.raw, calls.events or calls.dlq holds: an event's own, or
    those a raw body normalizes into (none if it holds neither)."""
    try:
        return [_stamped.decode(record.value or b"").event_id]
    except msgspec.DecodeError:
        pass
    provider, received = dict(record.headers).get(topics.PROVIDER), received_at_of(record.headers)
    if provider is None or received is None:
        return []
    try:
        events = normalize(provider.decode(), record.value or b"", received_at=received)
    except Exception:  # not a body its adapter reads: no event of ours
        return []
    return [event.event_id for event in events]


class _Stamped(msgspec.Struct):
    event_id: str


_stamped = msgspec.json.Decoder(_Stamped)
_session = msgspec.json.Decoder(SessionRecord)
_alert = msgspec.json.Decoder(Alert)


async def _freshness(
    kafka: KafkaSettings, ledger: _Ledger, seen: dict[str, float], ingress: str, since: float
) -> dict[str, Any]:
    """Callback to store, in ms: from the ingress's receipt of each acknowledged callback
    (`cs-received-at`) to the last of its events' rows in the store (`p50_ms`, `p99_ms`,
    `max_ms`), and each hop from that receipt (`hops_ms`): to the broker's acknowledgement on
    calls.raw (the ingress's publish histogram, interpolated in its buckets as Prometheus'
    histogram_quantile does), to its events on calls.events, to its session's new version on
    calls.sessions, and to each event's row in the store. Broker times are the producers'
    CreateTime, taken when a record joins a batch, a millisecond or so before its ack. The
    load generator's own times are not used: at 2,000 callbacks/s its event loop is busy, and
    its clocks would count its own delays. Records received before `since` (the warm-up) are
    left out."""
    events: dict[str, tuple[float, float]] = {}
    """event id → (received, on calls.events), each first seen."""
    async for batch in TopicScan(kafka, topics.EVENTS, max_records=5_000).batches():
        for record in batch:
            received = received_at_of(record.headers)
            event_id = _stamped.decode(record.value or b"{}").event_id
            if received is not None and received.timestamp() >= since and event_id not in events:
                events[event_id] = (received.timestamp(), record.timestamp / 1000)
    sessions: list[float] = []
    async for batch in TopicScan(kafka, topics.SESSIONS, max_records=5_000).batches():
        for record in batch:
            received = received_at_of(record.headers)
            if received is not None and received.timestamp() >= since:
                sessions.append(record.timestamp / 1000 - received.timestamp())
    callbacks = [
        max(seen[event_id] for event_id in ids) - events[ids[0]][0]
        for ids in ledger.callbacks
        if ids and all(event_id in seen and event_id in events for event_id in ids)
    ]
    return {
        **_percentiles_ms(callbacks),
        "hops_ms": {
            "raw_ack": _histogram_ms(ingress, "callstream_ingress_publish_seconds"),
            "events": _percentiles_ms([at - received for received, at in events.values()]),
            "sessions": _percentiles_ms(sessions),
            "store": _percentiles_ms(
                [seen[event_id] - received
                 for event_id, (received, _) in events.items() if event_id in seen]
            ),
        },
    }  # fmt: skip


async def _alerts_decided(
    children: list[Child], until: float, within_s: float = 4 * ALERT_GRACE_S + 30
) -> None:
    """Wait until every calls.alerts.samples partition is decided up to `until` (epoch s), as
    the alert sinks' `callstream_alerts_decided_seconds` say; raises TimeoutError past
    `within_s`."""
    async with asyncio.timeout(within_s), aiohttp.ClientSession() as session:
        while True:
            decided = [
                sample.value
                for sample in await _samples(
                    session, children, {"alerts"}, "callstream_alerts_decided_seconds"
                )
            ]
            if decided and min(decided) >= until:
                return
            await asyncio.sleep(0.5)


async def _holes(children: list[Child]) -> Counter[str]:
    """Holes in partitions' offsets the consumers met (`callstream_consumer_holes`), by outcome,
    summed over the instances (since each one's last start)."""
    holes: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        name = "callstream_consumer_holes_total"
        for sample in await _samples(session, children, set(KILLED), name):
            holes[sample.labels["outcome"]] += int(sample.value)
    return holes


async def _samples(
    session: aiohttp.ClientSession, children: list[Child], services: set[str], name: str
) -> list[Sample]:
    """The samples named `name` of every instance of `services` that answers for its metrics
    (one restarting after its kill does not)."""
    found: list[Sample] = []
    for child in children:
        if child.metrics is None or up.service_of(child) not in services:
            continue
        text = await metrics.fetch(session, child.metrics) or ""
        found += [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]
    return found


async def _ingress_metrics(children: list[Child]) -> str:
    """The ingress's metrics, as Prometheus text."""
    [url] = [child.metrics for child in children if up.service_of(child) == "ingress"]
    assert url is not None  # noqa: S101 - up.services gives the ingress its metrics
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return await answer.text()


def _histogram_ms(text: str, name: str) -> dict[str, float]:
    """p50 and p99 of histogram `name` (summed over its labels), in ms, interpolated linearly
    within the bucket each falls in."""
    buckets: Counter[float] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
    bounds = sorted(buckets)
    if not bounds or not buckets[bounds[-1]]:
        return {"p50_ms": 0.0, "p99_ms": 0.0}

    def quantile(q: float) -> float:
        rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                if math.isinf(bound):
                    return lower
                share = (rank - below) / max(buckets[bound] - below, 1e-9)
                return lower + (bound - lower) * share
            lower, below = bound, buckets[bound]
        return lower

    return {"p50_ms": round(quantile(0.5) * 1000, 1), "p99_ms": round(quantile(0.99) * 1000, 1)}


async def _alerts(kafka: KafkaSettings) -> dict[str, Any]:
    """The alerts on calls.alerts, and those that fired an episode already firing: a (rule,
    scope) firing again with no resolve between (an alert sink's key is its partition's, so
    offset order is the order of its transitions); the first TRACED of those with where the
    two firings are (`partition:offset`, and the episode each says it started)."""
    states: dict[str, tuple[str, str]] = {}
    alerts, duplicated = 0, []
    async for batch in TopicScan(kafka, topics.ALERTS).batches():
        for record in batch:
            alert = _alert.decode(record.value or b"")
            alerts += 1
            where = f"{record.partition}:{record.offset} from {alert.since.isoformat()}"
            state, before = states.get(alert.key, ("", ""))
            if alert.state == "firing" and state == "firing":
                duplicated.append(f"{alert.key}: {before}, again {where}")
            states[alert.key] = (alert.state, where)
    return {
        "alerts": alerts,
        "alerts_duplicated": len(duplicated),
        "alerts_duplicated_at": duplicated[:TRACED],
    }


def _percentiles_ms(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "p50_ms": round(cuts[49] * 1000),
        "p99_ms": round(cuts[98] * 1000),
        "max_ms": round(max(latencies) * 1000),
    }


def report(results: dict[str, Any]) -> str:
    passed = not (
        results["missing"] or results["duplicated_rows"] or results["wrong_sessions"]
        or results["alerts_duplicated"]
    )  # fmt: skip
    hops = "; ".join(
        f"{hop.replace('_', ' ')} p50 {figures['p50_ms']} / p99 {figures['p99_ms']} ms"
        for hop, figures in results["hops_ms"].items()
    )
    return "\n".join(
        [
            f"soak: {results['acknowledged']:,} callbacks acknowledged in {results['sent_s']} s "
            f"({results['acknowledged_per_s']:,}/s; target rate {results['rate']:,.0f}/s); "
            f"answers {results['answers']}",
            f"instances: {results['instances']} of each consumer service but the store, "
            f"{results['stores']} {results['store']} store(s), "
            f"{results['ingress_workers']} ingress worker(s)",
            "faults: "
            + ("; ".join(results["faults"]) or "none")
            + f"; restarts {results['restarts']}",
            f"store: {results['stored']:,} of {results['events']:,} acknowledged events "
            f"(missing {results['missing']}), {results['rows']:,} rows "
            f"(duplicated {results['duplicated_rows']}), {results['sessions']:,} sessions "
            f"(wrong {results['wrong_sessions']}); drained {results['drain_s']} s after the "
            "traffic",
            *(
                [f"where the missing events and wrong sessions are: {trace}"]
                if (trace := results["found_on"])
                else []
            ),
            f"alerts: {results['alerts']} transitions, {results['alerts_duplicated']} episodes "
            f"fired twice; records not committed by each group at the end {results['lag']}; "
            f"holes in partitions' offsets met by the consumers {results['holes']}",
            f"callback to store: p50 {results['p50_ms']} ms, p99 {results['p99_ms']} ms, "
            f"max {results['max_ms']} ms",
            f"hops: {hops}",
            "PASS"
            if passed
            else "FAIL: acknowledged callbacks lost, doubled or wrong, or alerts fired twice",
        ]
    )
