"""`callstream bench soak`: the whole pipeline under steady provider traffic while faults strike.

The `callstream up` topology (embedded broker; ingress, normalizer, aggregator, SQLite store and
alerts, each a child process of the supervisor) takes simulated wavecell and voice_messaging
callbacks (`callstream.simulate`: a callback not answered 2xx is sent again, as providers do,
and some accepted ones are sent twice) at `rate` a second until `duration` x `rate` were sent.
Meanwhile, one at a time, the normalizer, the aggregator and the store are SIGKILLed (the
supervisor restarts each) and the broker is paused with SIGSTOP, then resumed: it keeps its
data in memory, so it is paused, never restarted. Then the run waits for the store to hold
every acknowledged event and reconciles what was acknowledged with what was stored.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from callstream import up
from callstream.broker import EmbeddedBroker, free_port
from callstream.simulate.traffic import Ingress, Webhooks
from callstream.supervisor import Child
from foundation.settings import KafkaSettings
from normalize import normalize
from normalize.sessions import fold
from schemas import SessionRecord

KILLED = ("normalizer", "aggregator", "store")
"""The children SIGKILLed, in this order, at FAULTS_AT of the traffic's planned duration."""
FAULTS_AT = (0.2, 0.4, 0.6, 0.8)
"""When each fault strikes: the three kills, then the broker's pause."""
PAUSE_S = 6.0
"""How long the broker is paused: past the ingress's publish bound (5 s), so that callbacks are
answered 503 and sent again, and some of those abandoned sends land anyway."""
CONNECTIONS = 256
DUPLICATES = 0.05
"""Share of accepted callbacks a provider sends again."""
WATCH_S = 0.1
"""How often the store is read for new events; the latencies are this coarse."""
DRAIN_S = 180.0
"""How long the run waits, once the traffic is sent, for the store to catch up."""
DRAIN_POLL_S = 2.0
CHILD_ENV = {"CALLSTREAM_LOG__LEVEL": "warning"}

log = structlog.get_logger("callstream.bench")


def run(duration: float = 120.0, rate: float = 2_000.0) -> dict[str, Any]:
    """Reconciled figures of a soak of `duration` seconds at `rate` callbacks a second."""
    return asyncio.run(_soak(duration, rate))


@dataclass
class _Ledger:
    """What the ingress acknowledged: each callback's events, and the sessions they fold into."""

    callbacks: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    """(first attempt, event ids) of each acknowledged callback."""
    events: set[str] = field(default_factory=set)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)

    def accepted(self, provider: str, body: bytes, first_attempt: float) -> None:
        # Received now, as the ingress received it: a report is plausible up to 24 h after.
        events = normalize(provider, body, received_at=datetime.now(UTC))
        self.callbacks.append((first_attempt, tuple(event.event_id for event in events)))
        for event in events:
            self.events.add(event.event_id)
            current = self.sessions.get(event.session_key)
            self.sessions[event.session_key] = fold(current, event) or current  # type: ignore[assignment]


class _StoreWatch:
    """When each event first appeared in the SQLite store, read every WATCH_S seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, float] = {}
        self._last_rowid = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            rows = await asyncio.to_thread(self._new_rows)
            now = time.monotonic()
            for event_id in rows:
                self.seen.setdefault(event_id, now)
            await asyncio.sleep(WATCH_S)

    def _new_rows(self) -> list[str]:
        if not self.path.exists():
            return []
        try:
            with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
                rows = db.execute(
                    "SELECT rowid, event_id FROM call_events WHERE rowid > ? ORDER BY rowid",
                    (self._last_rowid,),
                ).fetchall()
        except sqlite3.OperationalError:  # the store has not made its tables yet
            return []
        if rows:
            self._last_rowid = rows[-1][0]
        return [event_id for _, event_id in rows]


async def _soak(duration: float, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="callstream-soak-") as data_dir:
        async with _pipeline(Path(data_dir)) as (broker, children, url, store_path):
            ledger, watch, stop_watching = _Ledger(), _StoreWatch(store_path), asyncio.Event()
            watching = asyncio.create_task(watch.run(stop_watching))
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTIONS)
            ) as session:
                ingress = Ingress(url, session, {})
                webhooks = Webhooks(ingress, duplicates=DUPLICATES, on_accepted=ledger.accepted)
                await _warm_up(webhooks, ledger, watch)
                started = time.monotonic()
                faults = asyncio.create_task(_strike(broker, children, duration))
                await webhooks.fire(rate, count=round(duration * rate), connections=CONNECTIONS)
                sent_s = time.monotonic() - started
                struck = await faults
            drain_s = await _drain(ledger, watch, store_path)
            stop_watching.set()
            await watching
            figures = _reconcile(ledger, watch, store_path)
            restarts = {child.name: child.restarts for child in children}
    return {
        "duration_s": duration,
        "rate": rate,
        "sent_s": round(sent_s, 1),
        "acknowledged_per_s": round(webhooks.accepted / sent_s),
        "acknowledged": webhooks.accepted,
        "answers": dict(sorted(ingress.answers.items())),
        "faults": struck,
        "restarts": restarts,
        "drain_s": round(drain_s, 1),
        **figures,
    }


@asynccontextmanager
async def _pipeline(
    data_dir: Path,
) -> AsyncIterator[tuple[EmbeddedBroker, list[Child], str, Path]]:
    """`callstream up`'s broker and services, with this run's data directory; yields the broker,
    the children, the ingress URL and the store's path once the ingress is ready."""
    broker = EmbeddedBroker(free_port(), log_file=data_dir / "broker.log")
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    http_port = free_port()
    children = [
        Child(child.name, child.args, env={**child.env, **CHILD_ENV})
        for child in up.services(kafka, http_port, data_dir)
    ]
    stop = asyncio.Event()
    running = asyncio.create_task(up.run(kafka, broker, children, stop))
    url = f"http://127.0.0.1:{http_port}"
    try:
        await _until_ready(url, running)
        yield broker, children, url, data_dir / "callstream.sqlite3"
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
        return not ledger.events - watch.seen.keys()

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


