"""JSON Schema and JSON documents of the contract, the same bytes on every Python and msgspec
that pyproject.toml allows (msgspec before 0.22 lists the members of an `anyOf` in another order).

Descriptions come from docstrings, whose indentation Python 3.13 strips at compile time and
earlier versions keep: every description is cleaned here (`inspect.cleandoc`) so that the
documents do not depend on the interpreter. Keys are written sorted, so they do not depend on the
order a msgspec version emits them in either.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import msgspec


def json_schema(record: type) -> dict[str, Any]:
    """The JSON Schema of one Struct, descriptions cleaned."""
    return _cleaned(msgspec.json.schema(record))


def json_schema_components(
    records: Iterable[type], ref_template: str
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """`msgspec.json.schema_components`, descriptions cleaned."""
    refs, components = msgspec.json.schema_components(records, ref_template=ref_template)
    return tuple(_cleaned(ref) for ref in refs), _cleaned(components)


def render(document: Any) -> bytes:
    """`document` as indented JSON with sorted keys and a final newline."""
    return msgspec.json.format(msgspec.json.encode(document, order="sorted")) + b"\n"


def _cleaned(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: inspect.cleandoc(item)
            if key == "description" and isinstance(item, str)
            else _cleaned(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value
