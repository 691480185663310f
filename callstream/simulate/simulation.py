"""Both fake APIs on one app, their ground truth, and how to point pollers at them."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import msgspec
import structlog
from aiohttp import web

from callstream.simulate import traffic
from callstream.simulate.faults import Faults, Injector
from callstream.simulate.mobile_agent import MobileAgentApi
from callstream.simulate.truth import Expected
from callstream.simulate.vpbx import VpbxApi
from foundation.clock import SYSTEM, Clock
from foundation.settings import IngressSettings, load

log = structlog.get_logger("callstream.simulate")
_FOREVER = datetime.max.replace(tzinfo=UTC)

VPBX_CREDENTIALS = ("callstream-simulator", "simulated-client-secret")
"""The OAuth2 client the fake vpbx API accepts (made up: it guards nothing real)."""
MOBILE_AGENT_CREDENTIALS = ("callstream-simulator", "simulated-app-secret")
"""The AK/SK the fake mobile_agent API accepts (made up: it guards nothing real)."""


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    """What the simulation serves."""

    seed: int = 0
    rate: float = 1.0
    """New calls a second, of each polled provider."""
    calls: int | None = None
    """Calls of each polled provider; None: for ever."""
    time_scale: float = 1.0
    """Call durations (and the delays below) are multiplied by this (0.01: a 10-minute call
    lasts 6 s)."""
    clients: tuple[str, ...] = ("1001", "1002")
    """vpbx client ids; call i belongs to clients[i % len(clients)]."""
    token_ttl_s: float = 600.0
    faults: Faults = Faults()
    long_calls: float = 0.0
    """The share of answered polled calls that talk for 15 minutes to 3 hours (a long tail)."""
    listing_lag_s: float = 0.0
    """vpbx lists a call up to this long after it ended."""
    late_s: float = 0.0
    """Webhook callbacks are of calls that ended up to this long ago: late, out of order, and
    voice_messaging's ACCEPTD and outcome in either order."""
    backfill: float = 0.0
    """The share of webhook callbacks that are of calls that ended one to five days ago."""
    history_s: float = 0.0
    """The polled providers' calls begin this long before the simulation does: reports dated
    that long ago, which a poller reads now (vpbx: when BACKFILL_S reaches back to them)."""


class Simulation:
    def __init__(
        self, scenario: Scenario, start: datetime | None = None, clock: Clock = SYSTEM
    ) -> None:
        """The calls of `scenario` from `start` (by default now, less its history_s), with
        time on `clock`."""
        self.scenario, self.clock = scenario, clock
        start = start or clock.now() - timedelta(seconds=scenario.history_s)
        self.vpbx = VpbxApi(
            start=start,
            seed=scenario.seed,
            rate=scenario.rate,
            calls=scenario.calls,
            clients=scenario.clients,
            time_scale=scenario.time_scale,
            credentials=VPBX_CREDENTIALS,
            token_ttl_s=scenario.token_ttl_s,
            long_calls=scenario.long_calls,
            listing_lag_s=scenario.listing_lag_s,
            clock=clock,
        )
        self.mobile_agent = MobileAgentApi(
            start=start,
            seed=scenario.seed,
            rate=scenario.rate,
            calls=scenario.calls,
            time_scale=scenario.time_scale,
            credentials=MOBILE_AGENT_CREDENTIALS,
            token_ttl_s=scenario.token_ttl_s,
            long_calls=scenario.long_calls,
            clock=clock,
        )
        self.injectors = {
            "vpbx": Injector(scenario.faults, self.vpbx.tokens, scenario.seed),
            "mobile_agent": Injector(
                scenario.faults,
                self.mobile_agent.tokens,
                scenario.seed + 1,
                answers=("malformed", "ret_code"),
            ),
        }
        self.webhooks: traffic.Webhooks | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_subapp("/vpbx", self.vpbx.app(self.injectors["vpbx"]))
        app.add_subapp("/mobile_agent", self.mobile_agent.app(self.injectors["mobile_agent"]))
        app.router.add_get("/truth", self.truth)
        return app

    @property
    def injected(self) -> Counter[str]:
        """How many faults of each kind were injected so far, both APIs together."""
        return self.injectors["vpbx"].injected + self.injectors["mobile_agent"].injected

    def expected(self, mobile_agent_context: dict[str, str] | None = None) -> set[Expected]:
        """The states of every polled call placed so far (all of them, if their number is
        fixed) and of every callback accepted so far."""
        until = self.clock.now() if self.scenario.calls is None else _FOREVER
        truth = self.vpbx.expected(until) | self.mobile_agent.expected(
            until, mobile_agent_context or {}
        )
        return truth | (self.webhooks.truth if self.webhooks is not None else set())

    def webhooks_to(self, ingress: traffic.Ingress, duplicates: float = 0.0) -> traffic.Webhooks:
        """The scenario's webhook traffic at `ingress`, its truth part of this simulation's."""
        scenario = self.scenario
        self.webhooks = traffic.Webhooks(
            ingress,
            seed=scenario.seed,
            duplicates=duplicates,
            late_s=scenario.late_s,
            backfill=scenario.backfill,
            time_scale=scenario.time_scale,
            clock=self.clock,
        )
        return self.webhooks

    async def truth(self, _request: web.Request) -> web.Response:
        """GET /truth: the expected states, as [provider, call_id, leg, status, final] lists."""
        return web.json_response({"expected": sorted(self.expected())})


