"""Faults a fake provider API injects, each at its own rate: what pollers must survive.

Per request one draw decides: `429` (Too Many Requests, with Retry-After), `500`, `slow` (the
answer comes `slow_s` late), `expired_token` (the bearer token is revoked before the request is
served, so it is answered 401 as an expired token would be), and, on data requests only,
`malformed` (a truncated JSON body with 200) and `ret_code` (mobile_agent: retCode "1").
The draws come from a seeded generator; which request gets which fault depends on their order.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import msgspec
from aiohttp import hdrs, web

from callstream.simulate.tokens import Tokens

DATA = "data"
"""Route name of the requests that carry provider data (the others are token requests)."""
FAULT: ContextVar[str | None] = ContextVar("simulated_fault", default=None)
"""The fault the handler itself must produce (malformed, ret_code) for the request it serves."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Faults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rate (0-1) of each fault; slow_s and retry_after_s shape them."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_expired_token: float = 0.0
    rate_malformed: float = 0.0
    rate_ret_code: float = 0.0
    slow_s: float = 2.0
    retry_after_s: int = 1

    @classmethod
    def parse(cls, specs: list[str], **shape: float) -> Faults:
        """From KIND=RATE strings (429=0.05, malformed=0.01, …); ValueError names a bad one."""
        kinds = [name.removeprefix("rate_") for name in cls.__struct_fields__ if "rate_" in name]
        rates: dict[str, float] = {}
        for spec in specs:
            kind, _, rate = spec.partition("=")
            if kind not in kinds:
                raise ValueError(f"unknown fault {kind!r} (faults: {', '.join(kinds)})")
            rates[f"rate_{kind}"] = float(rate)
            if not 0 <= rates[f"rate_{kind}"] <= 1:
                raise ValueError(f"the rate of a fault is 0 to 1, got {rate!r}")
        return cls(**rates, **shape)


class Injector:
    """The middleware that injects `faults` into one fake API, and the count of each."""

    def __init__(
        self, faults: Faults, tokens: Tokens, seed: int, answers: tuple[str, ...] = ("malformed",)
    ) -> None:
        """`answers`: the faults its data handlers produce themselves (malformed, ret_code)."""
        self.faults, self.tokens, self.answers = faults, tokens, answers
        self.rng = random.Random(f"faults:{seed}")
        self.injected: Counter[str] = Counter()

    def _draw(self, data: bool) -> str | None:
        faults, roll = self.faults, self.rng.random()
        kinds = ["429", "500", "slow"]
        if data:
            kinds += ["expired_token", *self.answers]
        for kind in kinds:
            rate = getattr(faults, f"rate_{kind}")
            if roll < rate:
                return kind
            roll -= rate
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        data = request.match_info.route.name == DATA
        if data and not self.tokens.valid(request.headers.get(hdrs.AUTHORIZATION, "")):
            return await handler(request)  # answered 401: faults hit what would succeed
        fault = self._draw(data)
        if fault is None:
            return await handler(request)
        self.injected[fault] += 1
        if fault == "429":
            return web.json_response(
                {"error": "too many requests"},
                status=429,
                headers={hdrs.RETRY_AFTER: str(self.faults.retry_after_s)},
            )
        if fault == "500":
            return web.json_response({"error": "internal error"}, status=500)
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_s)
        if fault == "expired_token":
            self.tokens.revoke(request.headers.get(hdrs.AUTHORIZATION, ""))
        FAULT.set(fault)  # each request is served in a task, with a context of its own
        return await handler(request)


def malformed(body: bytes) -> web.Response:
    """`body` cut in half, answered 200 as if it were whole."""
    return web.Response(body=body[: len(body) // 2], content_type="application/json")
