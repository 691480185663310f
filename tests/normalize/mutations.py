"""Hostile variants of real provider payloads: what the normalizer fuzz tests feed it.

The seeds are the golden bodies (tests/golden/<provider>/*.json, the error cases too: they are
real shapes as well) with their contexts. Every mutation is driven by a `random.Random`, so that
hypothesis can drive and shrink it (`st.randoms()`), the service test can replay a fixed seed,
and the atheris harness can derive one from its input.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

GOLDEN = Path(__file__).parent.parent / "golden"
_NOT_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What msgspec raises for a body it cannot decode (normalize.report.Report.decode)."""


class Seed(NamedTuple):
    provider: str
    body: bytes
    context: dict[str, str]


@functools.cache
def seeds(provider: str) -> tuple[Seed, ...]:
    """Every golden body of `provider` with its context."""
    found = []
    for path in sorted((GOLDEN / provider).glob("*.json")):
        if path.name.endswith((".expected.json", ".context.json")):
            continue
        context = path.with_name(path.stem + ".context.json")
        found.append(
            Seed(
                provider,
                path.read_bytes(),
                msgspec.json.decode(context.read_bytes()) if context.exists() else {},
            )
        )
    return tuple(found)


@functools.cache
def _keys() -> tuple[str, ...]:
    """Every object key of every golden body: mutations move them where they do not belong."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.update(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in GOLDEN.glob("*/*.json"):
        try:
            walk(msgspec.json.decode(path.read_bytes()))
        except _NOT_JSON:
            continue
    return tuple(sorted(found))


EDGE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 3, 4602, 4128, 65535, 65536,
    2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30,
    1.5, -0.0, 1e308, -1e308, 5e-324,
    "", " ", "0", "1", "-1", "3", "1e3", "0x10", "1_000", "NaN", "Infinity", "null", "true",
    "false", "NULL", "None", "Completed", "COMPLETED ", "no-answer", "No_Answer", "DELIVRD",
    "UNDELIV", "ACCEPTD", "BRIDGED", "CALLERCANCEL", "Inbound", "VoIP", "in", "out",
    "USER_BUSY", "q850", "2020-06-17T04:08:37Z", "2020-06-17T04:08:37", "2020-06-17 04:08:37",
    "2020-06-17T04:08:37+14:00", "2020-06-17T04:08:37.123456789-12:00", "2020-02-30T00:00:00Z",
    "0000-00-00 00:00:00", "0001-01-01T00:00:00+01:00", "0001-01-01 00:00:00",
    "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59Z", "1621823865", "1621823865000",
    "-62135596800", "253402300800", "99999999999999999999", "\u00e9", "\U0001f600",
    "\u202e", "\ufeff", "\u0000", "x" * 5_000, [], {}, [[[]]], {"": None}, [None], {"id": ""},
)  # fmt: skip
"""JSON values at the edges of what the adapters read: extreme numbers and times, status
words in odd spellings, empty and odd strings, empty containers."""

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_ENCODINGS = ("utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252")
_TOKENS = (b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"null", b"-", b"e9", b"\x00")


def mutate(rng: random.Random, body: bytes) -> bytes:
    """`body` changed a few times: in its JSON structure where it is JSON, else in its bytes."""
    for _ in range(rng.randint(1, 3)):
        body = _structural(rng, body) if rng.random() < 0.6 else _bytewise(rng, body)
    return body


def mutate_context(rng: random.Random, context: dict[str, str]) -> dict[str, str]:
    """`context` mostly as it is; sometimes a key dropped or set to an odd value."""
    changed = dict(context)
    if rng.random() < 0.2 and changed:
        del changed[rng.choice(sorted(changed))]
    if rng.random() < 0.2:
        key = rng.choice(["callSerialNo", "reason_table", "account", "client_id"])
        changed[key] = rng.choice(["", "q850", "default", "x", "645735364434067472", "\u00e9"])
    return changed


def _structural(rng: random.Random, body: bytes) -> bytes:
    try:
        doc = msgspec.json.decode(body)
    except _NOT_JSON:
        return _bytewise(rng, body)
    return msgspec.json.encode(_node(rng, doc))


def _node(rng: random.Random, node: Any) -> Any:
    """Walk down a random path and replace, drop, retype or add what is found there."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(sorted(node))
        action = rng.choice(["descend", "descend", "delete", "replace", "add"])
        if action == "delete":
            del node[key]
        elif action == "replace":
            node[key] = _value(rng)
        elif action == "add":
            node[rng.choice(_keys())] = _value(rng)
        else:
            node[key] = _node(rng, node[key])
        return node
    if isinstance(node, list) and node and rng.random() < 0.7:
        index = rng.randrange(len(node))
        if rng.random() < 0.2:
            node.insert(index, node[index])  # a duplicated element
        else:
            node[index] = _node(rng, node[index])
        return node
    return _retyped(rng, node) if rng.random() < 0.3 else _value(rng)


