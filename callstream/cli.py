"""`callstream` command line: where the program starts. Each subcommand is one small function."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import msgspec
from aiokafka.errors import KafkaError

from callstream import dlq, reports, status, up
from callstream.asyncapi import render
from callstream.bench import Target, verdicts
from callstream.bench import aggregate as aggregate_bench
from callstream.broker import EmbeddedBroker, port_free
from callstream.replay import replay
from callstream.reports import since
from callstream.simulate import simulation
from callstream.simulate.faults import Faults
from callstream.tail import tail
from callstream.up import store_url
from foundation.errors import CallstreamError, Unavailable
from foundation.kafka import ensure_topics
from foundation.log import configure_logging
from foundation.service import run_until_signalled, tune_gc
from foundation.settings import (
    AggregatorSettings,
    AlertSettings,
    IngressSettings,
    KafkaSettings,
    LogSettings,
    NormalizerSettings,
    PollSettings,
    SettingsError,
    StoreSettings,
    load,
)
from normalize import ADAPTERS, normalize
from schemas import CallEvent, SessionRecord, Status, documents
from schemas.documents import json_schema
from schemas.topics import Stage

EXIT_REJECTED = 1
"""Input rejected: a report that does not normalize, an unknown dead-letter id."""
EXIT_USAGE = 2
"""Usage and settings: an unknown flag or value, a malformed setting."""
EXIT_UNAVAILABLE = 3
"""Something needed is not there or does not answer: the broker, the store, a port."""
DEFAULT_KAFKA = KafkaSettings().bootstrap
_SINCE_HELP = "15m, 2h, 7d ago or an RFC 3339 time"

_encoder = msgspec.json.Encoder()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error of the CLI.

    Options are never abbreviated (`--prov` is not `--provider`: a new option would change
    what it means), and a mistyped option is what is reported, with the likely one, even when
    it made argparse fail elsewhere first (`normalize --provder wavecell f` would otherwise
    complain that --provider is missing, or take `wavecell` for the file).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self._seen: list[str] = []

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._seen = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(self._seen, namespace)
        if extras:  # a subcommand reports its own, with what it knows of its options
            self._unrecognized(extras)
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self._unrecognized(self._seen)
        if (choice := _INVALID_CHOICE.search(message)) is not None:
            options = re.findall(r"'([^']*)'", choice[2])
            if close := difflib.get_close_matches(choice[1], options, 1):
                message += f"; did you mean {close[0]!r}?"
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")

    def _unrecognized(self, args: Sequence[str]) -> None:
        """Exit naming the options among `args` this parser does not know, if any."""
        known = self._option_string_actions
        unknown = []
        for arg in args:
            if arg == "--":
                break
            name = arg.split("=", 1)[0]
            if arg.startswith("-") and name not in known and not _NUMBER.fullmatch(arg):
                unknown.append(name)
        if not unknown:
            return
        message = f"unrecognized arguments: {' '.join(unknown)}"
        close = difflib.get_close_matches(unknown[0], [o for o in known if o.startswith("--")], 1)
        if close:
            message += f" (did you mean {close[0]}?)"
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


_NUMBER = re.compile(r"-\d+(\.\d*)?")
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error is one line on stderr and an exit code (README)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SettingsError as exc:
        return _fail(f"setting {exc}", EXIT_USAGE)
    except Unavailable as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    except KafkaError as exc:  # the broker answered, but not as asked, or stopped answering
        return _fail(f"Kafka at {_bootstrap_of(args)}: {exc}", EXIT_UNAVAILABLE)
    except TimeoutError as exc:
        return _fail(f"Kafka at {_bootstrap_of(args)}: {exc or 'timed out'}", EXIT_UNAVAILABLE)
    except CallstreamError as exc:
        return _fail(str(exc), EXIT_REJECTED)


def _fail(message: str, code: int) -> int:
    print(f"callstream: {message}", file=sys.stderr)
    return code


def _bootstrap_of(args: argparse.Namespace) -> str:
    try:
        return _kafka(args).bootstrap
    except SettingsError:
        return getattr(args, "kafka", None) or DEFAULT_KAFKA


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

    cmd = commands.add_parser("asyncapi", help="print the AsyncAPI document of the topics")
    cmd.set_defaults(run=_asyncapi)

    _add_pipeline_commands(commands)
    _add_simulate_command(commands)
    _add_operations_commands(commands)
    _add_store_commands(commands)
    _add_bench_commands(commands)
    return parser


def _kafka_parent() -> argparse.ArgumentParser:
    """The --kafka option of every command that talks to Kafka."""
    kafka = _Parser(add_help=False)
    kafka.add_argument(
        "--kafka", metavar="HOST:PORT", default=None,
        help=f"Kafka bootstrap servers (default: $CALLSTREAM_KAFKA__BOOTSTRAP or {DEFAULT_KAFKA})",
    )  # fmt: skip
    return kafka


def _add_service_commands(commands: Any, kafka: argparse.ArgumentParser) -> None:
    """The normalizer, the aggregator and the pollers, each a service of its own."""
    for name, help_text in (
        ("normalizer", "normalize calls.raw into calls.events"),
        ("aggregator", "fold calls.events into calls.sessions"),
        ("poll", "poll the configured pull providers (vpbx, mobile_agent) into calls.raw"),
    ):
        cmd = commands.add_parser(name, parents=[kafka], help=help_text)
        cmd.add_argument(
            "--metrics-port", type=int, default=None, help="serve /metrics here (0: off)"
        )
        if name == "aggregator":
            cmd.add_argument(
                "--state-dir", default=None, help="this instance's state (.callstream/state)"
            )
        cmd.set_defaults(run=_service)


def _add_pipeline_commands(commands: Any) -> None:
    """The broker, the services and `up`, `tail`: everything that talks to Kafka."""
    kafka = _kafka_parent()

    cmd = commands.add_parser(
        "topics", parents=[kafka], help="create the topics that do not exist yet, then exit"
    )
    cmd.set_defaults(run=_topics)

    cmd = commands.add_parser("broker", help="run the embedded broker until Ctrl-C")
    cmd.add_argument("--port", type=int, default=9092)
    cmd.set_defaults(run=_broker)

    cmd = commands.add_parser(
        "ingress", parents=[kafka], help="serve provider webhooks into calls.raw"
    )
    cmd.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    cmd.add_argument("--port", type=int, default=None, help="port to listen on (default 8080)")
    cmd.add_argument(
        "--insecure-no-auth", action="store_true", default=None,
        help="allow a non-loopback address while a provider has no authentication",
    )  # fmt: skip
    cmd.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="processes serving the port, each with its own producer (default 1)",
    )  # fmt: skip
    # Given by `--workers N` to the processes it runs, not by people.
    cmd.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    cmd.add_argument("--peers", type=Path, default=None, help=argparse.SUPPRESS)
    cmd.set_defaults(run=_ingress)

    cmd = commands.add_parser("store", parents=[kafka], help="write events and sessions to a store")
    cmd.add_argument("--store", dest="url", default=None, help="sqlite:///PATH or postgresql://…")
    cmd.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (0: off)")
    cmd.set_defaults(run=_service)

    cmd = commands.add_parser(
        "alerts", parents=[kafka], help="evaluate alert rules into calls.alerts"
    )
    cmd.add_argument("--rules", default=None, help="TOML file of rules (default: built-in rules)")
    cmd.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (0: off)")
    cmd.set_defaults(run=_service)
    listing = cmd.add_subparsers(dest="action", metavar="[list]")
    listed = listing.add_parser(
        "list", parents=[kafka], help="firing and recently resolved alerts, for people"
    )
    listed.add_argument(
        "--since", type=_since, default=None, metavar="TIME",
        help=f"resolved alerts since then ({_SINCE_HELP}; default 1h)",
    )  # fmt: skip
    listed.add_argument("--json", action="store_true", help="one JSON object per line")
    listed.set_defaults(run=_alerts_list)

    _add_service_commands(commands, kafka)

    cmd = commands.add_parser("up", parents=[kafka], help="run the whole pipeline on this machine")
    cmd.add_argument(
        "--broker-port", type=int, default=9092, help="embedded broker port (without --kafka)"
    )
    cmd.add_argument("--http-port", type=int, default=8080, help="ingress port, on 127.0.0.1")
    cmd.add_argument(
        "--metrics-port", type=int, default=9464,
        help="every service's metrics on one endpoint, on 127.0.0.1 (0: off)",
    )  # fmt: skip
    cmd.add_argument("--data-dir", type=Path, default=up.DEFAULT_DATA_DIR, help="local state")
    cmd.add_argument(
        "--ingress-workers", type=int, default=None, metavar="N",
        help="ingress processes on its port (default: $CALLSTREAM_INGRESS__WORKERS or 1)",
    )  # fmt: skip
    cmd.add_argument(
        "--demo", action="store_true",
        help="also run the provider simulator, with the pollers and its traffic pointed at it",
    )  # fmt: skip
    cmd.set_defaults(run=_up)

    cmd = commands.add_parser(
        "status", parents=[kafka], help="topics, consumer lag, dead letters, firing alerts"
    )
    cmd.add_argument(
        "--store", default=None,
        help="count its rows: sqlite:///PATH or postgresql://… (default: the store of --data-dir)",
    )  # fmt: skip
    cmd.add_argument(
        "--data-dir", type=Path, default=up.DEFAULT_DATA_DIR, help="where `up` keeps its store"
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.set_defaults(run=_status)

    cmd = commands.add_parser(
        "tail", parents=[kafka], help="print the records of a topic as JSON lines"
    )
    cmd.add_argument("topic", help="e.g. calls.events")
    cmd.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    cmd.add_argument(
        "--count", type=_count, default=None,
        help="stop after N records (default: follow until Ctrl-C)",
    )  # fmt: skip
    cmd.add_argument(
        "--to-end", action="store_true", help="stop at the end of every partition, not follow"
    )
    cmd.set_defaults(run=_tail)


def _add_simulate_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "simulate", help="fake vpbx and mobile_agent APIs, and traffic at an ingress"
    )
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on")
    cmd.add_argument("--port", type=int, default=8090, help="port of the fake APIs")
    cmd.add_argument("--seed", type=int, default=0, help="the same seed serves the same calls")
    cmd.add_argument(
        "--rate", type=_positive, default=1.0, help="new calls a second of each polled provider"
    )
    cmd.add_argument(
        "--calls", type=int, default=None, help="calls of each polled provider (default: no end)"
    )
    cmd.add_argument(
        "--time-scale", type=_positive, default=1.0,
        help="talk times are multiplied by this (0.25: a 2-minute call talks for 30 s); "
        "mobile_agent's whole call",
    )  # fmt: skip
    cmd.add_argument("--clients", default="1001,1002", help="vpbx client ids, comma-separated")
    cmd.add_argument("--token-ttl", type=_positive, default=600.0, help="token lifetime, seconds")
    cmd.add_argument(
        "--fault", action="append", default=[], type=_fault, metavar="KIND=RATE",
        help="inject a fault at a rate 0-1 (repeatable): 429, 500, slow, expired_token, "
        "malformed, ret_code",
    )  # fmt: skip
    cmd.add_argument("--slow-s", type=_positive, default=2.0, help="how late a slow answer is")
    cmd.add_argument(
        "--long-calls", type=_share, default=0.05, metavar="SHARE",
        help="share of answered polled calls that talk 15 min to 3 h (a long tail)",
    )  # fmt: skip
    cmd.add_argument(
        "--listing-lag", type=_seconds, default=120.0, metavar="S",
        help="vpbx lists a call up to this long after it ended",
    )  # fmt: skip
    cmd.add_argument(
        "--late", type=_seconds, default=300.0, metavar="S",
        help="callbacks are of calls that ended up to this long ago (late, out of order)",
    )  # fmt: skip
    cmd.add_argument(
        "--backfill", type=_share, default=0.01, metavar="SHARE",
        help="share of callbacks of calls that ended 1 to 5 days ago",
    )  # fmt: skip
    cmd.add_argument(
        "--history", type=_seconds, default=0.0, metavar="S",
        help="the polled calls begin this long ago (dated then, read now)",
    )  # fmt: skip
    cmd.add_argument(
        "--ingress", metavar="URL", default=None,
        help="send webhooks and mobile_agent call registrations to this ingress",
    )  # fmt: skip
    cmd.add_argument("--webhook-rate", type=_positive, default=5.0, help="callbacks a second")
    cmd.add_argument("--duplicates", type=float, default=0.05, help="share of callbacks sent twice")
    cmd.set_defaults(run=_simulate)


def _add_operations_commands(commands: Any) -> None:
    """Reprocessing what was received: replay of calls.raw, and the dead letters of calls.dlq."""
    kafka = _kafka_parent()
    cmd = commands.add_parser(
        "replay", parents=[kafka], help="normalize calls.raw again into calls.events"
    )
    start = cmd.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="from the oldest raw record")
    start.add_argument("--since", type=_since, default=None, metavar="TIME", help=_SINCE_HELP)
    cmd.add_argument("--provider", default=None, choices=sorted(ADAPTERS))
    cmd.set_defaults(run=_replay)

    dlq = commands.add_parser("dlq", help="dead letters: list, show, redrive").add_subparsers(
        dest="dlq", required=True, metavar="ACTION"
    )
    filters = _Parser(add_help=False)
    filters.add_argument("--stage", default=None, choices=[stage.value for stage in Stage])
    filters.add_argument("--provider", default=None, choices=sorted(ADAPTERS))
    filters.add_argument("--since", type=_since, default=None, metavar="TIME", help=_SINCE_HELP)
    cmd = dlq.add_parser("list", parents=[kafka, filters], help="the dead letters, one line each")
    cmd.add_argument(
        "--all", action="store_true", help="also letters already redriven, and markers"
    )
    cmd.set_defaults(run=_dlq)
    cmd = dlq.add_parser("show", parents=[kafka], help="one dead letter: headers and body")
    cmd.add_argument("id", metavar="PARTITION:OFFSET")
    cmd.set_defaults(run=_dlq)
    cmd = dlq.add_parser("redrive", parents=[kafka, filters], help="normalize dead letters again")
    cmd.add_argument("ids", nargs="*", metavar="PARTITION:OFFSET", help="only these letters")
    cmd.set_defaults(run=_dlq)


def _add_store_commands(commands: Any) -> None:
    """`calls` and `stats`: what the store holds, for people."""
    store = _Parser(add_help=False)
    store.add_argument(
        "--store", default=None,
        help="sqlite:///PATH or postgresql://… (default: the SQLite store of --data-dir)",
    )  # fmt: skip
    store.add_argument(
        "--data-dir", type=Path, default=up.DEFAULT_DATA_DIR, help="where `up` keeps its store"
    )
    store.add_argument(
        "--since", type=_since, default=None, metavar="TIME",
        help=_SINCE_HELP,
    )  # fmt: skip

    cmd = commands.add_parser("calls", parents=[store], help="list calls from the store")
    cmd.add_argument("--provider", default=None, choices=sorted(ADAPTERS))
    cmd.add_argument("--status", default=None, choices=[status.value for status in Status])
    cmd.add_argument("--number", default=None, help="calls from or to this number")
    cmd.add_argument("--limit", type=_count, default=50, help="at most this many (50)")
    cmd.set_defaults(
        run=_report, report="calls", filters=("provider", "status", "since", "number", "limit")
    )

    cmd = commands.add_parser("stats", parents=[store], help="attempts, outcomes, ASR, ACD, PDD")
    cmd.add_argument("--by", default=None, choices=["provider", "account", "country"])
    cmd.set_defaults(run=_report, report="stats", filters=("since", "by"))


def _add_bench_commands(commands: Any) -> None:
    bench = commands.add_parser("bench", help="measure throughput").add_subparsers(
        dest="bench", required=True, metavar="BENCHMARK"
    )
    for name, help_text in (
        ("normalize", "payloads/s of each normalizer vs a plain baseline"),
        ("ingress", "requests/s of the ingress vs a bare aiohttp handler"),
        ("normalizer", "raw records/s through the normalizer service"),
        ("sink", "events/s written to each store backend"),
    ):
        cmd = bench.add_parser(name, help=help_text)
        cmd.add_argument("--json", action="store_true", help="print one JSON object")
        cmd.add_argument("--seconds", type=float, default=None, help="how long to measure")
        cmd.set_defaults(run=_bench, options=("seconds",))
    cmd = bench.add_parser(
        "aggregate", help="events/s folded into sessions by the aggregator, and its peak memory"
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.add_argument(
        "--sessions", type=_count, default=None, help="two-leg sessions pre-loaded (100000)"
    )
    cmd.add_argument(
        "--legs", choices=aggregate_bench.LEGS, default=None,
        help="a session's two events one after the other (together) or in different batches, "
        "the second read from the database (apart)",
    )  # fmt: skip
    cmd.set_defaults(run=_bench, options=("sessions", "legs"))
    cmd = bench.add_parser(
        "soak", help="the whole pipeline under traffic and faults, reconciled at the end"
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.add_argument("--duration", type=_positive, default=None, help="seconds of traffic (120)")
    cmd.add_argument("--rate", type=_positive, default=None, help="callbacks a second (2000)")
    cmd.add_argument(
        "--faults", choices=("all", "none"), default=None,
        help="kill one instance of each consumer in turn and pause the broker (all), or not",
    )  # fmt: skip
    cmd.add_argument("--instances", type=_count, default=None, help="of each consumer service (1)")
    cmd.add_argument(
        "--store", default=None,
        help="postgresql://…: store into a schema of the run's own there, with --instances "
        "stores (default: up's SQLite file, one store)",
    )  # fmt: skip
    cmd.set_defaults(run=_bench, options=("duration", "rate", "faults", "instances", "store"))


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return value


def _fault(text: str) -> str:

    try:
        Faults.parse([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE: {exc}") from None
    return text


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
    sys.stdout.buffer.write(documents.render(json_schema(record)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    bench = importlib.import_module(f"callstream.bench.{args.bench}")
    configure_logging(level="warning")  # on stderr: stdout carries the results
    tune_gc()  # as in the service processes it measures
    options = {name: getattr(args, name) for name in args.options}
    results = bench.run(**{name: value for name, value in options.items() if value is not None})
    targets: tuple[Target, ...] = getattr(bench, "TARGETS", ())
    if args.json:
        print(_encoder.encode({**results, **verdicts(targets, results)}).decode())
    else:
        print("\n".join([bench.report(results), *(target.line(results) for target in targets)]))
    return 0


def _since(text: str) -> datetime:

    try:
        return since(text)
    except msgspec.ValidationError:
        raise argparse.ArgumentTypeError(
            f"expected 15m, 2h, 7d or an RFC 3339 time, got {text!r}"
        ) from None


def _report(args: argparse.Namespace) -> int:

    url = args.store or store_url(args.data_dir)
    filters = {name: getattr(args, name) for name in args.filters}
    print(asyncio.run(getattr(reports, args.report)(url, **filters)))
    return 0


def _kafka(args: argparse.Namespace) -> KafkaSettings:
    return load(KafkaSettings, "kafka", {"bootstrap": args.kafka})


def _service_logging() -> None:
    settings = load(LogSettings, "log")
    configure_logging(json=settings.json, level=settings.level, mask_numbers=settings.mask_numbers)


def _broker(args: argparse.Namespace) -> int:
    _service_logging()
    broker = EmbeddedBroker(args.port)
    kafka = load(KafkaSettings, "kafka", {"bootstrap": broker.bootstrap})

    async def serve(stop: asyncio.Event) -> None:
        async with broker:
            await ensure_topics(kafka)
            await stop.wait()

    run_until_signalled(serve)
    return 0


def _asyncapi(_: argparse.Namespace) -> int:

    sys.stdout.buffer.write(render())
    return 0


def _replay(args: argparse.Namespace) -> int:

    _service_logging()
    kafka = _kafka(args)
    run_until_signalled(
        lambda stop: _print_result(
            replay(kafka, since=args.since, from_beginning=args.from_beginning,
                   provider=args.provider, stop=stop)
        )
    )  # fmt: skip
    return 0


def _dlq(args: argparse.Namespace) -> int:

    _service_logging()
    kafka = _kafka(args)
    if args.dlq == "show":
        print(dlq.render_show(asyncio.run(dlq.show(kafka, args.id))))
    elif args.dlq == "list":
        found = dlq.letters(
            kafka, stage=args.stage, provider=args.provider, since=args.since,
            include_redriven=args.all,
        )  # fmt: skip
        asyncio.run(_print_letters(found))
    else:
        run_until_signalled(
            lambda stop: _print_result(
                dlq.redrive(kafka, stage=args.stage, provider=args.provider, since=args.since,
                            ids=args.ids, stop=stop)
            )
        )  # fmt: skip
    return 0


async def _print_letters(found: AsyncIterator[dlq.DeadLetter]) -> None:
    """`dlq list`: each letter printed as it is read (the lines have fixed columns), under a
    header printed once the first answer came (so a broker that is not there is one line)."""
    listed = 0
    async for letter in found:
        if not listed:
            print(dlq.list_header(), flush=True)
        print(dlq.list_line(letter))
        listed += 1
    if not listed:
        print(dlq.list_header())
        print("(none)")


async def _print_result(result: Awaitable[Any]) -> None:
    """A command's counts (a NamedTuple) as one line: `read=10 produced=20 …`."""
    counts = await result
    print(" ".join(f"{name}={value}" for name, value in counts._asdict().items()))


