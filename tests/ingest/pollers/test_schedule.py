"""The vpbx read schedule on its own: which ranges are read when (no I/O, no clock)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from foundation.settings import PollSettings, load
from ingest.pollers.schedule import MAX_READ_WINDOWS, Read, Schedule, offsets_of
from schemas.records import Checkpoint, Reread

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
OFFSETS = offsets_of((60.0, 600.0, 3_600.0), 14_400.0)
HOURS = timedelta(hours=1)


def _run(schedule: Schedule, now: datetime, until: datetime) -> list[tuple[datetime, Read]]:
    """Every read the schedule makes from `now` to `until`, each done when planned."""
    reads = []
    while now <= until:
        read = schedule.plan(now)
        if read is None:
            now = schedule.next_due(now)
            continue
        reads.append((now, read))
        schedule.done(read)
    return reads


def _reads_by_window(
    reads: list[tuple[datetime, Read]], window: timedelta = MINUTE
) -> dict[datetime, list[datetime]]:
    """Window end → when each read covering it was made."""
    by_window: dict[datetime, list[datetime]] = defaultdict(list)
    for at, read in reads:
        end = read.start + window
        while end <= read.end:
            by_window[end].append(at)
            end += window
    return by_window


def test_the_schedule_is_derived_from_the_rereads_and_max_call_s() -> None:
    assert [o.total_seconds() for o in OFFSETS] == [60, 600, 3_600, 14_400]
    assert [o.total_seconds() for o in offsets_of((3_600.0, 60.0, 99_999.0), 7_200.0)] == [
        60,
        3_600,
        7_200,
    ]
    assert offsets_of((60.0,), 0.0) == ()


def test_each_window_is_read_when_it_closes_and_on_each_offset_after_its_end() -> None:
    schedule = Schedule.starting(MINUTE, OFFSETS, T0)
    reads = _run(schedule, T0, T0 + 6 * HOURS)
    by_window = _reads_by_window(reads)
    for end in (T0 + n * MINUTE for n in range(1, 90)):
        assert by_window[end] == [end + o for o in (timedelta(0), *OFFSETS)], end
    # steady state: the first read and the one-minute re-read of the window before are one
    # request; the other re-reads one each
    at_5h = [read for at, read in reads if at == T0 + 5 * HOURS]
    assert [(r.end - r.start) / MINUTE for r in at_5h] == [2, 1, 1, 1]
    assert sum(r.first for r in at_5h) == 1
    assert sum(r.again for r in at_5h) == 4


def test_catching_up_reads_each_window_once_for_all_the_rereads_it_is_late_for() -> None:
    """A client without a checkpoint two days back: its windows are read in chunks, each read
    standing for every re-read whose time had passed, and none more than 5 times."""
    start = T0 - timedelta(days=2)
    schedule = Schedule.starting(MINUTE, OFFSETS, start)
    reads = _run(schedule, T0, T0 + 5 * HOURS)
    assert all(read.end - read.start <= MAX_READ_WINDOWS * MINUTE for _, read in reads)
    by_window = _reads_by_window(reads)
    assert len(by_window) == (T0 + 5 * HOURS - start) / MINUTE
    for end, ats in by_window.items():
        assert len(ats) <= len(OFFSETS) + 1
        for offset in (timedelta(0), *OFFSETS):
            if end + offset <= T0 + 5 * HOURS:  # due by then: done by a read at or after it
                assert any(at >= end + offset for at in ats), (end, offset)
    old = by_window[start + MINUTE]
    assert len(old) == 1  # two days old: one read was all of its reads


def test_a_schedule_restored_from_its_frontiers_goes_on_as_if_never_stopped() -> None:
    """Stopped mid-schedule (some re-reads failing, so behind their time): the one rebuilt from
    its checkpoint makes the same reads as the one that kept going."""
    kept = Schedule.starting(MINUTE, OFFSETS, T0)
    _run(kept, T0, T0 + 2 * HOURS)
    kept.frontiers[2] -= 5 * MINUTE  # the 10-minute re-read 5 windows behind
    restored = Schedule(MINUTE, OFFSETS, kept.until, kept.rereads)
    assert restored.frontiers == kept.frontiers
    later = T0 + 2 * HOURS + 3 * MINUTE
    behind = restored.frontiers[2]
    assert _run(restored, later, later + HOURS) == (reads := _run(kept, later, later + HOURS))
    assert [read.start for at, read in reads if at == later][1] == behind  # not skipped


def test_a_checkpoint_without_rereads_takes_each_to_be_on_time() -> None:
    """A checkpoint from before the schedule: windows are re-read from now on at their time,
    so the last re-read still finds the long calls of the 4 hours before the upgrade."""
    schedule = Schedule(MINUTE, OFFSETS, T0)
    assert schedule.frontiers == [T0, *(T0 - offset for offset in OFFSETS)]
    assert schedule.plan(T0) is None
    assert schedule.next_due(T0) == T0 + MINUTE
    reads = _run(schedule, T0, T0 + 5 * HOURS)
    by_window = _reads_by_window(reads)
    assert len(by_window[T0 - 3 * HOURS]) == 1  # read once more, 4 h after its end
    assert by_window[T0 - 3 * HOURS] == [T0 + HOURS]


@pytest.mark.parametrize("window_s", [0.0, -1.0])
def test_a_window_lasts(window_s: float) -> None:
    with pytest.raises(ValueError, match="a window lasts"):
        Schedule.starting(timedelta(seconds=window_s), OFFSETS, T0)


def test_a_checkpoint_written_before_the_schedule_still_decodes() -> None:
    old = b'{"provider":"vpbx","account":"1001","until":"2026-11-01T08:00:00Z"}'
    assert msgspec.json.decode(old, type=Checkpoint) == Checkpoint("vpbx", "1001", T0)
    new = Checkpoint("vpbx", "1001", T0, (Reread(600.0, T0 - 11 * MINUTE),))
    assert msgspec.json.decode(msgspec.json.encode(new), type=Checkpoint) == new


def test_the_rereads_are_a_comma_separated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSTREAM_POLL__VPBX__REREADS_S", "30,300")
    monkeypatch.setenv("CALLSTREAM_POLL__VPBX__MAX_CALL_S", "7200")
    vpbx = load(PollSettings, "poll").vpbx
    assert (vpbx.rereads_s, vpbx.max_call_s) == ((30.0, 300.0), 7_200.0)
    assert offsets_of(vpbx.rereads_s, vpbx.max_call_s) == tuple(
        timedelta(seconds=s) for s in (30, 300, 7_200)
    )
