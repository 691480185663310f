"""Output for people escapes control characters: tables (`calls`, `stats`, `dlq list/show`) and
console logs. A provider chooses session ids and accounts; they must not act on a terminal."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import structlog
from aiokafka import ConsumerRecord

from callstream import dlq, samples
from callstream.cli import main
from foundation.log import configure_logging
from foundation.text import printable
from normalize import normalize
from normalize.sessions import fold
from schemas import topics
from sinks.sqlite import SqliteBackend

EVIL = "s\x1b[31mred\x07\r\nX\u202eabc\u2066\x9b"
"""ESC[31m (red), BEL, CR LF (a forged line), RLO (reversed text), LRI, a C1 CSI."""
ESCAPED = "s\\x1b[31mred\\x07\\r\\nX\\u202eabc\\u2066\\x9b"
CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\u2066", "\x9b")


def test_printable_escapes_c0_c1_and_bidi_controls_only() -> None:
    assert printable(EVIL) == ESCAPED
    assert printable("Zürich +65 日本 \\x1b") == "Zürich +65 日本 \\x1b"
    assert printable("a\tb\nc\x00", keep="\n\t") == "a\tb\nc\\x00"
    for code in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        assert printable(chr(code)).startswith("\\"), hex(code)


async def _store_with_evil_call(path: Path) -> None:
    """A session whose ids hold control characters, as a store written before contract 1.1 (or
    by another writer) may hold: the normalizer refuses such ids today."""
    body = json.loads(samples.payloads("wavecell", 1)[0])
    body["status"] = body["details"]["callB"]["status"] = "Completed"
    events = [
        msgspec.structs.replace(
            event, session_id=EVIL, account="acct" + EVIL, session_key=f"wavecell:acct{EVIL}:{EVIL}"
        )
        for event in normalize("wavecell", json.dumps(body).encode(), received_at=datetime.now(UTC))
    ]
    session = None
    for event in events:
        session = fold(session, event)
    assert session is not None
    store = SqliteBackend(path)
    await store.open()
    try:
        await store.write(events, [session])
    finally:
        await store.close()


@pytest.mark.parametrize("args", [["calls"], ["stats", "--by", "account"]])
async def test_calls_and_stats_print_a_hostile_session_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    await _store_with_evil_call(tmp_path / "callstream.sqlite3")
    capsys.readouterr()
    assert await _main(*args, "--data-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert ESCAPED in out
    assert not any(char in out for char in CONTROLS)
    assert len(out.splitlines()) == 2  # the header and one row: no forged line


async def _main(*argv: str) -> int:
    """`main` runs its own event loop: off this test's loop, in a thread."""
    return await asyncio.to_thread(main, list(argv))


def _dead_letter(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topics.DLQ, partition=0, offset=7, timestamp=1_790_000_000_000, timestamp_type=0,
        key=None, value=value, checksum=None, serialized_key_size=0,
        serialized_value_size=len(value), headers=headers,
    )  # fmt: skip


def test_dlq_list_and_show_escape_a_hostile_letter() -> None:
    record = _dead_letter(
        b'{\n\t"sessionId": "' + EVIL.encode() + b'"\n}',
        [
            (topics.PROVIDER, ("wavecell" + EVIL).encode()),
            (topics.ERROR_STAGE, b"normalize"),
            (topics.ERROR, ("wavecell: $.x: bad " + EVIL).encode()),
        ],
    )
    letter = dlq._letter(record)
    listed = dlq.render_list([letter])
    assert "\\x1b[31mred\\x07" in listed
    assert "\\u202e" in listed
    assert not any(char in listed for char in CONTROLS)
    assert len(listed.splitlines()) == 2
    shown = dlq.render_show(letter)
    assert ESCAPED in shown
    assert not any(char in shown for char in CONTROLS)
    assert '{\n\t"sessionId"' in shown  # the body keeps its own line feeds and tabs


def test_console_logs_escape_text_values_and_json_logs_stay_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=False)
    structlog.get_logger("test").warning("session " + EVIL, session_id=EVIL, count=3)
    err = capsys.readouterr().err
    assert ESCAPED in err
    assert not any(char in err for char in ("\x07", "\r", "\u202e", "\u2066", "\x9b"))
    assert "\x1b[31mred" not in err  # the renderer's own colours may remain, not the provider's
    configure_logging(json=True)
    structlog.get_logger("test").warning("x", session_id=EVIL)
    assert json.loads(capsys.readouterr().err)["session_id"] == EVIL
