"""Coverage-guided fuzzing of normalize() with atheris (libFuzzer), seeded with the golden bodies.

    .venv/bin/python tests/normalize/fuzz_atheris.py -runs=1000000 [libFuzzer flags] [CORPUS_DIR]
    .venv/bin/python tests/normalize/fuzz_atheris.py crash-<sha1>     # replay one input

The first byte of an input picks the provider, the second its context, the rest is the body.
Half of the mutations are libFuzzer's own (bytes), half mutations.py's (JSON structure, edge
values, encodings), so coverage of the adapters guides both. Any exception other than
NormalizeError, or an event the canonical decoder does not read back, is a crash: libFuzzer
stops and writes the input to crash-<sha1>. tests/normalize/test_fuzz.py runs a short round.
"""

from __future__ import annotations

import random
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import atheris
import msgspec
from mutations import mutate, seeds

with atheris.instrument_imports(include=["normalize", "schemas", "callstream"]):
    from normalize import ADAPTERS, NormalizeError, normalize
    from schemas import CallEvent

PROVIDERS = sorted(ADAPTERS)
CONTEXTS = sorted(
    {msgspec.json.encode(seed.context) for p in PROVIDERS for seed in seeds(p)} | {b"{}"}
)
NOW = datetime(2026, 11, 1, tzinfo=UTC)
_events = msgspec.json.Decoder(list[CallEvent])


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    provider = PROVIDERS[data[0] % len(PROVIDERS)]
    context = msgspec.json.decode(CONTEXTS[data[1] % len(CONTEXTS)])
    try:
        events = normalize(provider, data[2:], received_at=NOW, context=context)
    except NormalizeError:
        return
    if _events.decode(msgspec.json.encode(events)) != events:
        raise AssertionError(f"{provider}: events do not read back as canonical events")


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    if seed % 2 or len(data) < 2:
        return atheris.Mutate(data, max_size)
    return (data[:2] + mutate(random.Random(seed), data[2:]))[:max_size]


def seed_corpus(directory: Path) -> None:
    """Every golden body of every provider, with its own context, as a corpus file."""
    for p, provider in enumerate(PROVIDERS):
        for n, seed in enumerate(seeds(provider)):
            context = CONTEXTS.index(msgspec.json.encode(seed.context))
            (directory / f"{provider}-{n}").write_bytes(bytes([p, context]) + seed.body)


def main(argv: list[str]) -> None:
    """Fuzz from the corpus directories given (the first grows) and the golden bodies; or, given
    files (a crash- file), run just those."""
    if any(Path(arg).is_file() for arg in argv[1:]):
        _fuzz(argv)
        return
    with tempfile.TemporaryDirectory(prefix="golden-corpus-") as golden:
        seed_corpus(Path(golden))
        _fuzz([*argv, golden])


def _fuzz(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
