"""`POST /v1/track/{provider}` (mobile_agent): register a call for its poller to follow.

mobile_agent reports nothing by itself: whoever places a call registers its callSerialNo here,
`{"callSerialNo": "…"}`. The registration goes to calls.track (compacted, key callSerialNo) and
is answered 202 only once the broker acknowledged it; the poller instance that owns its
partition polls the call from then on, until state 3 or its deadline. Registering a call twice
is harmless. A bad body is answered 400 and kept in calls.dlq (stage `track`). Authentication
and metrics are the callbacks': CALLSTREAM_INGRESS__AUTH__MOBILE_AGENT__*, counted under the
provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from aiohttp import web

from callstream import topics
from callstream.kafka import OutRecord
from callstream.records import raw_headers
from ingest.app import Ingress, accepted, received
from ingest.auth import Guard

TRACKED = frozenset({"mobile_agent"})
"""Providers whose calls are registered for polling."""
STAGE = "track"


class Track(msgspec.Struct, frozen=True):
    """A record of calls.track: a call to poll, and the last state published for it."""

    call_serial_no: str = msgspec.field(name="callSerialNo")
    registered_at: datetime
    """The deadline counts from here."""
    state: int | None = None
    """The last state the poller published (None: none yet)."""


class _Request(msgspec.Struct):
    call_serial_no: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] = msgspec.field(
        name="callSerialNo"
    )


_request = msgspec.json.Decoder(_Request)
_encode = msgspec.json.Encoder().encode


def track_record(track: Track) -> OutRecord:
    return OutRecord(track.call_serial_no.encode(), _encode(track), [])


def end_record(call_serial_no: str) -> OutRecord:
    """The tombstone that ends the tracking of a call."""
    return OutRecord(call_serial_no.encode(), None, [])


class Tracking:
    """The route's own part; admission, refusals, publishing and metrics are the ingress's."""

    def __init__(self, ingress: Ingress, guards: Mapping[str, Guard]) -> None:
        self.ingress, self.guards = ingress, guards

    async def track(self, request: web.Request) -> web.Response:
        return await self.ingress.handle(request, self.guards, "tracked", self._accept)

    async def _accept(self, request: web.Request, provider: str, body: bytes) -> web.Response:
        try:
            serial = _request.decode(body).call_serial_no
        except msgspec.DecodeError as exc:
            headers = raw_headers(received(request, provider, STAGE))
            detail = f'Expected {{"callSerialNo": "<1 to 50 characters>"}}: {exc}.'
            await self.ingress.reject(body, headers, STAGE, str(exc), detail)
        record = track_record(Track(serial, datetime.now(UTC)))
        await self.ingress.publish(topics.TRACK, record.value, record.headers, key=record.key)
        return accepted({"callSerialNo": serial})
