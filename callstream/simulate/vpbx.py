"""A fake vpbx API (seed 002): GET /client/{client_id}/calls/, paged and filtered by time window,
behind an OAuth2 client-credentials token endpoint (POST /oauth/token).

Call i starts `i / rate` seconds after the simulation starts (whole seconds, as the API writes
times), belongs to client `clients[i % len(clients)]`, and is listed once it has ended, like
the real API, which knows a call's record only then. Its content comes from
`callstream.samples.vpbx_call` seeded with (seed, i): the same seed serves the same calls.
`start_datetime <= init_time_gmt < end_datetime` selects, `order` (desc by default) sorts by
start time, `page` (from 1) and `per_page` (1-1000, 20 by default) slice.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from aiohttp import BasicAuth, hdrs, web

from callstream import samples
from callstream.simulate import faults
from callstream.simulate.faults import Injector
from callstream.simulate.tokens import Tokens
from callstream.simulate.truth import Expected, expected

PROVIDER = "vpbx"
MAX_PER_PAGE = 1_000


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
    ) -> None:
        self.start = start.replace(microsecond=0)
        self.seed, self.rate, self.count, self.clients = seed, rate, calls, clients
        self.time_scale, self.credentials = time_scale, credentials
        self.tokens = Tokens(token_ttl_s)
        self.call = lru_cache(maxsize=100_000)(self._call)

    def _call(self, index: int) -> tuple[dict[str, object], datetime]:
        """Call `index`'s record and when it ends (so when the API lists it)."""
        client = self.clients[index % len(self.clients)]
        init = self.start + timedelta(seconds=math.floor(index / self.rate))
        owner = int(client) if client.isdigit() else client
        rng = random.Random(f"{PROVIDER}:{self.seed}:{index}")
        return samples.vpbx_call(rng, init, owner, self.time_scale)

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
        now = datetime.now(UTC)
        listed = []
        for index in self._indexes(since, until):
            if self.clients[index % len(self.clients)] == client:
                record, ended = self.call(index)
                if ended <= now:  # the API knows a call's record once it has ended
                    listed.append(record)
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
            record, _ = self.call(index)
            page = samples.vpbx_page([record], 1, 1, "desc")
            client = self.clients[index % len(self.clients)]
            truth |= expected(PROVIDER, page, {"client_id": client})
        return truth