async def _strike(broker: EmbeddedBroker, children: list[Child], duration: float) -> list[str]:
    """The faults, each at its time; what was done, with when (seconds into the traffic)."""
    started, done = time.monotonic(), []
    by_name = {child.name: child for child in children}
    for name, at in zip((*KILLED, "broker"), FAULTS_AT, strict=True):
        await asyncio.sleep(max(0.0, started + at * duration - time.monotonic()))
        moment = round(time.monotonic() - started, 1)
        if name == "broker":
            await _pause(broker)
            done.append(f"{moment}s: broker paused {PAUSE_S:.0f}s")
        else:
            process = by_name[name].process
            assert process is not None  # noqa: S101 - started by the supervisor
            os.kill(process.pid, signal.SIGKILL)
            done.append(f"{moment}s: {name} killed")
        log.warning("soak_fault", fault=done[-1])
    return done


async def _pause(broker: EmbeddedBroker) -> None:
    assert broker.process is not None  # noqa: S101 - started by up.run
    broker.process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(PAUSE_S)
    finally:
        broker.process.send_signal(signal.SIGCONT)


async def _drain(ledger: _Ledger, watch: _StoreWatch, store_path: Path) -> float:
    """Seconds until the store holds every acknowledged event and every session as its events
    fold (DRAIN_S at most: what is still missing or wrong then is reported as such)."""
    started = time.monotonic()

    async def caught_up() -> bool:
        if ledger.events - watch.seen.keys():
            return False
        return not await asyncio.to_thread(_wrong_sessions, ledger, store_path)

    await _poll(caught_up, within_s=DRAIN_S, every_s=DRAIN_POLL_S)
    return time.monotonic() - started


def _wrong_sessions(ledger: _Ledger, store_path: Path) -> Counter[str]:
    """Sessions the store lacks, or holds with another status than their events fold into."""
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        stored = dict(db.execute("SELECT session_key, status FROM call_sessions"))
    return Counter(
        "absent" if key not in stored else f"{session.status.value}_stored_as_{stored[key]}"
        for key, session in ledger.sessions.items()
        if stored.get(key) != session.status.value
    )


def _reconcile(ledger: _Ledger, watch: _StoreWatch, store_path: Path) -> dict[str, Any]:
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        rows, distinct = db.execute(
            "SELECT count(*), count(DISTINCT provider || '|' || call_id || '|' ||"
            " coalesce(leg, '') || '|' || status) FROM call_events"
        ).fetchone()
    wrong = _wrong_sessions(ledger, store_path)
    missing = len(ledger.events - watch.seen.keys())
    latencies = [
        max(watch.seen[event_id] for event_id in event_ids) - first_attempt
        for first_attempt, event_ids in ledger.callbacks
        if event_ids and all(event_id in watch.seen for event_id in event_ids)
    ]
    return {
        "events": len(ledger.events),
        "stored": len(ledger.events) - missing,
        "missing": missing,
        "rows": rows,
        "duplicated_rows": rows - distinct,
        "sessions": len(ledger.sessions),
        "wrong_sessions": sum(wrong.values()),
        "wrong_sessions_by_kind": dict(wrong),
        **_percentiles_ms(latencies),
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
    passed = not (results["missing"] or results["duplicated_rows"] or results["wrong_sessions"])
    return "\n".join(
        [
            f"soak: {results['acknowledged']:,} callbacks acknowledged in {results['sent_s']} s "
            f"({results['acknowledged_per_s']:,}/s; target rate {results['rate']:,.0f}/s); "
            f"answers {results['answers']}",
            "faults: " + "; ".join(results["faults"]) + f"; restarts {results['restarts']}",
            f"store: {results['stored']:,} of {results['events']:,} acknowledged events "
            f"(missing {results['missing']}), {results['rows']:,} rows "
            f"(duplicated {results['duplicated_rows']}), {results['sessions']:,} sessions "
            f"(wrong {results['wrong_sessions']}); drained {results['drain_s']} s after the "
            "traffic",
            f"callback to store: p50 {results['p50_ms']} ms, p99 {results['p99_ms']} ms, "
            f"max {results['max_ms']} ms",
            "PASS" if passed else "FAIL: acknowledged callbacks lost, doubled or wrong",
        ]
    )