def _retyped(rng: random.Random, value: Any) -> Any:
    """The same value in another JSON type: a number as a string, a string as a list, ..."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int | float):
        return rng.choice([str(value), [value], float(value), -value])
    if isinstance(value, str):
        return rng.choice([[value], {value: value}, value.upper(), value[: len(value) // 2]])
    return rng.choice([[value], str(value)])


def _value(rng: random.Random, depth: int = 0) -> Any:
    """An edge value, or a small random JSON value."""
    if rng.random() < 0.7 or depth > 2:
        return rng.choice(EDGE_VALUES)
    if rng.random() < 0.5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(_keys()): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _bytewise(rng: random.Random, body: bytes) -> bytes:
    """One byte-level change: truncation, a changed, inserted or deleted span, another text
    encoding or a byte-order mark, deep nesting."""
    at = rng.randint(0, len(body))
    head, tail = body[:at], body[at:]
    match rng.randrange(8):
        case 0:
            tail = b""
        case 1:
            tail = bytes([rng.randrange(256)]) + tail[1:]
        case 2:
            tail = rng.choice(_TOKENS) + tail
        case 3:
            tail = tail[rng.randint(1, 16) :]
        case 4:
            tail = tail[: rng.randint(1, 64)] + tail
        case 5:
            text = body.decode("utf-8", "replace").replace('"', '"\u00e9', 1)
            head, tail = b"", text.encode(rng.choice(_ENCODINGS), "replace")
        case 6:
            head, tail = rng.choice(_BOMS), body
        case _:  # the value after a colon nested deeply, the old value under another key
            colon = body.find(b":", at) + 1 or len(body)
            depth = rng.choice([10, 100, 1_000, 100_000])
            head = body[:colon] + b"[" * depth + b"]" * depth + b',"_":'
            tail = body[colon:]
    return head + tail


_HEADER_VALUES: tuple[bytes | None, ...] = (
    None, b"", b"\xff\xfe", b"wavecell", b"vpbx", b"nope", b"2026-11-01T12:00:00",
    b"2026-11-01T12:00:00+14:00", b"0001-01-01T00:00:00+01:00", b'2026-11-01T12:00:00Z"',
    b"{}", b"[]", b"null", b'{"callSerialNo": 1}', b'{"callSerialNo": "7"}',
    b'{"a":' + b"[" * 2_000, b"x" * 10_000,
)  # fmt: skip
"""Header values a raw record should not carry: null, empty, not UTF-8, naive or extreme times,
contexts of the wrong shape."""


def mutate_headers(
    rng: random.Random, headers: list[tuple[str, bytes]]
) -> list[tuple[str, bytes | None]]:
    """`headers` with one to three of them dropped, set to an odd value, or repeated."""
    changed: list[tuple[str, bytes | None]] = list(headers)
    for _ in range(rng.randint(1, 3)):
        if not changed:
            break
        index = rng.randrange(len(changed))
        name = changed[index][0]
        match rng.randrange(3):
            case 0:
                del changed[index]
            case 1:
                changed[index] = (name, rng.choice(_HEADER_VALUES))
            case _:  # a repeated header: the later one wins
                changed.append((name, rng.choice(_HEADER_VALUES)))
    return changed