def poll_env(base_url: str, clients: tuple[str, ...] = Scenario().clients) -> dict[str, str]:
    """The settings that point `callstream poll` at a simulation served at `base_url`."""
    base = base_url.rstrip("/")
    return {
        "CALLSTREAM_POLL__VPBX__BASE_URL": f"{base}/vpbx",
        "CALLSTREAM_POLL__VPBX__CLIENT_IDS": ",".join(clients),
        "CALLSTREAM_POLL__VPBX__OAUTH_CLIENT_ID": VPBX_CREDENTIALS[0],
        "CALLSTREAM_POLL__VPBX__OAUTH_CLIENT_SECRET": VPBX_CREDENTIALS[1],
        "CALLSTREAM_POLL__MOBILE_AGENT__BASE_URL": f"{base}/mobile_agent",
        "CALLSTREAM_POLL__MOBILE_AGENT__APP_KEY": MOBILE_AGENT_CREDENTIALS[0],
        "CALLSTREAM_POLL__MOBILE_AGENT__APP_SECRET": MOBILE_AGENT_CREDENTIALS[1],
    }


@contextlib.asynccontextmanager
async def serving(simulation: Simulation, host: str, port: int) -> AsyncIterator[str]:
    """`simulation`'s app listening on host:port; yields its base URL."""
    runner = web.AppRunner(simulation.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def run(
    scenario: Scenario,
    *,
    host: str,
    port: int,
    ingress_url: str | None,
    webhook_rate: float,
    duplicates: float,
    stop: asyncio.Event,
) -> None:
    """`callstream simulate`: serve the APIs; with `ingress_url`, send traffic there too."""
    simulation = Simulation(scenario)
    async with serving(simulation, host, port) as base_url, aiohttp.ClientSession() as session:
        log.info(
            "simulator_listening",
            vpbx=f"{base_url}/vpbx",
            mobile_agent=f"{base_url}/mobile_agent",
            truth=f"{base_url}/truth",
            seed=scenario.seed,
        )
        senders = []
        if ingress_url is not None:
            ingress = traffic.Ingress(ingress_url, session, load(IngressSettings, "ingress").auth)
            webhooks = simulation.webhooks_to(ingress, duplicates)
            senders = [
                asyncio.create_task(webhooks.fire(webhook_rate)),
                asyncio.create_task(traffic.register_calls(ingress, simulation.mobile_agent)),
            ]
        await stop.wait()
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    log.info("simulator_stopped", faults=dict(simulation.injected))
