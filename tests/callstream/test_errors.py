"""Every command fails with one line on stderr and the documented exit code: 1 rejected input,
2 usage and settings, 3 something needed is not there (broker, store, port)."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from callstream.broker import free_port
from callstream.cli import EXIT_UNAVAILABLE, EXIT_USAGE, main


@pytest.fixture
def nobody() -> str:
    """A bootstrap address where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr of `callstream argv`, run in this process; argparse's exits
    included. Garbage is collected first, so that an unclosed client would complain now."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    gc.collect()
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["tail", "calls.events"],
        ["dlq", "list"],
        ["dlq", "show", "0:1"],
        ["replay", "--from-beginning"],
        ["topics"],
        ["normalizer"],
        ["aggregator"],
        ["alerts"],
        ["ingress"],
    ],
)
def test_an_unreachable_broker_is_one_line_and_exit_3(
    argv: list[str], nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails([*argv, "--kafka", nobody], capsys)
    assert code == EXIT_UNAVAILABLE
    assert err.splitlines() == [
        f"callstream: the Kafka broker at {nobody} does not answer ({nobody}: "
        f"[Errno 111] Connect call failed ('127.0.0.1', {nobody.split(':')[1]}))"
    ]


def test_up_with_a_kafka_that_does_not_answer_exits_3(
    nobody: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails(["up", "--kafka", nobody, "--data-dir", str(tmp_path)], capsys)
    assert code == EXIT_UNAVAILABLE
    assert len(err.splitlines()) == 1
    assert f"the Kafka broker at {nobody} does not answer" in err


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_up_with_its_http_port_taken_exits_3_at_once(
    taken: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    code, err = _fails(["up", "--http-port", str(taken), "--data-dir", str(data_dir)], capsys)
    assert code == EXIT_UNAVAILABLE
    assert err.splitlines() == [
        f"callstream: port {taken} on 127.0.0.1 is already in use (the ingress's; "
        "--http-port chooses another)"
    ]
    assert not data_dir.exists()


def test_ingress_workers_on_a_taken_port_exit_3_before_any_starts(
    taken: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails(["ingress", "--port", str(taken), "--workers", "2"], capsys)
    assert code == EXIT_UNAVAILABLE
    assert err.splitlines() == [
        f"callstream: port {taken} on 127.0.0.1 is already in use (the ingress's)"
    ]


def test_ingress_workers_must_be_one_or_more(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fails(["ingress", "--workers", "0"], capsys)
    assert code == EXIT_USAGE
    assert err.splitlines() == [
        "callstream: setting CALLSTREAM_INGRESS__WORKERS: Expected `int` >= 1"
    ]


def test_up_with_its_broker_port_taken_exits_3(
    taken: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails(["up", "--broker-port", str(taken), "--data-dir", str(tmp_path)], capsys)
    assert code == EXIT_UNAVAILABLE
    assert len(err.splitlines()) == 1
    assert f"port {taken} on 127.0.0.1 is already in use (the embedded broker's" in err


@pytest.mark.parametrize("command", ["calls", "stats"])
def test_reading_a_missing_store_creates_nothing_and_exits_3(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "nonexistent"
    code, err = _fails([command, "--data-dir", str(data_dir)], capsys)
    assert code == EXIT_UNAVAILABLE
    assert err.splitlines() == [
        f"callstream: no store at {data_dir}/callstream.sqlite3 (`callstream up` or "
        "`callstream store` creates it; --store or --data-dir choose another)"
    ]
    assert not data_dir.exists()


def test_a_file_that_is_not_a_store_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "notes.sqlite3"
    other.write_bytes(b"not a database")
    code, err = _fails(["calls", "--store", f"sqlite:///{other}"], capsys)
    assert (code, other.read_bytes()) == (EXIT_UNAVAILABLE, b"not a database")
    assert err.startswith(f"callstream: no store at {other} ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dlq", "list", "--stage", "bogus"], "argument --stage: invalid choice: 'bogus'"),
        (["dlq", "redrive", "--provider", "acme"], "argument --provider: invalid choice: 'acme'"),
        (["calls", "--provider", "wavecel"], "did you mean 'wavecell'?"),
        (["calls", "--limit", "0"], "argument --limit: expected a whole number of at least 1"),
        (["tail", "calls.raw", "--count", "-1"], "argument --count: expected a whole number"),
        (
            ["normalize", "--provder", "wavecell", "file"],
            "callstream normalize: unrecognized arguments: --provder (did you mean --provider?)",
        ),
        (["normalize", "--prov", "wavecell"], "unrecognized arguments: --prov (did you mean"),
        (["dlq", "list", "--stag", "x"], "unrecognized arguments: --stag (did you mean --stage?)"),
        (["stats", "--by", "acount"], "did you mean 'account'?"),
        (["nromalize"], "did you mean 'normalize'?"),
    ],
)
def test_unknown_values_and_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails(argv, capsys)
    assert code == EXIT_USAGE
    assert len(err.splitlines()) == 1
    assert message in err