def _topics(args: argparse.Namespace) -> int:
    """The topic bootstrap every service runs at start, alone: for a one-shot deployment step."""
    _service_logging()
    asyncio.run(ensure_topics(_kafka(args)))
    return 0


def _up(args: argparse.Namespace) -> int:

    _service_logging()
    ports = [(args.http_port, "the ingress's; --http-port chooses another")]
    if args.metrics_port:
        ports.append((args.metrics_port, "for metrics; --metrics-port chooses another, 0: none"))
    for port, what in ports:
        if not port_free("127.0.0.1", port):
            raise Unavailable(f"port {port} on 127.0.0.1 is already in use ({what})")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if args.kafka is None:
        embedded = EmbeddedBroker(args.broker_port, log_file=args.data_dir / "broker.log")
    bootstrap = args.kafka if embedded is None else embedded.bootstrap
    kafka = load(KafkaSettings, "kafka", {"bootstrap": bootstrap})
    load(IngressSettings, "ingress", {"workers": args.ingress_workers})  # wrong: stop here
    children = up.services(
        kafka, args.http_port, args.data_dir, demo=args.demo, ingress_workers=args.ingress_workers
    )
    run_until_signalled(
        lambda stop: up.serve(
            kafka, embedded, children, stop, http_port=args.http_port,
            metrics_port=args.metrics_port, data_dir=args.data_dir,
        )
    )  # fmt: skip
    return 0


