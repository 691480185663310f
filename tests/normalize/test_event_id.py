"""event_id: the same report always gives the same id; a different state a different one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from normalize import normalize
from schemas import RawRef

GOLDEN = Path(__file__).parent.parent / "golden"
SAMPLE = (GOLDEN / "wavecell" / "doc_sample.json").read_bytes()
T1, T2 = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)


def _ids(provider: str, body: bytes, **kwargs: object) -> list[str]:
    return [event.event_id for event in normalize(provider, body, **kwargs)]  # type: ignore[arg-type]


def test_a_retry_received_later_and_stored_elsewhere_keeps_its_ids() -> None:
    first = _ids("wavecell", SAMPLE, received_at=T1)
    retry = _ids("wavecell", SAMPLE, received_at=T2, raw=RawRef("calls.raw", 3, 991))
    assert first == retry
    assert len(set(first)) == 2  # the two legs differ


def test_key_order_and_whitespace_do_not_matter() -> None:
    reordered = msgspec.json.encode(dict(reversed(msgspec.json.decode(SAMPLE).items())))
    assert _ids("wavecell", reordered, received_at=T1) == _ids("wavecell", SAMPLE, received_at=T1)


def test_each_state_of_a_polled_call_has_its_own_id() -> None:
    context = {"callSerialNo": "645735364434067472"}
    ids = [
        _ids("mobile_agent", body, received_at=T1, context=context)[0]
        for body in (
            b'{"retCode":"0","result":{"state":0}}',
            b'{"retCode":"0","result":{"state":1}}',
            b'{"retCode":"0","result":{"state":2}}',
            b'{"retCode":"0","result":{"state":3,"reasonCode":0}}',
        )
    ]
    assert len(set(ids)) == 4
    polled_again = _ids(
        "mobile_agent", b'{"retCode":"0","result":{"state":1}}', received_at=T2, context=context
    )
    assert polled_again[0] == ids[1]


def test_same_call_id_under_another_account_is_another_event() -> None:
    doc = msgspec.json.decode(SAMPLE)
    other = msgspec.json.encode({**doc, "subAccountId": "account_y"})
    assert set(_ids("wavecell", other, received_at=T1)).isdisjoint(
        _ids("wavecell", SAMPLE, received_at=T1)
    )
