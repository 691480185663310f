"""One ingress worker of several (`callstream ingress --workers N`), and what it asks the others.

Every worker listens on the same port with SO_REUSEPORT, so the kernel spreads connections over
them, and publishes with a producer of its own. Each also serves its own readiness and metrics
on a private Unix socket, `DIR/<index>.sock`, in a directory only its parent and siblings know;
the public /readyz and /metrics, whichever worker a client reaches, ask every worker there and
answer for them all: ready when every worker is, metrics with a `worker` label on every sample.
What each process keeps in memory stays its own: the authentication lockout counts the failures
that reached it, and standard_webhooks remembers the ids it accepted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import aiohttp

from foundation import metrics

UP = (
    "callstream_ingress_worker_up",
    "1 if the ingress worker answered for the whole's /metrics, else 0.",
)
ASK_TIMEOUT_S = 2.0
_STATUS = "http://worker"
"""The private sockets' URLs (the host is not looked up: the connector has the socket)."""


class Worker(NamedTuple):
    index: int
    count: int
    directory: Path
    """Where every worker's private socket is."""

    def socket(self, index: int | None = None) -> Path:
        return self.directory / f"{self.index if index is None else index}.sock"


class Peers:
    """Every worker of the ingress (this one included), asked at its private socket."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        for index in range(self.worker.count):
            connector = aiohttp.UnixConnector(path=str(self.worker.socket(index)))
            self._sessions[str(index)] = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self._sessions.values()))

    async def ready(self) -> bool:
        """Whether every worker says it is ready (its broker probe) within ASK_TIMEOUT_S."""
        answers = await asyncio.gather(*(self._ready(s) for s in self._sessions.values()))
        return all(answers)

    async def metrics(self) -> bytes:
        """Every worker's metrics, each sample labelled `worker`; a worker that does not answer
        is `callstream_ingress_worker_up 0`."""
        texts = await asyncio.gather(
            *(
                metrics.fetch(session, "http://worker/metrics")
                for session in self._sessions.values()
            )
        )
        return metrics.merge(zip(self._sessions, texts, strict=True), "worker", UP)

    @staticmethod
    async def _ready(session: aiohttp.ClientSession) -> bool:
        try:
            async with (
                asyncio.timeout(ASK_TIMEOUT_S),
                session.get("http://worker/readyz") as answer,
            ):
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
