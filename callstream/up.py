"""`callstream up`: the whole pipeline on one machine, as one supervised process tree."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from callstream.broker import BrokerError, EmbeddedBroker, free_port
from callstream.simulate.simulation import poll_env
from callstream.supervisor import Child, supervise
from foundation.kafka import ensure_topics
from foundation.settings import KafkaSettings, PollSettings, load

log = structlog.get_logger("callstream.up")

DEMO_SIMULATION = ("--rate", "0.5", "--time-scale", "0.05", "--webhook-rate", "2")
"""`up --demo`: a call of each polled provider every 2 s, lasting seconds; 2 callbacks a second."""
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


def store_url(data_dir: Path) -> str:
    """The SQLite store `up` keeps under its data directory (and `calls`/`stats` read)."""
    return f"sqlite:///{data_dir / 'callstream.sqlite3'}"


def services(
    kafka: KafkaSettings, http_port: int, data_dir: Path, *, demo: bool = False
) -> list[Child]:
    """The services `up` runs, each the same `callstream <service>` command a container runs:
    the pollers too when some are configured (CALLSTREAM_POLL__*), and with `demo` the provider
    simulator, with the pollers and its traffic pointed at it.

    Raises SettingsError for malformed poller settings.
    """
    children = [
        Child("ingress", ("ingress", "--kafka", kafka.bootstrap, "--port", str(http_port))),
        Child("normalizer", ("normalizer", "--kafka", kafka.bootstrap)),
        Child("aggregator", ("aggregator", "--kafka", kafka.bootstrap)),
        Child("store", ("store", "--kafka", kafka.bootstrap, "--store", store_url(data_dir))),
        Child("alerts", ("alerts", "--kafka", kafka.bootstrap)),
    ]
    polling: dict[str, str] = {}
    if demo:
        port = free_port()
        ingress = f"http://127.0.0.1:{http_port}"
        simulate = ("simulate", "--port", str(port), "--ingress", ingress, *DEMO_SIMULATION)
        children.append(Child("simulate", simulate))
        polling = poll_env(f"http://127.0.0.1:{port}") | DEMO_POLLING
    if polling or load(PollSettings, "poll").configured:
        children.append(Child("poll", ("poll", "--kafka", kafka.bootstrap), env=polling))
    return children


async def run(
    kafka: KafkaSettings, broker: EmbeddedBroker | None, children: list[Child], stop: asyncio.Event
) -> None:
    """Start the embedded broker (None: Kafka runs elsewhere), bootstrap topics, supervise."""
    if broker is not None:
        await broker.start()
    try:
        await ensure_topics(kafka)
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
