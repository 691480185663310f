"""Bearer tokens for provider APIs: a static one, or one exchanged for credentials and renewed.

An exchanged token is kept until shortly before it expires (a tenth of its lifetime, at most a
minute), then exchanged again; concurrent requests share one exchange. A token the API rejects
(401) is dropped, so the next request exchanges a new one. Tokens are Secrets: never logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from foundation.settings import Secret

Exchange = Callable[[], Awaitable[tuple[Secret, float]]]
"""Gets a new token and its lifetime in seconds; raises PollError when it cannot."""

RENEW_AHEAD_MAX_S = 60.0


class TokenSource(Protocol):
    async def get(self) -> str:
        """A token to send now."""
        ...

    def expire(self, token: str) -> bool:
        """The API rejected `token`: do not hand it out again. Whether another can be had."""
        ...


class StaticToken:
    """A token from the settings: a rejected one stays rejected (and is reported as refused)."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    async def get(self) -> str:
        return self._token

    def expire(self, token: str) -> bool:  # noqa: ARG002 - the protocol's signature
        """Nothing to renew: the request is refused (it would be refused again)."""
        return False


class ExchangedToken:
    """A token from `exchange`, renewed before it expires and after the API rejects it."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._token: Secret | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, lifetime = await self._exchange()
                self._renew_at = time.monotonic() + lifetime - min(RENEW_AHEAD_MAX_S, lifetime / 10)
            return self._token

    def expire(self, token: str) -> bool:
        if token == self._token:
            self._token = None
        return True