def _simulate(args: argparse.Namespace) -> int:

    _service_logging()
    scenario = simulation.Scenario(
        seed=args.seed,
        rate=args.rate,
        calls=args.calls,
        time_scale=args.time_scale,
        clients=tuple(filter(None, args.clients.split(","))),
        token_ttl_s=args.token_ttl,
        faults=Faults.parse(args.fault, slow_s=args.slow_s),
        long_calls=args.long_calls,
        listing_lag_s=args.listing_lag,
        late_s=args.late,
        backfill=args.backfill,
        history_s=args.history,
    )
    run_until_signalled(
        lambda stop: simulation.run(
            scenario, host=args.host, port=args.port, ingress_url=args.ingress,
            webhook_rate=args.webhook_rate, duplicates=args.duplicates, stop=stop,
        )
    )  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    """Where the pipeline stands: a table per part, or one JSON object."""
    kafka = _kafka(args)
    found = asyncio.run(status.collect(kafka, args.store or store_url(args.data_dir)))
    print(_encoder.encode(found).decode() if args.json else status.render(found))
    return 0


def _alerts_list(args: argparse.Namespace) -> int:
    """Firing alerts, then those resolved since --since (1h): a table, or JSON lines."""
    kafka = _kafka(args)
    since = args.since or datetime.now(UTC) - timedelta(hours=1)
    shown = status.recent(asyncio.run(status.latest_alerts(kafka)), datetime.now(UTC) - since)
    if args.json:
        for alert in shown:
            print(_encoder.encode(alert).decode())
    else:
        print(status.render_alerts(shown))
    return 0


