"""What every adapter shares: the report being normalized and the one canonical event builder."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any, TypeVar

import msgspec

from foundation.errors import NormalizeError
from schemas import (
    EVENT_SCHEMA,
    FINAL_STATUSES,
    CallEvent,
    Cause,
    Direction,
    HangupBy,
    Leg,
    Network,
    RawRef,
    Source,
    Status,
    session_key,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")

MAX_SECONDS = 604_800
"""The longest duration a real call reports, in seconds: seven days (contract 1.1)."""
MAX_ID_CHARS = 256
"""The longest session_id, call_id, account or job_id a real call has."""
EARLIEST = _EPOCH
"""No call happened before 1970: an earlier time is a zero, a sign or a unit gone wrong."""
AHEAD = timedelta(hours=24)
"""How far past its receipt a report's times may be: a provider's clock may be off, not by days."""
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""What ids and numbers may not hold: C0 and C1 control characters (with DEL), which rewrite a
terminal or a log line, and bidirectional overrides, which make text read as something else."""
_BIDI_OVERRIDES = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_IDS = frozenset({"session_id", "call_id", "account", "job_id"})

FieldPaths = Mapping[str, str]
"""Where an adapter reads the fields that `call_event` checks: canonical field name → the
provider's path to it, as an error names it. A path starting with `.` is relative to the event's
own (`at`): `.duration` under `$.details.callB`; any other is whole: `$.sessionId`,
`context.account`. A field missing from the mapping is named by its canonical name."""

