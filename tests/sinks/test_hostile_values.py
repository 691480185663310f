"""Issue 15's findings against the real broker, normalizer, aggregator and each real store:
colliding ids make two sessions, not one; times no call can have are refused at the normalizer,
with the reason, and nothing behind them is held up."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import drained, eventually, normalizer, raw, serving, store_sink
from sink_helpers import Query

from callstream import samples
from foundation import kafka as kafka_io
from foundation.settings import AggregatorSettings, KafkaSettings
from normalize import aggregator
from schemas import topics


def _wavecell(account: str, session_id: str, **leg_times: str) -> bytes:
    body = json.loads(samples.payloads("wavecell", 1)[0])
    body["subAccountId"], body["sessionId"] = account, session_id
    body["details"]["callA"].update(leg_times)
    return json.dumps(body).encode()


async def test_colliding_ids_stay_two_sessions_and_impossible_times_are_refused(
    kafka: KafkaSettings, store_url: str, query: Query, tmp_path: Path
) -> None:
    bodies = [
        _wavecell("acc", "coll:x"),
        _wavecell("acc:coll", "x"),  # the same key before contract 1.1: wavecell:acc:coll:x
        _wavecell("acc", "late", disconnectedTimestamp="9999-12-31T23:59:59Z"),
        _wavecell("acc", "early", initiatedTimestamp="0001-01-01T00:00:00Z"),
        *samples.payloads("wavecell", 20),
    ]
    await kafka_io.publish(kafka, topics.RAW, [raw("wavecell", body) for body in bodies])
    settings = AggregatorSettings(group_id="test-aggregator", state_dir=str(tmp_path))
    async with (
        serving(normalizer(kafka)) as normalizing,
        serving(lambda stop: aggregator.serve(settings, kafka, stop)),
        serving(store_sink(kafka, store_url)),
    ):
        await drained(kafka, "test-normalizer", topics.RAW, normalizing)

        async def stored() -> bool:
            try:
                [(count,)] = await query("SELECT count(*) FROM call_sessions")
            except Exception:  # not migrated yet
                return False
            return count == 22

        await eventually(stored, "22 sessions stored")
    rows = await query(
        "SELECT account, session_id, session_key FROM call_sessions"
        " WHERE account IN ('acc', 'acc:coll')"
    )
    assert sorted(tuple(row) for row in rows) == [
        ("acc", "coll:x", "wavecell:acc:coll%3Ax"),
        ("acc:coll", "x", "wavecell:acc%3Acoll:x"),
    ]
    letters = {
        json.loads(r.value)["sessionId"]: dict(r.headers)
        for r in await kafka_io.read_all(kafka, topics.DLQ)
    }
    assert letters.keys() == {"late", "early"}
    assert letters["late"][topics.ERROR_STAGE] == b"normalize"
    assert b"disconnectedTimestamp" in letters["late"][topics.ERROR]
    assert b"initiatedTimestamp" in letters["early"][topics.ERROR]
