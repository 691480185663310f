"""Text for people: what a terminal would act on instead of showing is escaped.

A session id, a number, a dead letter's reason or a header comes from a provider, so it may
hold anything: ESC sequences that recolour or clear a terminal, a carriage return that makes a
line overwrite itself, a line feed that forges a table row or a log line, bidirectional
overrides that show text in another order than it is stored (U+202E). Every table and the
console log print such text through `printable`; JSON output stays JSON (its encoder escapes
the C0 controls, and a JSON reader is not a terminal).
"""

from __future__ import annotations

import re

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""Arabic letter mark, LRM, RLM, the embeddings and overrides (LRE, RLE, PDF, LRO, RLO) and
the isolates (LRI, RLI, FSI, PDI)."""
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
"""C0 controls, DEL, C1 controls, the line and paragraph separators, bidi controls."""
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, *, keep: str = "") -> str:
    """`text` with every control character escaped: `\\x1b`, `\\x07`, `\\r`, `\\n`, `\\t`,
    `\\u202e`. Characters in `keep` (e.g. "\\n\\t" for a body shown on several lines) stay.

    Backslashes are left alone: `\\x1b` on screen is either an escaped ESC or those four
    characters as sent, and neither can act on the terminal.
    """
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)
    return _UNSAFE.sub(_escape, text)
