"""Traffic at an ingress: webhook callbacks (wavecell, voice_messaging) and call registrations.

Callbacks go out at `rate` a second from a pool of `connections`, their bodies drawn by
`callstream.samples` from the seed. A callback not answered 2xx (503, a refused connection…)
is sent again after a backoff, as a provider does; and a share (`duplicates`) of the accepted
ones are sent once more, as a provider does that missed the answer. Authentication follows
the ingress's own settings (CALLSTREAM_INGRESS__AUTH__*), so the traffic passes a configured
ingress. What was accepted is the ground truth of the webhooks.

The hard cases: with `late_s`, a callback is of a call that ended up to that long ago (times
`time_scale`), so callbacks arrive late and out of the order of their calls, and a
voice_messaging call reports twice (ACCEPTD when it rings, then its outcome), in either order;
with `backfill`, that share of the callbacks are of calls that ended one to five days ago, as
a provider sends when it catches up on a backlog. Reports are dated by the clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta

import aiohttp
import msgspec
import structlog
from aiohttp import hdrs
from aiolimiter import AsyncLimiter

from callstream import samples
from callstream.simulate.mobile_agent import MobileAgentApi
from callstream.simulate.truth import Expected, expected
from foundation.clock import SYSTEM, Clock
from foundation.settings import ProviderAuth

WEBHOOK_PROVIDERS = tuple(samples.CALLBACKS)
ATTEMPTS = 10
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
REGISTER_TICK_S = 0.05
BACKFILL_S = (86_400.0, 5 * 86_400.0)
"""How long ago the calls of backfilled callbacks ended: one to five days."""

log = structlog.get_logger("callstream.simulate")


class Ingress:
    """An ingress to send to: its URL, the HTTP session and the credentials it expects."""

    def __init__(
        self, url: str, session: aiohttp.ClientSession, auth: Mapping[str, ProviderAuth]
    ) -> None:
        self.url, self.session, self.auth = url.rstrip("/"), session, auth
        self.answers: Counter[str] = Counter()

    async def post(self, path: str, provider: str, body: bytes) -> bool:
        """POST `body` until the ingress answers 2xx (True) or refuses it for good (False)."""
        headers = {
            hdrs.CONTENT_TYPE: "application/json",
            **_credentials(self.auth.get(provider), body),
        }
        for attempt in range(ATTEMPTS):
            try:
                async with self.session.post(
                    f"{self.url}{path}", data=body, headers=headers
                ) as answer:
                    status = answer.status
            except aiohttp.ClientError:
                status = 0
            self.answers[str(status)] += 1
            if 200 <= status < 300:
                return True
            if 400 <= status < 500 and status != 429:
                log.error("traffic_refused", path=path, status=status)
                return False
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        log.error("traffic_gave_up", path=path, attempts=ATTEMPTS)
        return False


def _credentials(auth: ProviderAuth | None, body: bytes) -> dict[str, str]:
    if auth is None or auth.method == "none":
        return {}
    if auth.method == "bearer":
        return {hdrs.AUTHORIZATION: f"Bearer {auth.token}"}
    if auth.method == "basic":
        pair = f"{auth.username or ''}:{auth.password or ''}".encode()
        return {hdrs.AUTHORIZATION: "Basic " + base64.b64encode(pair).decode()}
    digest = hmac.digest((auth.secret or "").encode(), body, hashlib.sha256).hex()
    return {auth.header: digest}


Accepted = Callable[[str, bytes, float], None]
"""Told of each callback the ingress accepted: provider, body, when its first attempt began
(time.monotonic()). By default `Webhooks` keeps its `truth`; a caller that keeps a ledger of its
own passes its own, and spares the load generator a normalization per callback."""


class Webhooks:
    """Callbacks of the webhook providers, and the states the accepted ones must reach (`truth`,
    kept unless `on_accepted` is given)."""

    def __init__(
        self,
        ingress: Ingress,
        *,
        seed: int = 0,
        duplicates: float = 0.0,
        on_accepted: Accepted | None = None,
        late_s: float = 0.0,
        backfill: float = 0.0,
        time_scale: float = 1.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.ingress, self.duplicates = ingress, duplicates
        self.on_accepted = on_accepted or self._keep_truth
        self.late_s, self.backfill = late_s * time_scale, backfill
        self.clock = clock
        self.rng = random.Random(f"webhooks:{seed}")
        self.hard = random.Random(f"webhooks:{seed}:hard")  # apart: the same bodies
        self.truth: set[Expected] = set()
        self.sent = self.accepted = 0

    def _keep_truth(self, provider: str, body: bytes, first_attempt: float) -> None:
        del first_attempt
        self.truth |= expected(provider, body)

    def _ended(self) -> datetime:
        """When the call of the next callback ended."""
        ago = 0.0
        if self.backfill and self.hard.random() < self.backfill:
            ago = self.hard.uniform(*BACKFILL_S)
        elif self.late_s:
            ago = self.hard.uniform(0, self.late_s)
        return self.clock.now() - timedelta(seconds=ago)

    def _bodies(self) -> Iterator[tuple[str, bytes]]:
        while True:
            provider = self.rng.choice(WEBHOOK_PROVIDERS)
            if provider == "voice_messaging" and self.late_s:
                reports = samples.voice_messaging_reports(self.rng, self._ended())
                if self.hard.random() < 0.5:
                    reports.reverse()  # the outcome first, then the ACCEPTD it supersedes
                for body in reports:
                    yield provider, body
            else:
                yield provider, samples.CALLBACKS[provider](self.rng, self._ended())

    async def fire(self, rate: float, *, count: int | None = None, connections: int = 64) -> None:
        """Send `count` callbacks (for ever if None) at `rate` a second."""
        limiter = AsyncLimiter(max(1.0, rate), max(1.0, rate) / rate)
        bodies = self._bodies() if count is None else itertools.islice(self._bodies(), count)

        async def worker() -> None:
            for provider, body in bodies:
                async with limiter:
                    await self._send(provider, body)

        await asyncio.gather(*(worker() for _ in range(connections)))

    async def _send(self, provider: str, body: bytes) -> None:
        path = f"/v1/callbacks/{provider}"
        self.sent += 1
        first_attempt = time.monotonic()
        if not await self.ingress.post(path, provider, body):
            return
        self.accepted += 1
        self.on_accepted(provider, body, first_attempt)
        if self.rng.random() < self.duplicates:
            self.sent += 1
            await self.ingress.post(path, provider, body)


async def register_calls(ingress: Ingress, api: MobileAgentApi) -> int:
    """POST /v1/track/mobile_agent for each call of `api` as it is placed, until all are (for
    ever if their number is not bounded); how many were registered."""
    registered = done = 0
    while api.count is None or done < api.count:
        placed = api.placed(api.clock.now())
        for index in range(done, placed.stop):
            body = msgspec.json.encode({"callSerialNo": api.serial(index)})
            registered += await ingress.post("/v1/track/mobile_agent", "mobile_agent", body)
        done = placed.stop
        await asyncio.sleep(REGISTER_TICK_S)
    return registered
