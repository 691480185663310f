"""`callstream up`'s process tree: every service a child process, restarted when it dies.

Children are plain `callstream <service>` commands, so what runs under `up` is exactly what runs
in a container. A child that exits while the tree is not stopping is reported and restarted
after a backoff that grows while it keeps failing and resets once it has run for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("callstream.up")

STOP_GRACE_S = 20.0
"""How long a child gets to finish its batch and leave its group before it is killed."""
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTHY_AFTER_S = 30.0


@dataclass
class Child:
    name: str
    args: Sequence[str]
    """Arguments of `callstream`, e.g. ("normalizer", "--kafka", "127.0.0.1:9092")."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment variables set for the child on top of this process's (settings)."""
    metrics: str | None = None
    """The URL of its Prometheus metrics, if it serves them."""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    failures_in_a_row: int = field(default=0, repr=False)

    async def start(self) -> None:
        # Own process group: a terminal's Ctrl-C reaches only `up`, which stops children in order.
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callstream",
            *self.args,
            process_group=0,
            env={**os.environ, **self.env},
        )
        log.info("child_started", child=self.name, pid=self.process.pid)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused child cannot act on SIGTERM
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("child_killed", child=self.name, pid=process.pid, after_s=STOP_GRACE_S)
            process.kill()
            await process.wait()
        log.info("child_stopped", child=self.name, code=process.returncode)


async def supervise(
    children: Sequence[Child], stop: asyncio.Event, *, together: bool = False
) -> None:
    """Run every child until `stop` is set, restarting those that exit; then stop them all,
    in the reverse order of `children`, each once the one after it has exited (a source
    stops before what it feeds, which then finds nobody gone from under it); or, `together`,
    all at once (peers, such as ingress workers)."""
    for child in children:
        await child.start()
    keepers = [
        asyncio.create_task(_keep_running(child, stop), name=child.name) for child in children
    ]
    await stop.wait()
    for keeper in keepers:
        keeper.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    if together:
        await asyncio.gather(*(child.stop() for child in children))
        return
    for child in reversed(children):
        await child.stop()


async def _keep_running(child: Child, stop: asyncio.Event) -> None:
    while not stop.is_set():
        assert child.process is not None  # noqa: S101 - started by supervise()
        started = time.monotonic()
        code = await child.process.wait()
        if stop.is_set():
            return
        ran_s = time.monotonic() - started
        child.failures_in_a_row = 0 if ran_s > HEALTHY_AFTER_S else child.failures_in_a_row + 1
        delay = BACKOFF_S[min(child.failures_in_a_row, len(BACKOFF_S) - 1)]
        log.error(
            "child_exited", child=child.name, code=code, ran_s=round(ran_s, 1), restart_in_s=delay
        )
        await asyncio.sleep(delay)
        child.restarts += 1
        await child.start()
