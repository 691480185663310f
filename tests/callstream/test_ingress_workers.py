"""`callstream ingress --workers 2` on the real broker: both processes take connections on the
one port, and /readyz and /metrics answer for both, whichever worker is reached."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio
from helpers import env_for
from prometheus_client.parser import text_string_to_metric_families

from callstream import samples
from callstream.broker import free_port
from foundation.settings import KafkaSettings

WORKERS = 2
BODY = samples.payloads("wavecell", 1)[0]


class Workers:
    def __init__(self, process: asyncio.subprocess.Process, base: str) -> None:
        self.process, self.base = process, base

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


@pytest_asyncio.fixture(loop_scope="function")
async def workers(kafka: KafkaSettings) -> AsyncIterator[Workers]:
    port = free_port()
    command = [sys.executable, "-m", "callstream", "ingress", "--kafka", kafka.bootstrap]
    command += ["--port", str(port), "--workers", str(WORKERS)]
    env = env_for(kafka, {"CALLSTREAM_LOG__LEVEL": "warning"})  # its topic prefix too
    process = await asyncio.create_subprocess_exec(*command, env=env)
    try:
        yield Workers(process, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def _get(base: str, path: str) -> tuple[int, str]:
    """GET on a connection of its own (the kernel picks the worker), given up after 5 s."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(base + path) as answer:
        return answer.status, await answer.text()


async def _until(base: str, path: str, status: int, within_s: float = 60) -> str:
    """The body of the first answer to `path` with `status`, asked again on new connections."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                got, text = await _get(base, path)
            except (aiohttp.ClientError, TimeoutError):
                got, text = 0, ""
            if got == status:
                return text
            await asyncio.sleep(0.1)


def _samples(text: str, name: str) -> dict[str, float]:
    """`name`'s samples by their worker label."""
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_both_workers_take_callbacks_and_metrics_count_them_all(workers: Workers) -> None:
    await _until(workers.base, "/readyz", 200)
    for _ in range(40):  # a connection each: the kernel spreads them over the workers
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{workers.base}/v1/callbacks/wavecell", data=BODY) as answer,
        ):
            assert answer.status == 202
    _, text = await _get(workers.base, "/metrics")
    assert _samples(text, "callstream_ingress_worker_up") == {"0": 1.0, "1": 1.0}
    counted = _samples(text, "callstream_ingress_requests_total")
    assert sum(counted.values()) == 40
    assert counted.keys() == {"0", "1"}  # both took some (1 in 2^39 that one takes all)


async def test_readiness_is_every_workers(workers: Workers) -> None:
    await _until(workers.base, "/readyz", 200)
    stopped = workers.pids()[1]
    os.kill(stopped, signal.SIGSTOP)  # its status socket does not answer, nor its connections
    try:
        await _until(workers.base, "/readyz", 503)  # from the other worker
        text = await _until(workers.base, "/metrics", 200)
        assert sorted(_samples(text, "callstream_ingress_worker_up").values()) == [0.0, 1.0]
    finally:
        os.kill(stopped, signal.SIGCONT)
    await _until(workers.base, "/readyz", 200)


async def test_a_killed_worker_is_restarted_and_answers_again(workers: Workers) -> None:
    await _until(workers.base, "/readyz", 200)
    killed = workers.pids()[0]
    os.kill(killed, signal.SIGKILL)  # its status socket is left behind
    await _until(workers.base, "/readyz", 503)
    await _until(workers.base, "/readyz", 200)  # restarted, its status answering again
    assert killed not in workers.pids()
    text = await _until(workers.base, "/metrics", 200)
    assert _samples(text, "callstream_ingress_worker_up") == {"0": 1.0, "1": 1.0}
