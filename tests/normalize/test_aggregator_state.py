"""The aggregator's per-partition state without a broker: restore, eviction and timeouts, each
on the partition's received-time clock."""

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


def _at(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).timestamp()


def test_restore_keeps_the_last_version_and_evicts_final_sessions_once_due() -> None:
    partition = Partition(SETTINGS)
    ringing, ended = _session(1, "1"), _session(3, "1", 0)
    partition.restore(ringing)
    partition.restore(ended)
    partition.restored()
    assert partition.live == {ended.session_key: ended}
    assert partition.expire(_at(900)) == []
    assert partition.live == {ended.session_key: ended}
    assert partition.expire(_at(901)) == []
    assert partition.live == {}
    assert list(partition.evicted) == [ended.session_key]


def test_sessions_come_due_on_the_clock_and_evicted_keys_are_forgotten() -> None:
    partition = Partition(SETTINGS)
    open_, final = _session(1, "open"), _session(3, "final", 0)
    partition.put(open_)
    partition.put(final)

    assert partition.expire(_at(900)) == []
    assert partition.live.keys() == {open_.session_key, final.session_key}

    assert partition.expire(_at(901)) == []
    assert partition.live.keys() == {open_.session_key}
    assert partition.evicted == {final.session_key: _at(900)}  # evicted when it was due

    (closed,) = partition.expire(_at(7_201))
    assert (closed.status, closed.final) == (Status.UNKNOWN, True)
    assert (closed.received_at, closed.updated_at) == (T0 + timedelta(seconds=7_200), T0)
    assert closed.close_reason == "no final status within 7200 s"
    assert partition.live == {open_.session_key: closed}

    assert partition.expire(_at(900 + EVICTED_HORIZON_S + 1)) == []
    assert partition.live == {}  # the closed session, final for longer than the retention
    assert list(partition.evicted) == [open_.session_key]  # the first eviction is forgotten


def test_a_report_received_later_moves_the_session_on_and_its_old_due_time_is_skipped() -> None:
    partition = Partition(SETTINGS)
    ringing = _session(1, "x")
    partition.put(ringing)
    answered = fold(ringing, _poll(2, T0 + timedelta(seconds=7_000), "x"))
    assert answered is not None
    partition.put(answered)
    assert partition.expire(_at(7_201)) == []  # due again 7,200 s after the newer report
    assert partition.live == {answered.session_key: answered}
    (closed,) = partition.expire(_at(14_201))
    assert closed.received_at == T0 + timedelta(seconds=14_200)


def test_a_provider_timestamp_moves_no_clock() -> None:
    """A report dated 1970 or 9999 is due by when it was received, not by what it says."""
    partition = Partition(SETTINGS)
    event = msgspec.structs.replace(
        _poll(1, T0, "dated"), occurred_at=datetime(9999, 12, 31, tzinfo=UTC)
    )
    session = fold(None, event)
    assert session is not None
    partition.put(session)
    assert partition.expire(_at(7_199)) == []
    assert len(partition.expire(_at(7_201))) == 1
