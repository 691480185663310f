"""A fake vpbx API (docs/providers.md): GET /client/{client_id}/calls/, paged and filtered by
time window, behind an OAuth2 client-credentials token endpoint (POST /oauth/token).

Call i starts `i / rate` seconds after the simulation starts (whole seconds, as the API writes
times), belongs to client `clients[i % len(clients)]`, and is listed once it has ended, like
the real API, which knows a call's record only then, and up to `listing_lag_s` later (drawn per
call: a provider whose records come in late). Its content comes from
`callstream.samples.vpbx_call` seeded with (seed, i): the same seed serves the same calls; a
share `long_calls` of the answered ones talk for 15 minutes to 3 hours (log-uniform), the long
tail a poller must wait for. Every duration is multiplied by `time_scale`.
`start_datetime <= init_time_gmt < end_datetime` selects, `order` (desc by default) sorts by
start time, `page` (from 1) and `per_page` (1-1000, 20 by default) slice. Time is the clock's;
each request served is noted in `served` (what a poller's reads cost).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

from aiohttp import BasicAuth, hdrs, web

from callstream import samples
from callstream.simulate import faults
from callstream.simulate.faults import Injector
from callstream.simulate.tokens import Tokens
from callstream.simulate.truth import Expected, expected
from foundation.clock import SYSTEM, Clock

PROVIDER = "vpbx"
MAX_PER_PAGE = 1_000
LONG_TALK_S = (900.0, 10_800.0)
"""The talk time of a long-tail call, before time_scale: 15 minutes to 3 hours, log-uniform."""
SERVED_KEPT = 100_000


class Call(NamedTuple):
    record: dict[str, object]
    started: datetime
    ended: datetime
    listed: datetime
    """When the API lists it: once it has ended, and up to `listing_lag_s` later."""


class Served(NamedTuple):
    """A request for a page of calls, as served."""

    client: str
    since: datetime
    until: datetime
    page: int
    at: datetime


Gate = Callable[[str, datetime, datetime], Awaitable[None]]


def long_talk_s(rng: random.Random) -> float:
    low, high = LONG_TALK_S
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class VpbxApi:
    """The calls of the simulation and the routes that serve them."""

    def __init__(
        self,
        *,
        start: datetime,
        seed: int,
        rate: float,
        calls: int | None,
        clients: tuple[str, ...],
        time_scale: float,
        credentials: tuple[str, str],
        token_ttl_s: float,
        long_calls: float = 0.0,
        listing_lag_s: float = 0.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.start = start.replace(microsecond=0)
        self.seed, self.rate, self.count, self.clients = seed, rate, calls, clients
        self.time_scale, self.credentials = time_scale, credentials
        self.long_calls, self.listing_lag_s, self.clock = long_calls, listing_lag_s, clock
        self.tokens = Tokens(token_ttl_s)
        self.call = lru_cache(maxsize=100_000)(self._call)
        self.served: deque[Served] = deque(maxlen=SERVED_KEPT)
        """The last requests for calls served (not those refused or faulted before)."""
        self.gate: Gate | None = None
        """Awaited with (client, since, until) before a request is answered: tests hold the
        reads of some windows with it."""

    def _call(self, index: int) -> Call:
        """Call `index`'s record, when it ends, and when the API lists it."""
        client = self.clients[index % len(self.clients)]
        init = self.start + timedelta(seconds=math.floor(index / self.rate))
        owner = int(client) if client.isdigit() else client
        rng = random.Random(f"{PROVIDER}:{self.seed}:{index}")
        hard = random.Random(f"{PROVIDER}:{self.seed}:{index}:hard")  # apart: the same calls
        talk_s = long_talk_s(hard) if hard.random() < self.long_calls else None
        record, ended = samples.vpbx_call(rng, init, owner, self.time_scale, talk_s)
        lag = hard.uniform(0, self.listing_lag_s) * self.time_scale
        return Call(record, init, ended, ended + timedelta(seconds=lag))

    def _indexes(self, since: datetime, until: datetime) -> range:
        """The calls that start in [since, until)."""
        first = math.ceil(max(0.0, (since - self.start).total_seconds()) * self.rate)
        last = math.ceil(max(0.0, (until - self.start).total_seconds()) * self.rate)
        return range(first, last if self.count is None else min(last, self.count))

    def app(self, injector: Injector) -> web.Application:
        app = web.Application(middlewares=[injector.middleware])
        app.router.add_post("/oauth/token", self.token)
        app.router.add_get("/client/{client_id}/calls/", self.calls, name=faults.DATA)
        return app

    async def token(self, request: web.Request) -> web.Response:
        """RFC 6749 4.4: the client authenticated by HTTP Basic or in the form."""
        form = await request.post()
        try:
            basic = BasicAuth.decode(request.headers.get(hdrs.AUTHORIZATION, ""))
            given = (basic.login, basic.password)
        except ValueError:
            given = (str(form.get("client_id", "")), str(form.get("client_secret", "")))
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type")
        if given != self.credentials:
            return _error(401, "invalid_client")
        return web.json_response(
            {
                "access_token": self.tokens.issue(),
                "token_type": "Bearer",
                "expires_in": self.tokens.ttl_s,
            }
        )

    async def calls(self, request: web.Request) -> web.Response:
        if not self.tokens.valid(request.headers.get(hdrs.AUTHORIZATION, "")):
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_token"'},
            )
        client = request.match_info["client_id"]
        if client not in self.clients:
            return _error(404, f"client {client} not found")
        query = request.query
        try:
            since, until = (
                datetime.strptime(query[name], samples.VPBX_TIME).replace(tzinfo=UTC)
                for name in ("start_datetime", "end_datetime")
            )
            page, per_page = int(query.get("page", 1)), int(query.get("per_page", 20))
        except (KeyError, ValueError) as exc:
            return _error(
                400,
                f"start_datetime and end_datetime (YYYY-MM-DD HH:MM:SS), page and per_page: {exc}",
            )
        order = query.get("order", "desc")
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE or order not in ("asc", "desc"):
            return _error(400, f"page >= 1, per_page 1-{MAX_PER_PAGE}, order asc or desc")
        if self.gate is not None:
            await self.gate(client, since, until)
        now = self.clock.now()
        self.served.append(Served(client, since, until, page, now))
        listed = []
        for index in self._indexes(since, until):
            if self.clients[index % len(self.clients)] == client:
                call = self.call(index)
                if call.listed <= now:  # the API knows a call's record once it has ended
                    listed.append(call.record)
        if order == "desc":
            listed.reverse()
        body = samples.vpbx_page(
            listed[(page - 1) * per_page : page * per_page], page, per_page, order
        )
        if faults.FAULT.get() == "malformed":
            return faults.malformed(body)
        return web.Response(body=body, content_type="application/json")

    def expected(self, until: datetime) -> set[Expected]:
        """The states of the calls that start before `until` (at most `calls` of them)."""
        truth: set[Expected] = set()
        for index in self._indexes(self.start, until):
            page = samples.vpbx_page([self.call(index).record], 1, 1, "desc")
            client = self.clients[index % len(self.clients)]
            truth |= expected(PROVIDER, page, {"client_id": client})
        return truth
