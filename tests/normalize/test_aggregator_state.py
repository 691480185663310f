"""The aggregator's per-partition state without a broker: restore, eviction, timeouts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from foundation.settings import AggregatorSettings
from normalize import normalize
from normalize.aggregator import EVICTED_HORIZON_S, Partition
from normalize.sessions import fold
from schemas import CallEvent, SessionRecord, Status

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = AggregatorSettings(open_timeout_s=7_200, final_retention_s=900)


def _poll(state: int, at: datetime, serial: str, reason: int | None = None) -> CallEvent:
    result = {"state": state} | ({"reasonCode": reason} if reason is not None else {})
    body = msgspec.json.encode({"retCode": "0", "result": result})
    (event,) = normalize("mobile_agent", body, received_at=at, context={"callSerialNo": serial})
    return event


def _session(state: int, serial: str, reason: int | None = None) -> SessionRecord:
    session = fold(None, _poll(state, T0, serial, reason))
    assert session is not None
    return session


def test_restore_keeps_the_last_version_and_evicts_old_final_sessions() -> None:
    partition = Partition()
    ringing, ended = _session(1, "1"), _session(3, "1", 0)
    partition.restore(ringing, T0, SETTINGS.final_retention_s)
    partition.restore(ended, T0 + timedelta(seconds=60), SETTINGS.final_retention_s)
    assert partition.live == {ended.session_key: ended}
    partition.restore(ended, T0 + timedelta(hours=1), SETTINGS.final_retention_s)
    assert partition.live == {}
    assert list(partition.evicted) == [ended.session_key]


def test_sweep_evicts_closes_and_forgets_on_their_own_clocks() -> None:
    partition = Partition()
    open_, final = _session(1, "open"), _session(3, "final", 0)
    partition.live = {open_.session_key: open_, final.session_key: final}

    assert partition.sweep(T0 + timedelta(seconds=900), SETTINGS) == []
    assert partition.live.keys() == {open_.session_key, final.session_key}

    later = T0 + timedelta(seconds=901)
    assert partition.sweep(later, SETTINGS) == []
    assert partition.live.keys() == {open_.session_key}
    assert partition.evicted == {final.session_key: later.timestamp()}

    closing = T0 + timedelta(seconds=7_201)
    (closed,) = partition.sweep(closing, SETTINGS)
    assert (closed.status, closed.final, closed.updated_at) == (Status.UNKNOWN, True, closing)
    assert closed.close_reason == "no final status within 7200 s"
    assert partition.live == {open_.session_key: closed}

    assert partition.sweep(later + timedelta(seconds=EVICTED_HORIZON_S + 1), SETTINGS) == []
    assert partition.live == {}  # the closed session, final for longer than the retention
    assert list(partition.evicted) == [open_.session_key]  # the first eviction is forgotten
