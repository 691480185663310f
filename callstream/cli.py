"""`callstream` command line: where the program starts. Each subcommand is one small function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

import msgspec

from callstream.errors import CallstreamError
from normalize import ADAPTERS, normalize
from schemas import CallEvent, SessionRecord

EXIT_REJECTED = 1
EXIT_USAGE = 2

_encoder = msgspec.json.Encoder()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CallstreamError as exc:
        print(f"callstream: {exc}", file=sys.stderr)
        return EXIT_REJECTED


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="callstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = commands.add_parser(
        "normalize", help="decode one raw provider report to canonical events"
    )
    cmd.add_argument("--provider", required=True, choices=sorted(ADAPTERS))
    cmd.add_argument(
        "--context", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
        help="context the body does not carry, e.g. callSerialNo=123 (repeatable)",
    )  # fmt: skip
    cmd.add_argument(
        "--received-at", type=_timestamp, default=None, metavar="TIME",
        help="RFC 3339 time of receipt (default: now), for reproducible output",
    )  # fmt: skip
    cmd.add_argument("file", nargs="?", type=argparse.FileType("rb"), default=sys.stdin.buffer)
    cmd.set_defaults(run=_normalize)

    cmd = commands.add_parser("schema", help="print the JSON Schema of a canonical record")
    cmd.add_argument("record", nargs="?", choices=["event", "session"], default="event")
    cmd.set_defaults(run=_schema)

    bench = commands.add_parser("bench", help="measure throughput").add_subparsers(
        dest="bench", required=True, metavar="BENCHMARK"
    )
    cmd = bench.add_parser("normalize", help="payloads/s of each normalizer vs a plain baseline")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    cmd.set_defaults(run=_bench_normalize)
    return parser


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _timestamp(text: str) -> datetime:
    try:
        moment = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise argparse.ArgumentTypeError(f"expected an RFC 3339 time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _normalize(args: argparse.Namespace) -> int:
    with args.file as source:
        body = source.read()
    events = normalize(
        args.provider,
        body,
        received_at=args.received_at or datetime.now(UTC),
        context=dict(args.context),
    )
    out = sys.stdout.buffer
    for event in events:
        out.write(_encoder.encode(event) + b"\n")
    out.flush()
    return 0


def _schema(args: argparse.Namespace) -> int:
    record = CallEvent if args.record == "event" else SessionRecord
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(msgspec.json.schema(record))))
    sys.stdout.buffer.write(b"\n")
    return 0


def _bench_normalize(args: argparse.Namespace) -> int:
    from callstream.bench.normalize import report, run  # noqa: PLC0415 - only the bench needs it

    results = run(seconds=args.seconds)
    print(_encoder.encode(results).decode() if args.json else report(results))
    return 0