def _tail(args: argparse.Namespace) -> int:

    kafka = _kafka(args)
    run_until_signalled(
        lambda stop: tail(
            kafka,
            args.topic,
            from_beginning=args.from_beginning,
            count=args.count,
            to_end=args.to_end,
            stop=stop,
        )
    )
    return 0


class _Service(NamedTuple):
    module: str
    """Where its `serve(settings, kafka, stop)` lives."""
    settings: type[msgspec.Struct]
    flags: tuple[str, ...]
    """Command-line options that override the settings of the same name."""


_SERVICES = {
    "ingress": _Service(
        "ingest.server", IngressSettings, ("host", "port", "insecure_no_auth", "workers")
    ),
    "normalizer": _Service("normalize.service", NormalizerSettings, ("metrics_port",)),
    "aggregator": _Service(
        "normalize.aggregator", AggregatorSettings, ("metrics_port", "state_dir")
    ),
    "store": _Service("sinks.store", StoreSettings, ("url", "metrics_port")),
    "alerts": _Service("sinks.alerts", AlertSettings, ("rules", "metrics_port")),
    "poll": _Service("ingest.pollers.service", PollSettings, ("metrics_port",)),
}


def _service(args: argparse.Namespace) -> int:
    """Run one service until SIGTERM/SIGINT; its settings section is named after it."""
    spec = _SERVICES[args.command]
    serve = importlib.import_module(spec.module).serve  # each service imports only what it runs
    _service_logging()
    settings = _settings(args)
    kafka = _kafka(args)
    run_until_signalled(lambda stop: serve(settings, kafka, stop))
    return 0


def _settings(args: argparse.Namespace) -> Any:
    spec = _SERVICES[args.command]
    return load(spec.settings, args.command, {flag: getattr(args, flag) for flag in spec.flags})


def _ingress(args: argparse.Namespace) -> int:
    """The ingress: one process, N workers (their parent), or worker I of N."""
    settings = _settings(args)
    if args.worker is None and settings.workers == 1:
        return _service(args)
    _service_logging()
    kafka = _kafka(args)
    if args.worker is None:
        from callstream import ingress_workers  # noqa: PLC0415 - a service imports what it runs

        run_until_signalled(lambda stop: ingress_workers.serve(settings, kafka, stop))
        return 0
    from ingest.server import serve  # noqa: PLC0415
    from ingest.workers import Worker  # noqa: PLC0415

    worker = Worker(args.worker, settings.workers, args.peers)
    run_until_signalled(lambda stop: serve(settings, kafka, stop, worker=worker))
    return 0
