"""`callstream up`: the whole pipeline on one machine, as one supervised process tree."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import aiohttp
import structlog
from aiohttp import web

from callstream import metrics
from callstream.broker import BrokerError, EmbeddedBroker, free_port
from callstream.simulate.simulation import poll_env
from callstream.supervisor import Child, supervise
from foundation.kafka import ensure_topics
from foundation.settings import KafkaSettings, PollSettings, load
from sinks.sqlite import SqliteBackend
from sinks.stores import backend_for

log = structlog.get_logger("callstream.up")

DEMO_SIMULATION = ("--rate", "0.5", "--time-scale", "0.05", "--webhook-rate", "2")
"""`up --demo`: a call of each polled provider every 2 s, its times a twentieth of life's (a call
that would last 2 minutes lasts 6 s, one of 3 hours 9 minutes); 2 callbacks a second."""
DEMO_POLLING = {
    "CALLSTREAM_POLL__VPBX__WINDOW_S": "5",
    "CALLSTREAM_POLL__VPBX__REREADS_S": "3,30,180",
    "CALLSTREAM_POLL__VPBX__MAX_CALL_S": "720",
    "CALLSTREAM_POLL__VPBX__BACKFILL_S": "30",
    "CALLSTREAM_POLL__MOBILE_AGENT__INTERVAL_S": "1",
    "CALLSTREAM_POLL__MOBILE_AGENT__MAX_CALL_S": "720",
    "CALLSTREAM_POLL__MOBILE_AGENT__SETUP_ALLOWANCE_S": "45",
}
"""`up --demo`: polling quick enough to show the simulated calls at once, on the simulation's
time scale (0.05: the schedule's 1 min, 10 min, 1 h and 4 h, and the 15-minute allowance)."""


DEFAULT_DATA_DIR = Path(".callstream")
TOPIC_PREFIX = "CALLSTREAM_KAFKA__TOPIC_PREFIX"
CONSUMERS = ("normalizer", "aggregator", "store", "alerts")
"""The consumer services, each a member of its own consumer group."""
SQLITE_WRITERS = 1
"""How many stores `up` runs on its SQLite file, whatever the instances of the other consumers.
Writes to one SQLite file are serialized anyway, so a second writer would only wait; and two
processes writing and checkpointing one WAL file can lose committed rows to SQLite's WAL-reset
bug (https://www.sqlite.org/wal.html#walresetbug; SQLite 3.7.0 to 3.51.2)."""


def store_url(data_dir: Path) -> str:
    """The SQLite store `up` keeps under its data directory (and `calls`/`stats` read)."""
    return f"sqlite:///{data_dir / 'callstream.sqlite3'}"


def state_dir(data_dir: Path) -> Path:
    """The aggregator's state under `up`'s data directory. A state left by an earlier `up` on
    the embedded broker, which starts empty, is past the end of its calls.sessions: the
    aggregator empties it rather than trust it."""
    return data_dir / "state"


def services(
    kafka: KafkaSettings,
    http_port: int,
    data_dir: Path,
    *,
    demo: bool = False,
    metrics: bool = True,
    ingress_workers: int | None = None,
    instances: int = 1,
    store: str | None = None,
) -> list[Child]:
    """The services `up` runs, each the same `callstream <service>` command a container runs:
    the pollers too when some are configured (CALLSTREAM_POLL__*), and with `demo` the provider
    simulator, with the pollers and its traffic pointed at it. With `metrics`, each service
    serves its metrics on a free port (`Child.metrics`), which `serve` gathers into one. Each
    is given `kafka`'s bootstrap and topic prefix. With `instances` above 1, that many of each
    consumer service run as members of its group, named `normalizer-1`, `normalizer-2`…, but
    for a store on an SQLite file, which has one writer (SQLITE_WRITERS).
    `store`: the store's URL (None: the SQLite file under `data_dir`, `store_url`).
    `ingress_workers`: the ingress's `--workers` (None: CALLSTREAM_INGRESS__WORKERS, else 1).

    They are listed in the order they start; they stop in the reverse order, one after the
    other: the pollers before the simulator they ask, the simulator before the ingress it
    sends to, the ingress before the consumers of what it wrote.

    Raises SettingsError for malformed poller settings.
    """
    polling: dict[str, str] = {}
    simulator: list[Child] = []
    if demo:
        port = free_port()
        ingress = f"http://127.0.0.1:{http_port}"
        simulate = ("simulate", "--port", str(port), "--ingress", ingress, *DEMO_SIMULATION)
        simulator.append(Child("simulate", simulate))
        polling = poll_env(f"http://127.0.0.1:{port}") | DEMO_POLLING
    bootstrap = ("--kafka", kafka.bootstrap)
    prefixed = {TOPIC_PREFIX: kafka.topic_prefix}
    workers = () if ingress_workers is None else ("--workers", str(ingress_workers))
    store = store or store_url(data_dir)

    def options(name: str, instance: int) -> tuple[str, ...]:
        if name == "store":
            return ("--store", store)
        if name == "aggregator":  # each instance its own: a partition's database is locked
            return ("--state-dir", str(state_dir(data_dir) / str(instance)))
        return ()

    def count(name: str) -> int:
        one_writer = name == "store" and isinstance(backend_for(store), SqliteBackend)
        return SQLITE_WRITERS if one_writer else instances

    children = [
        _measured(
            name if count(name) == 1 else f"{name}-{instance}",
            (name, *bootstrap, *options(name, instance)),
            metrics,
            prefixed,
        )
        for name in CONSUMERS
        for instance in range(1, count(name) + 1)
    ]
    children += [
        # The ingress sees the pollers' settings: it warns when a call is registered for
        # polling and no poller of its provider is configured.
        Child(
            "ingress",
            ("ingress", *bootstrap, "--port", str(http_port), *workers),
            env=polling | prefixed,
            metrics=f"http://127.0.0.1:{http_port}/metrics" if metrics else None,
        ),
        *simulator,
    ]
    if polling or load(PollSettings, "poll").configured:
        children.append(_measured("poll", ("poll", *bootstrap), metrics, polling | prefixed))
    return children


def service_of(child: Child) -> str:
    """The `callstream` command a child runs: its service, whichever instance it is."""
    return child.args[0]


def _measured(name: str, args: tuple[str, ...], metrics: bool, env: dict[str, str]) -> Child:
    """A child that serves its metrics on a port of its own (`--metrics-port`)."""
    if not metrics:
        return Child(name, args, env=env)
    port = free_port()
    return Child(
        name, (*args, "--metrics-port", str(port)), env=env,
        metrics=f"http://127.0.0.1:{port}/metrics",
    )  # fmt: skip


async def serve(
    kafka: KafkaSettings,
    broker: EmbeddedBroker | None,
    children: list[Child],
    stop: asyncio.Event,
    *,
    http_port: int,
    metrics_port: int,
    data_dir: Path,
    out: TextIO = sys.stdout,
) -> None:
    """`callstream up`: `run`, with the one metrics endpoint on `metrics_port` (0: none), and
    once the ingress is ready, where to look printed on `out`."""
    endpoint: web.AppRunner | None = None
    announcing: list[asyncio.Task[None]] = []

    async def started() -> None:
        nonlocal endpoint
        if broker is not None:
            log.warning(
                "broker_in_memory",
                detail="the embedded broker keeps every topic in memory: raw records, dead "
                "letters and alerts are gone once `up` stops; the store persists (--kafka: a "
                "durable Kafka)",
            )
        targets = {child.name: child.metrics for child in children if child.metrics}
        endpoint = await metrics.serve(metrics_port, targets) if metrics_port else None
        announce = _announce(
            kafka, broker, children, http_port=http_port, metrics_port=metrics_port,
            data_dir=data_dir, out=out,
        )  # fmt: skip
        announcing.append(asyncio.create_task(announce))

    try:
        await run(kafka, broker, children, stop, started=started)
    finally:
        for task in announcing:
            task.cancel()
        if endpoint is not None:
            await endpoint.cleanup()


async def _announce(
    kafka: KafkaSettings,
    broker: EmbeddedBroker | None,
    children: list[Child],
    *,
    http_port: int,
    metrics_port: int,
    data_dir: Path,
    out: TextIO,
) -> None:
    """Once the ingress answers /readyz: where to look, on `out`."""
    base = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(2), http.get(f"{base}/readyz") as answer:
                    if answer.status == 200:
                        break
            await asyncio.sleep(0.2)
    kafka_flag = (
        "" if kafka.bootstrap == KafkaSettings().bootstrap else f" --kafka {kafka.bootstrap}"
    )
    store_flag = "" if data_dir == DEFAULT_DATA_DIR else f" --data-dir {data_dir}"
    lines = [
        f"callstream is up: {', '.join(child.name for child in children)}",
        f"  ingress  {base}  (/v1/callbacks/wavecell|voice_messaging, /v1/track/mobile_agent)",
        f"  store    {data_dir / 'callstream.sqlite3'}"
        f"  (callstream calls{store_flag}, callstream stats{store_flag})",
        f"  status   callstream status{kafka_flag}{store_flag}"
        f"  (and, with{kafka_flag or ' no flag'}: alerts list, dlq list, tail)",
    ]
    if metrics_port:
        lines.append(f"  metrics  http://127.0.0.1:{metrics_port}/metrics  (every service's)")
    if broker is not None:
        lines += [
            f"  kafka    {kafka.bootstrap}, embedded, in memory: raw records, dead letters and",
            "           alerts are gone once `up` stops; the store persists",
            f"           (broker log: {broker.log_file})",
        ]
    else:
        lines.append(f"  kafka    {kafka.bootstrap}")
    if kafka.topic_prefix:
        lines.append(
            f"  topics   {kafka.topic('calls.*')}, groups {kafka.group('callstream-*')}"
            f" (the commands above need {TOPIC_PREFIX}={kafka.topic_prefix} too)"
        )
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), file=out, flush=True)
    log.info("pipeline_ready", ingress=base, metrics_port=metrics_port, data_dir=str(data_dir))


async def run(
    kafka: KafkaSettings,
    broker: EmbeddedBroker | None,
    children: list[Child],
    stop: asyncio.Event,
    *,
    started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start the embedded broker (None: Kafka runs elsewhere), bootstrap topics, then
    `started()`, then supervise."""
    if broker is not None:
        await broker.start()
    try:
        await ensure_topics(kafka)
        if started is not None:
            await started()
        log.info("pipeline_up", kafka=kafka.bootstrap, services=[child.name for child in children])
        watch = asyncio.create_task(_watch(broker, stop)) if broker else None
        await supervise(children, stop)
        if watch is not None:
            watch.cancel()
        if broker is not None and broker.process is not None and broker.process.poll() is not None:
            raise BrokerError(f"the embedded broker exited with code {broker.process.returncode}")
    finally:
        if broker is not None:
            broker.stop()


async def _watch(broker: EmbeddedBroker, stop: asyncio.Event) -> None:
    """The embedded broker keeps its data in memory: if it dies, the pipeline stops, loudly."""
    if broker.process is None:
        return
    code = await asyncio.to_thread(broker.process.wait)
    if not stop.is_set():
        log.critical("broker_exited", code=code, detail="its in-memory topics are gone; stopping")
        stop.set()