_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`", re.IGNORECASE)
_SHAPE_REASONS = [  # msgspec's wording → ours; the first that matches wins
    (re.compile(r"^expected `[^`]*`, got `", re.IGNORECASE), "wrong type"),
    (re.compile(r"^expected `[^`]*`.*(<|>|length)", re.IGNORECASE), "out of range"),
    (re.compile(r"datetime|RFC ?3339", re.IGNORECASE), "not an RFC 3339 time"),
    (re.compile(r"unknown field", re.IGNORECASE), "unknown field"),
]


class Report(msgspec.Struct, frozen=True, gc=False):
    """One raw report as received: whose it is and what came with it besides the body.

    `context` carries what the body does not say itself (the callSerialNo a poller asked about,
    an account configured for a webhook route); `raw` is where the report is stored in Kafka.
    A Struct, not a dataclass: one is made per raw record, and a frozen dataclass costs ~0.6 µs.
    """

    provider: str
    source: Source
    received_at: datetime
    context: Mapping[str, str]
    raw: RawRef | None = None
    plain: bool = False
    """True when no string of the body or the context can hold a character that `call_event`
    refuses in an id or a number (`plain_text`), so that it need not read their characters.
    Adapters take every id and number from the body or the context (or from a JSON number)."""

    def invalid(self, path: str, reason: str, detail: str = "") -> NormalizeError:
        return NormalizeError(self.provider, path, reason, detail)

    def decode(self, decoder: msgspec.json.Decoder[T], body: bytes) -> T:
        """`decoder.decode(body)`; raises NormalizeError, in callstream's words, for every way a
        hostile body fails it (msgspec's own text follows as detail).

        Besides DecodeError and ValidationError, msgspec may raise UnicodeDecodeError for invalid
        UTF-8 in a string, ValueError for epoch seconds past year 9999, and RecursionError for
        nesting deeper than the interpreter's recursion limit.
        """
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise self._not_of_shape(str(exc)) from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise self._undecodable(body, str(exc)) from exc
        except ValueError as exc:
            raise self.invalid("$", "a time is out of range", str(exc).strip()) from exc
        except RecursionError as exc:
            raise self.invalid("$", "nested too deeply") from exc

    def _undecodable(self, body: bytes, detail: str) -> NormalizeError:
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            return self.invalid("$", "not valid UTF-8", f"{exc.reason} at byte {exc.start}")
        return self.invalid("$", "not valid JSON", detail)

    def _not_of_shape(self, message: str) -> NormalizeError:
        """A ValidationError's `Reason - at `$.path`` as a field path and one of our reasons."""
        detail, at, path = message.rpartition(" - at `")
        path = path.rstrip("`") if at else "$"
        detail = detail if at else message
        if missing := _MISSING_FIELD.search(detail):
            return self.invalid(f"{path}.{missing[1]}", "required field is missing", detail)
        for pattern, reason in _SHAPE_REASONS:
            if pattern.search(detail):
                return self.invalid(path, reason, detail)
        return self.invalid(path, "invalid value", detail)

    def require(self, key: str) -> str:
        """A context value the adapter cannot work without."""
        value = self.context.get(key)
        if not value:
            raise self.invalid(f"context.{key}", "required context is missing")
        return value


def plain_text(body: bytes, context: Mapping[str, str]) -> bool:
    """Whether no string of a report's JSON `body` and `context` can hold a character that ids
    and numbers may not (`_FORBIDDEN`), as four memchr()s over the body can tell.

    JSON allows no raw C0 control in a string; any other such character is either escaped (a
    backslash: `\\u202e`, `\\n`) or in UTF-8, where DEL is 0x7F, a C1 control 0xC2 0x80-0x9F
    and a bidirectional override 0xE2 0x80 0xAA-0xAE or 0xE2 0x81 0xA6-0xA9. A body without the
    bytes `\\`, 0x7F, 0xC2 and 0xE2 (most: ASCII, unescaped) has none in any string. The bytes
    are given as ints: `in` is then a plain memchr(), ~8x quicker than for a one-byte bytes.
    """
    if 0x5C in body or 0x7F in body or 0xC2 in body or 0xE2 in body:
        return False
    for value in context.values():  # noqa: SIM110 - all() of a generator costs ~0.2 µs more
        if not value.isprintable():
            return False
    return True


def event_id(provider: str, key: str, call_id: str, leg: str | None, status: Status) -> str:
    """Deterministic id of one reported state of one call leg.

    It hashes who the leg is and which state was reported, nothing about when it was received or
    how it was mapped otherwise: a provider retry, a second poll of the same state or a replay
    gives the same id, a new state of the same leg a new one.
    """
    material = "\x1f".join((provider, key, call_id, leg or "", status))
    return sha256(material.encode()).hexdigest()[:32]


def call_event(  # noqa: PLR0917 - who and which state in order, see below
    report: Report,
    at: str,
    paths: FieldPaths,
    account: str | None,
    session_id: str,
    call_id: str,
    leg: Leg | None,
    status: Status,
    /,
    *,
    final: bool | None = None,
    direction: Direction | None = None,
    network: Network | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    from_country: str | None = None,
    to_country: str | None = None,
    cause: Cause | None = None,
    hangup_by: HangupBy | None = None,
    initiated_at: datetime | None = None,
    ringing_at: datetime | None = None,
    answered_at: datetime | None = None,
    ended_at: datetime | None = None,
    duration_s: int | None = None,
    billed_s: int | None = None,
    reported_at: datetime | None = None,
    bridged_s: int | None = None,
    job_id: str | None = None,
) -> CallEvent:
    """Build a canonical event; derives the key, id, finality and occurred_at the same way for all.

    Who the leg is and which state it reports (what the key and the id are made of) are given
    in order, the rest by name. A call with more than 30 slots (a positional argument takes one,
    a keyword two) is compiled by CPython into building and unpacking a dict of its keywords,
    ~0.65 µs more per event: adapters keep within that (three of them use all 30).

    `final` defaults to whether `status` always ends a call or is `unknown`, which adapters
    report only as an outcome (pass False for an `unknown` state that is not one);
    `reported_at` is when the provider says it produced the report, used for `occurred_at` when
    the reported state has no time of its own.

    Raises NormalizeError for a value no real call has (contract 1.1, plausible values): seconds
    outside 0 to MAX_SECONDS, a time (received_at included) before EARLIEST or more than AHEAD
    after the report was received, an id longer than MAX_ID_CHARS, an id or number holding a
    control character or a bidirectional override. The error names the provider's path to the
    value: `at` is where the event's own fields are in the report, `paths` where each checked
    field is (FieldPaths).
    """
    # The rule is `_implausible`'s; this is a quick test that lets through only what it accepts
    # (a `plain` report holds no character of _FORBIDDEN, and isprintable() is false for each of
    # them and a few more), so that a plausible event, nearly every one, costs no call.
    received_at = report.received_at
    latest = received_at + AHEAD
    if not (
        received_at >= EARLIEST
        and (initiated_at is None or EARLIEST <= initiated_at <= latest)
        and (ringing_at is None or EARLIEST <= ringing_at <= latest)
        and (answered_at is None or EARLIEST <= answered_at <= latest)
        and (ended_at is None or EARLIEST <= ended_at <= latest)
        and (reported_at is None or EARLIEST <= reported_at <= latest)
        and (duration_s is None or 0 <= duration_s <= MAX_SECONDS)
        and (billed_s is None or 0 <= billed_s <= MAX_SECONDS)
        and (bridged_s is None or 0 <= bridged_s <= MAX_SECONDS)
        and len(session_id) <= MAX_ID_CHARS
        and len(call_id) <= MAX_ID_CHARS
        and (account is None or len(account) <= MAX_ID_CHARS)
        and (job_id is None or len(job_id) <= MAX_ID_CHARS)
        and (
            report.plain
            or (
                session_id.isprintable()
                and call_id.isprintable()
                and (account is None or account.isprintable())
                and (job_id is None or job_id.isprintable())
                and (from_number is None or from_number.isprintable())
                and (to_number is None or to_number.isprintable())
            )
        )
    ):
        error = _implausible(
            report,
            at,
            paths,
            latest,
            {
                "received_at": received_at,
                "session_id": session_id, "call_id": call_id, "account": account,
                "job_id": job_id, "from_number": from_number, "to_number": to_number,
                "initiated_at": initiated_at, "ringing_at": ringing_at,
                "answered_at": answered_at, "ended_at": ended_at, "reported_at": reported_at,
                "duration_s": duration_s, "billed_s": billed_s, "bridged_s": bridged_s,
            },
        )  # fmt: skip
        if error is not None:
            raise error
    provider = report.provider
    key = session_key(provider, account, session_id)
    if final is None:
        final = status in FINAL_STATUSES or status is Status.UNKNOWN
    if final:
        state_time = ended_at
    elif status is Status.IN_PROGRESS:
        state_time = answered_at
    elif status is Status.RINGING:
        state_time = ringing_at
    else:
        state_time = initiated_at
    return CallEvent(
        EVENT_SCHEMA,
        event_id(provider, key, call_id, leg, status),
        provider,
        account,
        session_id,
        key,
        call_id,
        leg,
        direction,
        network,
        from_number,
        to_number,
        from_country,
        to_country,
        status,
        final,
        cause,
        hangup_by,
        initiated_at,
        ringing_at,
        answered_at,
        ended_at,
        duration_s,
        billed_s,
        state_time or reported_at or received_at,
        received_at,
        report.source,
        report.raw,
        bridged_s,
        job_id,
    )


def _implausible(
    report: Report, at: str, paths: FieldPaths, latest: datetime, values: dict[str, Any]
) -> NormalizeError | None:
    """The rule of plausible values (see `call_event`): the error for the first of `values`
    (canonical field → value) that no real call has, or None when every one is plausible."""
    for field, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            reason = _time_reason(value, latest)
        elif isinstance(value, int):
            reason = (
                None
                if 0 <= value <= MAX_SECONDS
                else f"{value} is outside 0 to {MAX_SECONDS} seconds"
            )
        else:
            reason = _text_reason(value, field in _IDS)
        if reason is not None:
            path = paths.get(field, field)
            return report.invalid(at + path if path.startswith(".") else path, reason)
    return None


def _time_reason(moment: datetime, latest: datetime) -> str | None:
    if moment < EARLIEST:
        return f"{_rfc3339(moment)} is before {_rfc3339(EARLIEST)}"
    if moment > latest:
        ahead = f"{AHEAD // timedelta(hours=1)} h after the report was received"
        return f"{_rfc3339(moment)} is after {_rfc3339(latest)}, {ahead}"
    return None


def _text_reason(value: str, is_id: bool) -> str | None:
    if is_id and len(value) > MAX_ID_CHARS:
        return f"longer than {MAX_ID_CHARS} characters ({len(value)})"
    if found := _FORBIDDEN.search(value):
        what = "bidirectional override" if found[0] in _BIDI_OVERRIDES else "control character"
        return f"holds {what} U+{ord(found[0]):04X}"
    return None


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def utc(report: Report, path: str, field: str, moment: datetime | None) -> datetime | None:
    """The same instant in UTC; a time without an offset is taken as UTC (providers send GMT).

    Raises NormalizeError at `path`.`field` for a time whose UTC instant is outside year 1 to
    9999. (Two parts, joined only then: this runs for every time of every event.)
    """
    if moment is None or moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        detail = f"{moment.isoformat()} is out of range in UTC"
        raise report.invalid(f"{path}.{field}", detail) from None


def from_epoch_ms(report: Report, path: str, millis: int | str | None) -> datetime | None:
    """Epoch milliseconds, given as a number or a numeric string; '' or null means unknown."""
    if millis is None or millis == "":
        return None
    try:
        return _EPOCH + timedelta(milliseconds=int(millis))
    except (ValueError, OverflowError):
        raise report.invalid(path, f"expected epoch milliseconds, got {millis!r}") from None


def from_epoch_s(report: Report, path: str, value: float | str | None) -> datetime | None:
    """Epoch seconds (a number or a numeric string) or an RFC 3339 time; null means unknown.

    Read here rather than by msgspec so that a time out of range is reported, with its field
    path, in the same words on every msgspec version.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return _iso_time(report, path, value)
    except OverflowError:  # an integer past float's range, some 309 digits
        seconds = math.inf
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        raise report.invalid(path, f"epoch seconds out of range: {value!r}") from None


def _iso_time(report: Report, path: str, value: float | str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise report.invalid(path, "expected epoch seconds or an RFC 3339 time") from None
    field = path.rpartition(".")
    return utc(report, field[0], field[2], moment) or moment


def word(text: str) -> str:
    """A status word folded for lookup: case, spaces, '_' and '-' do not matter."""
    return text.upper().replace(" ", "").replace("_", "").replace("-", "")


def lookup(table: dict[str, T], raw: str) -> T | None:
    """`table[word(raw)]`, trying `raw` as it is first: most reports use one spelling."""
    found = table.get(raw)
    return found if found is not None else table.get(word(raw))


def folded(table: dict[str, T]) -> dict[str, T]:
    """A lookup table keyed by folded words, also keyed by the upper, lower and title spellings."""
    spellings = {}
    for key, value in table.items():
        for spelling in (key, key.lower(), key.title()):
            spellings[spelling] = value
    return spellings | {word(key): value for key, value in table.items()}


def text(value: str | None) -> str | None:
    """A provider string with '' read as absent."""
    return value or None


@dataclass(frozen=True, slots=True)
class Adapter:
    """One provider's decoder: raw body bytes + report → canonical events.

    `decode` is pure and raises NormalizeError, and nothing else, for a report it cannot read.
    An empty list means a valid report that holds no calls.
    """

    name: str
    source: Source
    decode: Callable[[bytes, Report], list[CallEvent]]
