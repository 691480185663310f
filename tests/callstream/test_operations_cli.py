"""`callstream replay` and `callstream dlq`, as an operator runs them."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from helpers import env_for

from foundation import kafka as kafka_io
from foundation.settings import KafkaSettings
from schemas import topics
from schemas.raw import RawMeta, raw_headers

GOLDEN = Path(__file__).parent.parent / "golden" / "wavecell"


async def _callstream(kafka: KafkaSettings, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callstream", *args, "--kafka", kafka.bootstrap,
        env=env_for(kafka), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_replay_then_list_show_and_redrive_its_dead_letter(kafka: KafkaSettings) -> None:
    meta = RawMeta("wavecell", "webhook", datetime.now(UTC), "r-1", "application/json", {})
    good, bad = (GOLDEN / "doc_sample.json").read_bytes(), b'{"sessionId": 42}'
    await kafka_io.publish(
        kafka,
        topics.RAW,
        [kafka_io.OutRecord(None, body, raw_headers(meta)) for body in (good, bad)],
    )

    code, out = await _callstream(kafka, "replay", "--from-beginning")
    assert (code, out.split()) == (
        0,
        ["read=2", "skipped=0", "produced=2", "dead_lettered=1", "complete=True"],
    )

    code, out = await _callstream(kafka, "dlq", "list", "--stage", "replay")
    assert code == 0
    (row,) = out.splitlines()[1:]
    letter_id, *_ = row.split()
    assert {"replay", "wavecell"} <= set(row.split())
    assert "$.sessionId" in row

    code, out = await _callstream(kafka, "dlq", "show", letter_id)
    assert code == 0
    assert '{"sessionId": 42}' in out

    code, out = await _callstream(kafka, "dlq", "redrive")
    assert (code, out.split()) == (0, ["ok=0", "failed=1", "events=0"])
