"""The process tree of `callstream up`: children restarted when they die, all stopped on request."""

from __future__ import annotations

import asyncio
import os
import signal

from callstream.broker import free_port
from callstream.supervisor import Child, supervise


async def _wait_for(predicate, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.05)


async def _answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_a_killed_child_is_restarted_and_all_stop_on_request() -> None:
    port = free_port()
    child = Child("broker", ("broker", "--port", str(port)))
    stop = asyncio.Event()
    tree = asyncio.create_task(supervise([child], stop))
    await _wait_for(lambda: child.process is not None)
    first = child.process
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    await _wait_for(lambda: child.restarts == 1 and child.process is not first)
    second = child.process
    assert second is not None
    async with asyncio.timeout(20):
        while not await _answers(port):
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(tree, 30)
    assert first.returncode == -signal.SIGKILL
    assert second.returncode == 0  # stopped with SIGTERM, cleanly
