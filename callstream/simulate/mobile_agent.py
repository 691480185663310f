"""A fake mobile_agent API (docs/providers.md): queryCallState behind the tokenByAkSk exchange.

Call i is placed `i / rate` seconds after the simulation starts, with serial number
`serial(i)`, and lives the life `callstream.samples.mobile_agent_call` draws for (seed, i):
state 0, then 1 (ringing), 2 (talking) as its outcome has them, then 3 with a reasonCode of
the document's tables, its durations multiplied by `time_scale`; a share `long_calls` of the
answered ones talk for 15 minutes to 3 hours, as vpbx's long tail. A state is answered at least
once before the next one is (an answer spoiled by a fault does not count): however slowly a
poller asks, it can see every state, so the ground truth does not depend on timing.

Answers follow the document: retCode "0" with `result`; "3" for a serial number that is not
one (not digits, or longer than 50); "1" ("Failed to query the status.") for one that was not
placed; HTTP 401 for a missing, unknown or expired token. Time is the clock's.
"""

from __future__ import annotations

import random
from datetime import datetime
from functools import lru_cache

import msgspec
from aiohttp import hdrs, web

from callstream import samples
from callstream.samples import MobileAgentCall
from callstream.simulate import faults
from callstream.simulate.faults import Injector
from callstream.simulate.tokens import Tokens
from callstream.simulate.truth import Expected, expected
from callstream.simulate.vpbx import long_talk_s
from foundation.clock import SYSTEM, Clock

PROVIDER = "mobile_agent"
QUERY_PATH = "/apiaccess/CC-Management/v1/mobileAgent/queryCallState"
AK_SK_PATH = "/apigovernance/api/oauth/tokenByAkSk"
SERIAL_BASE = 645_735_364_400_000_000
"""Serial numbers look like the document's (645735364434067472)."""


class _Query(msgspec.Struct):
    call_serial_no: str = msgspec.field(name="callSerialNo")


class _Credentials(msgspec.Struct):
    app_key: str
    app_secret: str


_query = msgspec.json.Decoder(_Query)
_credentials = msgspec.json.Decoder(_Credentials)
_FAILED = {"retCode": "1", "retMsg": "Failed to query the status."}


class MobileAgentApi:
    def __init__(
        self,
        *,
        start: datetime,
        seed: int,
        rate: float,
        calls: int | None,
        time_scale: float,
        credentials: tuple[str, str],
        token_ttl_s: float,
        long_calls: float = 0.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.start, self.seed, self.rate, self.count = start, seed, rate, calls
        self.time_scale, self.credentials = time_scale, credentials
        self.long_calls, self.clock = long_calls, clock
        self.tokens = Tokens(token_ttl_s)
        self.life = lru_cache(maxsize=100_000)(self._life)
        self.answered: dict[int, int] = {}
        """Call index → the furthest position in its states answered so far."""

    def serial(self, index: int) -> str:
        return str(SERIAL_BASE + self.seed * 1_000_000_000 + index)

    def _life(self, index: int) -> MobileAgentCall:
        hard = random.Random(f"{PROVIDER}:{self.seed}:{index}:hard")  # apart: the same calls
        talk_s = long_talk_s(hard) if hard.random() < self.long_calls else None
        return samples.mobile_agent_call(random.Random(f"{PROVIDER}:{self.seed}:{index}"), talk_s)

    def placed(self, now: datetime) -> range:
        """The calls placed by `now`."""
        placed = max(0, int((now - self.start).total_seconds() * self.rate) + 1)
        return range(placed if self.count is None else min(placed, self.count))

    def placed_at_ms(self, index: int) -> int:
        return round((self.start.timestamp() + index / self.rate) * 1000)

    def _index(self, serial: str, now: datetime) -> int | None:
        index = int(serial) - SERIAL_BASE - self.seed * 1_000_000_000
        return index if index in self.placed(now) else None

    def app(self, injector: Injector) -> web.Application:
        app = web.Application(middlewares=[injector.middleware])
        app.router.add_post(AK_SK_PATH, self.token)
        app.router.add_post(QUERY_PATH, self.query, name=faults.DATA)
        return app

    async def token(self, request: web.Request) -> web.Response:
        try:
            given = _credentials.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.json_response({"error": f"app_key and app_secret: {exc}"}, status=400)
        if (given.app_key, given.app_secret) != self.credentials:
            return web.json_response({"error": "wrong app_key or app_secret"}, status=401)
        return web.json_response(
            {
                "AccessToken": self.tokens.issue(),
                "ApplyType": "Bearer",
                "CreateTime": str(int(self.start.timestamp())),
                "Expires": str(int(self.tokens.ttl_s)),
                "AppKey": given.app_key,
                "UserID": "Anonymous",
            }
        )

    async def query(self, request: web.Request) -> web.Response:
        if not self.tokens.valid(request.headers.get(hdrs.AUTHORIZATION, "")):
            return web.json_response({"error": "unauthorized operation"}, status=401)
        try:
            serial = _query.decode(await request.read()).call_serial_no
        except msgspec.DecodeError as exc:
            return web.json_response({"error": f"incorrect request: {exc}"}, status=400)
        fault = faults.FAULT.get()
        if fault == "ret_code":
            return web.json_response(_FAILED)
        if not serial.isdigit() or len(serial) > 50:
            return web.json_response(
                {"retCode": "3", "retMsg": "The format of the call SN is incorrect."}
            )
        now = self.clock.now()
        index = self._index(serial, now)
        if index is None:
            return web.json_response(_FAILED)
        body = self._answer(index, now, counts=fault is None)
        return (
            faults.malformed(body)
            if fault == "malformed"
            else web.Response(body=body, content_type="application/json")
        )

    def _answer(self, index: int, now: datetime, *, counts: bool) -> bytes:
        """The call's state now, but never past the first state not answered yet."""
        life = self.life(index)
        elapsed = ((now - self.start).total_seconds() - index / self.rate) / self.time_scale
        by_time = max(position for position, (_, at) in enumerate(life.states) if at <= elapsed)
        position = min(by_time, self.answered.get(index, -1) + 1)
        if counts:
            self.answered[index] = max(position, self.answered.get(index, -1))
        state = life.states[position][0]
        return samples.mobile_agent_answer(life, state, self.placed_at_ms(index), self.time_scale)

    def expected(self, until: datetime, context: dict[str, str]) -> set[Expected]:
        """Every state of every call placed by `until` (at most `calls` of them); `context` is
        the poller's besides callSerialNo (account, reason_table)."""
        truth: set[Expected] = set()
        for index in self.placed(until):
            life = self.life(index)
            for state, _ in life.states:
                body = samples.mobile_agent_answer(life, state, self.placed_at_ms(index))
                truth |= expected(PROVIDER, body, {**context, "callSerialNo": self.serial(index)})
        return truth
