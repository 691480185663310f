"""`callstream normalize` and `callstream schema`, as a user runs them."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sinks.sqlite import SqliteBackend

GOLDEN = Path(__file__).parent.parent / "golden"
CALLSTREAM = [sys.executable, "-m", "callstream"]


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CALLSTREAM, *args], input=stdin, capture_output=True, check=False, timeout=60
    )


def test_normalize_a_file_prints_one_event_per_line() -> None:
    result = run(
        "normalize", "--provider", "wavecell", "--received-at", "2026-11-01T12:00:00Z",
        str(GOLDEN / "wavecell" / "doc_sample.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = json.loads((GOLDEN / "wavecell" / "doc_sample.expected.json").read_text())
    assert [json.loads(line) for line in lines] == expected


def test_normalize_reads_stdin_and_takes_context() -> None:
    body = (GOLDEN / "mobile_agent" / "doc_sample.json").read_bytes()
    result = run(
        "normalize", "--provider", "mobile_agent", "--context", "callSerialNo=42", stdin=body
    )
    assert result.returncode == 0, result.stderr
    (event,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (event["session_id"], event["status"], event["hangup_by"]) == (
        "42",
        "completed",
        "callee",
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--provider", "wavecell"], b"not json", "callstream: wavecell: $: not valid JSON"),
        (
            ["--provider", "wavecell"],
            b'{"sessionId": 1}',
            "callstream: wavecell: $.sessionId: wrong type",
        ),
        (
            ["--provider", "mobile_agent", "--context", "callSerialNo=1"],
            b'{"retCode": "1", "retMsg": "Failed to query the status."}',
            "callstream: mobile_agent: $.retCode: query failed with retCode '1'",
        ),
        (
            ["--provider", "mobile_agent"],
            b'{"retCode": "0", "result": {"state": 1}}',
            "callstream: mobile_agent: context.callSerialNo: required context is missing",
        ),
    ],
)
def test_bad_input_exits_1_with_one_line_and_no_output(
    args: list[str], stdin: bytes, message: str
) -> None:
    result = run("normalize", *args, stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == b""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.decode().startswith(message)


@pytest.mark.parametrize(
    "args",
    [
        ["--provider", "acme"],
        ["--provider", "wavecell", "--context", "no-equals-sign"],
        ["--provider", "wavecell", "--received-at", "yesterday"],
        ["--provider", "wavecell", "/no/such/file.json"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    result = run("normalize", *args)
    assert result.returncode == 2
    assert result.stdout == b""
    assert len(result.stderr.splitlines()) == 1


def test_a_report_without_calls_prints_nothing_and_succeeds() -> None:
    result = run(
        "normalize", "--provider", "voice_messaging", stdin=b'{"api_job_id": "j", "data": []}'
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.mark.parametrize(
    ("record", "title"), [("event", "CallEvent"), ("session", "SessionRecord")]
)
def test_schema_prints_the_json_schema(record: str, title: str) -> None:
    result = run("schema", record)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$ref"] == f"#/$defs/{title}"
    assert "status" in schema["$defs"][title]["required"]


def test_bench_normalize_reports_the_keys_the_readme_promises() -> None:
    result = run("bench", "normalize", "--json", "--seconds", "0.3")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {"wavecell_per_s", "baseline_ratio", "baseline_isoformat_ratio"} <= set(figures)
    assert isinstance(figures.pop("targets_met"), bool)  # whether, not a timed assertion
    assert all(value > 0 for value in figures.values())


def test_bench_prints_each_target_with_its_verdict() -> None:
    result = run("bench", "normalize", "--seconds", "0.3")
    assert result.returncode == 0, result.stderr
    assert re.search(rb"^baseline_ratio [0-9.]+, target >= 4: (met|NOT MET)$", result.stdout, re.M)


@pytest.mark.parametrize(
    "args",
    [["calls", "--status", "lost"], ["calls", "--since", "yesterday"], ["stats", "--by", "planet"]],
)
def test_report_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    result = run(*args)
    assert (result.returncode, result.stdout) == (2, b"")
    assert len(result.stderr.splitlines()) == 1


async def _empty_store(path: Path) -> None:
    store = SqliteBackend(path)
    await store.open()
    await store.close()


def test_calls_on_an_empty_store_says_so(tmp_path: Path) -> None:
    asyncio.run(_empty_store(tmp_path / "callstream.sqlite3"))
    result = run("calls", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1] == "(none)"


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    result = run("asyncapi")
    assert result.returncode == 0, result.stderr
    committed = Path(__file__).parent.parent.parent / "docs" / "asyncapi.json"
    assert result.stdout == committed.read_bytes(), "run: make docs"
    document = json.loads(result.stdout)
    assert set(document["channels"]) == {
        "calls.raw",
        "calls.events",
        "calls.sessions",
        "calls.alerts",
        "calls.alerts.samples",
        "calls.alerts.state",
        "calls.dlq",
        "calls.track",
        "calls.checkpoints",
    }
    assert {"CallEvent", "SessionRecord", "Alert", "Track", "Checkpoint", "AlertState"} <= set(
        document["components"]["schemas"]
    )
    assert set(document["channels"]["calls.alerts.samples"]["messages"]) == {
        "AlertSample",
        "AlertWatermark",
    }


@pytest.mark.parametrize("args", [["asyncapi"], ["schema", "event"], ["schema", "session"]])
def test_generated_documents_do_not_depend_on_the_python_version(args: list[str]) -> None:
    """Python 3.13 strips docstring indentation and 3.11 keeps it: descriptions come out cleaned."""
    descriptions = []

    def collect(value: object) -> None:
        if isinstance(value, dict):
            descriptions.extend(v for k, v in value.items() if k == "description")
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    result = run(*args)
    collect(json.loads(result.stdout))
    assert all(inspect.cleandoc(text) == text for text in descriptions)


def test_bench_normalizer_measures_the_service_against_its_passthrough() -> None:
    result = run("bench", "normalizer", "--json", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["records_per_s"] > 0
    assert figures["passthrough_per_s"] > 0
    assert figures["ratio_min"] <= figures["ratio"] <= figures["ratio_max"]
    assert (figures["events"], figures["dead_lettered"]) == (2 * figures["records"], 0)
    assert isinstance(figures["targets_met"], bool)


def test_bench_sink_measures_each_backend_against_a_bare_table_of_its_database() -> None:
    result = run("bench", "sink", "--json", "--seconds", "0.2")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for backend in ("postgres", "sqlite"):
        rate, bare = figures[f"{backend}_per_s"], figures[f"{backend}_bare_per_s"]
        assert rate > 0
        assert bare > 0
        assert abs(figures[f"{backend}_ratio"] - rate / bare) <= 0.01


# Apart, a partition's first legs must outnumber what one fetch brings (about 1 MB of it).
@pytest.mark.parametrize(("legs", "sessions"), [("together", 10_000), ("apart", 50_000)])
def test_bench_aggregate_folds_every_event_and_measures_its_passthrough(
    legs: str, sessions: int
) -> None:
    result = run("bench", "aggregate", "--json", "--sessions", str(sessions), "--legs", legs)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["sessions"], figures["events"]) == (sessions, 2 * sessions)
    assert figures["legs"] == legs
    if legs == "together":  # each session at least once, in its last version
        assert sessions <= figures["session_records"] < 1.1 * sessions
    else:  # no session's two events in one batch: each event makes a version of its own
        assert figures["session_records"] == 2 * sessions
    assert figures["events_per_s"] > 0
    assert figures["passthrough_per_s"] > 0
    assert figures["ratio"] == round(figures["events_per_s"] / figures["passthrough_per_s"], 2)
    assert figures["rss_mb"] > 0


def test_bench_aggregate_of_a_single_batch_says_it_cannot_time_it() -> None:
    result = run("bench", "aggregate", "--sessions", "100")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        "callstream: bench aggregate: all 200 events came in the first batch, which is not "
        "timed; pre-load more sessions (--sessions 10000 or more)"
    )
