"""`POST /v1/track/{provider}` (mobile_agent): register a call for its poller to follow.

mobile_agent reports nothing by itself: whoever places a call registers its callSerialNo here,
`{"callSerialNo": "…"}`. The registration goes to calls.track (compacted, key callSerialNo) and
is answered 202 only once the broker acknowledged it; the poller instance that owns its
partition polls the call from then on, until state 3 or its deadline. Registering a call twice
is harmless. A bad body is answered 400 and kept in calls.dlq (stage `track`). Authentication
and metrics are the callbacks': CALLSTREAM_INGRESS__AUTH__MOBILE_AGENT__*, counted under the
provider.

A registration is taken even when no poller of its provider is configured where the ingress
runs (CALLSTREAM_POLL__<P>__BASE_URL in its environment; `up` gives the ingress the pollers'
settings): the call waits on calls.track, and a poller that starts later polls it. The first
such registration is logged as a warning, `track_without_poller`, since nothing will report
the call until a poller runs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import structlog
from aiohttp import web

from foundation.settings import PollSettings, SettingsError, load
from ingest.auth import Guard
from ingest.ingress import Handler, Ingress, accepted, received
from ingest.tracked import track_record
from schemas import topics
from schemas.raw import raw_headers
from schemas.records import Track

STAGE = "track"

log = structlog.get_logger("callstream.ingest")


class _Request(msgspec.Struct):
    call_serial_no: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] = msgspec.field(
        name="callSerialNo"
    )


_request = msgspec.json.Decoder(_Request)


class Tracking:
    """The route's own part; admission, refusals, publishing and metrics are the ingress's."""

    def __init__(
        self, ingress: Ingress, guards: Mapping[str, Guard], polled: Collection[str] | None = None
    ) -> None:
        self.ingress, self.guards = ingress, guards
        self.polled = polled_here() if polled is None else frozenset(polled)
        """Providers with a poller configured here; None: read from the environment."""
        self._warned: set[str] = set()

    def route(self) -> Handler:
        """POST /v1/track/{provider}."""
        return self.ingress.route(self.guards, "tracked", self._accept)

    async def _accept(self, request: web.Request, provider: str, body: bytes) -> web.Response:
        try:
            serial = _request.decode(body).call_serial_no
        except msgspec.DecodeError as exc:
            headers = raw_headers(received(request, provider, STAGE))
            detail = f'Expected {{"callSerialNo": "<1 to 50 characters>"}}: {exc}.'
            await self.ingress.reject(body, headers, STAGE, str(exc), detail)
        record = track_record(Track(serial, datetime.now(UTC)))
        await self.ingress.publish(topics.TRACK, record.value, record.headers, key=record.key)
        if provider not in self.polled and provider not in self._warned:
            self._warned.add(provider)
            log.warning(
                "track_without_poller",
                provider=provider,
                detail=f"no {provider} poller is configured here (CALLSTREAM_POLL__"
                f"{provider.upper()}__BASE_URL): registered calls wait on "
                f"{self.ingress.kafka.topic(topics.TRACK)} "
                "until one runs",
            )
        return accepted({"callSerialNo": serial})


def polled_here() -> frozenset[str]:
    """The providers whose poller is configured in this environment (CALLSTREAM_POLL__*).
    Settings that do not load mean one is meant to be: its own start reports them."""
    try:
        return frozenset(load(PollSettings, "poll").configured)
    except SettingsError:
        return frozenset({"vpbx", "mobile_agent"})
