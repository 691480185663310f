"""The aggregator's per-partition state in its RocksDB database, without a broker: restore,
eviction and timeouts, each on the partition's received-time clock, and what a write keeps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from aiokafka import ConsumerRecord

from foundation.settings import AggregatorSettings
from normalize import aggregator, normalize
from normalize.aggregator import EVICTED_HORIZON_S, Partition, session_record
from normalize.sessions import fold
from normalize.state import StateDir, StateDirInUse
from schemas import CallEvent, SessionRecord, Status, topics

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = AggregatorSettings(open_timeout_s=7_200, final_retention_s=900)
NAME = "calls.sessions-0"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDir]:
    with StateDir(tmp_path / "state", cache_mb=8) as state:
        yield state


@pytest.fixture
def partition(state: StateDir) -> Partition:
    return Partition(SETTINGS, state.open(NAME))


def _reopened(state: StateDir, partition: Partition) -> Partition:
    partition.store.close()
    return Partition(SETTINGS, state.open(NAME))


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


def _changelog(*sessions: SessionRecord) -> list[ConsumerRecord[bytes, bytes]]:
    """`sessions` as calls.sessions partition 0 holds them, from offset 0."""
    records = [session_record(session) for session in sessions]
    return [
        ConsumerRecord(
            topics.SESSIONS,
            0,
            offset,
            0,
            0,
            record.key,
            record.value,
            None,
            len(record.key or b""),
            len(record.value or b""),
            record.headers,
        )
        for offset, record in enumerate(records)
    ]


def _put(partition: Partition, *sessions: SessionRecord) -> None:
    """Fold `sessions` in as a batch does: read, put, produce."""
    for session in sessions:
        partition.get(session.session_key)
        partition.put(session.session_key, session)
        partition.emit(session)


def test_restore_keeps_the_last_version_and_evicts_final_sessions_once_due(
    state: StateDir, partition: Partition
) -> None:
    ringing, ended = _session(1, "1"), _session(3, "1", 0)
    partition.restore(_changelog(ringing, ended))
    assert partition.store.position == 2
    key = ended.session_key
    assert partition.get(key) == ended
    assert partition.expire(_at(900)) == []
    assert partition.get(key) == ended
    assert partition.expire(_at(901)) == []
    assert partition.get(key) == _at(900)  # evicted, at the time it was due
    partition.write(None)

    partition = _reopened(state, partition)
    assert partition.store.position == 2  # evictions move no offset: the changelog did not
    assert partition.get(key) == _at(900)


def test_sessions_come_due_on_the_clock_and_evicted_keys_are_forgotten(
    partition: Partition,
) -> None:
    open_, final = _session(1, "open"), _session(3, "final", 0)
    _put(partition, open_, final)

    assert partition.expire(_at(900)) == []
    assert partition.get(final.session_key) == final

    assert partition.expire(_at(901)) == []
    assert partition.get(final.session_key) == _at(900)  # evicted when it was due
    assert partition.get(open_.session_key) == open_

    (closed,) = partition.expire(_at(7_201))
    assert (closed.status, closed.final) == (Status.UNKNOWN, True)
    assert (closed.received_at, closed.updated_at) == (T0 + timedelta(seconds=7_200), T0)
    assert closed.close_reason == "no final status within 7200 s"
    assert partition.get(open_.session_key) == closed

    assert partition.expire(_at(900 + EVICTED_HORIZON_S + 1)) == []
    assert partition.get(final.session_key) is None  # the first eviction is forgotten
    assert partition.get(open_.session_key) == _at(8_100)  # the closed session, evicted


def test_what_is_written_is_due_after_a_restart_as_before(
    state: StateDir, partition: Partition
) -> None:
    """The due index is on disk: a reopened database evicts and closes on the same clock."""
    open_, final = _session(1, "open"), _session(3, "final", 0)
    _put(partition, open_, final)
    partition.write(5)
    assert partition.pending == {}

    partition = _reopened(state, partition)
    assert partition.store.position == 5
    assert partition.get(open_.session_key) == open_
    assert partition.expire(_at(901)) == []
    assert partition.get(final.session_key) == _at(900)
    partition.write(None)

    partition = _reopened(state, partition)
    (closed,) = partition.expire(_at(7_201))
    assert closed.received_at == T0 + timedelta(seconds=7_200)


def test_a_report_received_later_moves_the_session_on_and_its_old_due_time_is_skipped(
    partition: Partition,
) -> None:
    ringing = _session(1, "x")
    _put(partition, ringing)
    partition.write(1)
    answered = fold(ringing, _poll(2, T0 + timedelta(seconds=7_000), "x"))
    assert answered is not None
    _put(partition, answered)
    assert partition.expire(_at(7_201)) == []  # due again 7,200 s after the newer report
    assert partition.get(answered.session_key) == answered
    partition.write(2)
    (closed,) = partition.expire(_at(14_201))
    assert closed.received_at == T0 + timedelta(seconds=14_200)


def test_sessions_read_ahead_are_what_the_database_holds_and_a_write_drops_the_rest(
    partition: Partition,
) -> None:
    """A batch's sessions are read in one lookup by the records' keys, which are untrusted: a
    key that is no session, or not the key of its event, costs a lookup and changes nothing."""
    ringing, other = _session(1, "x"), _session(1, "y")
    _put(partition, ringing, other)
    partition.write(2)
    answered = fold(ringing, _poll(2, T0 + timedelta(seconds=5), "x"))
    assert answered is not None

    keys = [ringing.session_key.encode(), b"\xff\x00 not a session", ringing.session_key.encode()]
    partition.read_ahead([*keys, other.session_key.encode()])
    assert partition.get(ringing.session_key) == ringing  # read ahead
    assert partition.get("wavecell:nobody:1") is None  # not read ahead: looked up
    _put(partition, answered)
    assert partition.get(ringing.session_key) == answered  # pending, not what was read
    partition.write(3)
    assert partition.read == {}  # `other`, read and not used, is not kept past the batch

    partition.read_ahead([ringing.session_key.encode()])
    assert partition.get(ringing.session_key) == answered
    assert partition.get(other.session_key) == other


def test_a_provider_timestamp_moves_no_clock(partition: Partition) -> None:
    """A report dated 1970 or 9999 is due by when it was received, not by what it says."""
    event = msgspec.structs.replace(
        _poll(1, T0, "dated"), occurred_at=datetime(9999, 12, 31, tzinfo=UTC)
    )
    session = fold(None, event)
    assert session is not None
    _put(partition, session)
    assert partition.expire(_at(7_199)) == []
    assert len(partition.expire(_at(7_201))) == 1


def test_a_sweep_is_bounded_and_a_session_it_left_due_is_settled_when_read(
    partition: Partition, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregator, "SWEEP_LIMIT", 2)
    sessions = [_session(3, str(n), 0) for n in range(5)]
    partition.restore(_changelog(*sessions))
    assert partition.expire(_at(901)) == []
    assert sum(isinstance(s, float) for s in partition.pending.values()) == 2
    assert partition.expire(_at(902)) == []  # the limit holds until the next write
    last = sessions[-1].session_key
    state, closed = partition.settle(last, partition.get(last), _at(902))
    assert (state, closed) == (_at(900), [])  # as the unbounded sweep would have left it
    partition.write(None)
    partition.expire(_at(903))
    partition.write(None)
    assert all(partition.get(s.session_key) == _at(900) for s in sessions)


def test_a_state_directory_serves_one_instance(state: StateDir) -> None:
    with pytest.raises(StateDirInUse, match=r"is in use by process \d+: give each aggregator"):  # noqa: SIM117
        with StateDir(state.path, cache_mb=8):
            pass


_KILLED_AFTER_WRITING = """
import os, sys
from pathlib import Path
from rocksdict import WriteBatch
from normalize.state import StateDir
with StateDir(Path(sys.argv[1]), cache_mb=8) as state:
    store = state.open("calls.sessions-0")
    for position, key in ((10, b"s:flushed"), (20, b"s:written-only")):
        batch = WriteBatch(raw_mode=True)
        batch.put(key, b"{}")
        store.write(batch, position)
        if position == 10:
            store.flush()
    os._exit(0)  # as if killed: no flush, no close
"""


def test_a_killed_process_reopens_at_its_last_flush_with_the_position_of_that_state(
    tmp_path: Path,
) -> None:
    """Writes skip the write-ahead log (calls.sessions is the log): what was written after the
    last flush is lost with the process, and the position lost with it, so the restore reads the
    changelog again from the position that goes with what the database holds."""
    path = tmp_path / "state"
    subprocess.run([sys.executable, "-c", _KILLED_AFTER_WRITING, str(path)], check=True)
    with StateDir(path, cache_mb=8) as state:
        store = state.open(NAME)
        assert store.position == 10
        assert store.get(b"s:flushed") == b"{}"
        assert store.get(b"s:written-only") is None
        store.close()
