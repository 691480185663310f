"""What integration tests share beyond fixtures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

DEADLINE_S = 60.0


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, within_s: float = DEADLINE_S
) -> None:
    """Poll `check` until it holds; fail naming `what` if it does not within `within_s`."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {within_s:.0f}s: {what}"
        await asyncio.sleep(0.1)
