"""A provider API as pollers ask it: a rate limit, retries with backoff and jitter, bearer tokens.

Retries (tenacity) cover what may succeed when tried again: 429 and 5xx answers (waiting at
least their Retry-After), timeouts and connection errors, a rejected token (renewed first),
and answers the caller found malformed. Each retry waits a random time up to
`backoff_s * 2**n` (full jitter), at most `backoff_max_s`. The rate limit (aiolimiter) counts
every request, token requests included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import msgspec
import structlog
from aiohttp import hdrs
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from foundation.errors import CallstreamError
from foundation.settings import PollerSettings
from ingest.pollers.metrics import Metrics
from ingest.pollers.tokens import TokenSource

log = structlog.get_logger("callstream.poll")
T = TypeVar("T")


class PollError(CallstreamError):
    """A request to a provider API that gave no usable answer."""


class UnavailableError(PollError):
    """429, 5xx, a timeout or a connection error: the API may answer if asked again."""

    retriable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RefusedError(PollError):
    """A 4xx other than 429: asking the same again gets the same answer."""


class TokenRejectedError(PollError):
    """401 to a request with a token we hold: the token is dropped and a new one asked for."""

    retriable = True


class MalformedError(PollError):
    """An answer the caller could not read (it was dead-lettered): asked again."""

    retriable = True


def decoded(decoder: msgspec.json.Decoder[T], what: str) -> Callable[[bytes], Awaitable[T]]:
    """A `check` for Api.call: the body decoded, or MalformedError naming `what`."""

    async def check(body: bytes) -> T:
        try:
            return decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedError(f"{what}: {exc}") from None

    return check


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, CallstreamError) and exc.retriable


class Api:
    """One provider API: its settings, the shared HTTP session, a rate limit and a token."""

    def __init__(
        self,
        provider: str,
        settings: PollerSettings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        token: TokenSource | None = None,
    ) -> None:
        self.provider, self.settings = provider, settings
        self.session, self.metrics, self.token = session, metrics, token
        burst = max(1.0, settings.rate_per_s)
        self.limiter = AsyncLimiter(burst, burst / settings.rate_per_s)
        self.timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._backoff = wait_random_exponential(
            multiplier=settings.backoff_s, max=settings.backoff_max_s
        )

    async def call(
        self,
        method: str,
        url: str,
        check: Callable[[bytes], Awaitable[T]],
        **request: Any,
    ) -> tuple[bytes, T]:
        """The answer's body and what `check` read in it, retrying what may succeed later.

        `check` raises MalformedError for a body it cannot read. Raises the last PollError when the
        attempts are used up or the failure is not retriable.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(_retriable),
            before_sleep=self._before_retry,
            reraise=True,
        )
        return await retrying(self._attempt, method, url, check, request)

    async def _attempt(
        self,
        method: str,
        url: str,
        check: Callable[[bytes], Awaitable[T]],
        request: dict[str, Any],
    ) -> tuple[bytes, T]:
        body = await self.send(method, url, **request)
        return body, await check(body)

    async def send(
        self, method: str, url: str, *, authorized: bool = True, **request: Any
    ) -> bytes:
        """One request (no retry): the body of a 2xx answer, else the PollError that says why.

        With `authorized`, the bearer token goes in Authorization; a 401 then drops it.
        """
        token = await self.token.get() if authorized and self.token is not None else None
        headers = dict(request.pop("headers", None) or {})
        if token is not None:
            headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        async with self.limiter:
            try:
                async with self.session.request(
                    method, url, headers=headers, timeout=self.timeout, **request
                ) as response:
                    body = await response.read()
            except TimeoutError:
                self._count("timeout")
                raise UnavailableError(
                    f"{method} {url}: no answer within {self.timeout.total}s"
                ) from None
            except aiohttp.ClientError as exc:
                self._count("error")
                raise UnavailableError(f"{method} {url}: {exc!r}") from None
        return self._answer(method, url, response, body, token)

    def _answer(
        self,
        method: str,
        url: str,
        response: aiohttp.ClientResponse,
        body: bytes,
        token: str | None,
    ) -> bytes:
        status = response.status
        what = f"{method} {url}: HTTP {status}"
        if status < 400:
            self._count("ok")
            return body
        if status == 401 and token is not None and self.token is not None:
            self._count("401")
            if self.token.expire(token):
                raise TokenRejectedError(f"{what}: the token was rejected; renewing it")
            raise RefusedError(f"{what}: the token was rejected")
        if status == 429 or status >= 500:
            self._count("429" if status == 429 else "5xx")
            raise UnavailableError(what, _retry_after(response.headers.get(hdrs.RETRY_AFTER)))
        self._count("4xx")
        raise RefusedError(f"{what}: {body[:200].decode(errors='replace')}")

    def _count(self, outcome: str) -> None:
        self.metrics.requests.labels(self.provider, outcome).inc()

    def _wait(self, state: RetryCallState) -> float:
        """Full-jitter backoff, but never sooner than the API's Retry-After (within the max)."""
        backoff = self._backoff(state)
        failure = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(failure, "retry_after_s", None) or 0.0
        return min(max(backoff, retry_after), self.settings.backoff_max_s)

    def _before_retry(self, state: RetryCallState) -> None:
        self.metrics.retries.labels(self.provider).inc()
        failure = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "poll_retry",
            provider=self.provider,
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            error=str(failure),
        )


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date is not worth parsing here: backoff covers it)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
