"""`callstream bench normalize`: payloads/s of each normalizer on one core, and the baseline ratio.

Each provider's normalizer runs over the same pool of realistic payloads (callstream.samples)
for a fixed time in this one process; the baselines run the plain-Python Wavecell mapping
(callstream.bench.baseline) over the same Wavecell pool, taking turns with Wavecell's
normalizer every few milliseconds. A provider's rate is the best of three rounds, so a noisy
neighbour lowers none; a ratio is of two rates measured together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from callstream import samples
from callstream.bench import Target, baseline
from normalize import normalize

TARGETS = (Target("baseline_ratio", at_least=4),)
"""wavecell through normalize() at least 4x the plain-Python mapper (strptime) on one core."""
POOL = 2_000
ROUNDS = 3
SLICE = 100
"""Payloads each side of a pair handles before the other's turn."""
_CONTEXT = {"callSerialNo": "645735364434067472"}


def _rate(work: Callable[[bytes], object], pool: list[bytes], seconds: float) -> float:
    """Payloads/s of `work` over `pool`: the best of ROUNDS rounds, `seconds` in all."""
    best = 0.0
    for _ in range(ROUNDS):
        done, started = 0, time.perf_counter()
        deadline = started + seconds / ROUNDS
        while time.perf_counter() < deadline:
            for body in pool:
                work(body)
            done += len(pool)
        best = max(best, done / (time.perf_counter() - started))
    return best


def _paired(
    ours: Callable[[bytes], object],
    theirs: Callable[[bytes], object],
    pool: list[bytes],
    seconds: float,
) -> tuple[float, float]:
    """Payloads/s of `ours` and `theirs` over `pool`, taking turns every SLICE payloads for
    `seconds` in all: both run under the same neighbours, milliseconds apart."""
    spent, done = [0.0, 0.0], 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for start in range(0, len(pool), SLICE):
            part = pool[start : start + SLICE]
            for side, work in enumerate((ours, theirs)):
                began = time.perf_counter()
                for body in part:
                    work(body)
                spent[side] += time.perf_counter() - began
            done += len(part)
    return done / spent[0], done / spent[1]


def run(seconds: float = 3.0) -> dict[str, float]:
    """Measured rates: `<provider>_per_s` for each provider, then each baseline's rate and ratio.

    `baseline_ratio` compares with the usual strptime mapper, `baseline_isoformat_ratio` with the
    same mapper using the C-implemented datetime.fromisoformat; each baseline takes turns with
    wavecell's normalizer (`_paired`), so that the ratio is of two rates measured together.
    """
    now = datetime.now(UTC)
    results: dict[str, float] = {}
    pools = {provider: samples.payloads(provider, POOL) for provider in samples.GENERATORS}
    for provider, pool in pools.items():
        results[f"{provider}_per_s"] = round(
            _rate(
                lambda body, p=provider: normalize(p, body, received_at=now, context=_CONTEXT),
                pool,
                seconds,
            )
        )
    for name, parser in (
        ("baseline", baseline.strptime_parser),
        ("baseline_isoformat", baseline.isoformat_parser),
    ):
        ours, theirs = _paired(
            lambda body: normalize("wavecell", body, received_at=now, context=_CONTEXT),
            lambda body, p=parser: baseline.wavecell(body, now, p),
            pools["wavecell"],
            seconds,
        )
        results[f"{name}_per_s"] = round(theirs)
        results[f"{name}_ratio"] = round(ours / theirs, 2)
    return results


def report(results: dict[str, float]) -> str:
    lines = [f"{'normalizer':<24}{'payloads/s':>12}"]
    lines += [
        f"{name.removesuffix('_per_s'):<24}{value:>12,.0f}"
        for name, value in results.items()
        if name.endswith("_per_s")
    ]
    lines.append(f"wavecell vs baseline (strptime): {results['baseline_ratio']:.2f}x")
    lines.append(
        f"wavecell vs baseline (fromisoformat): {results['baseline_isoformat_ratio']:.2f}x"
    )
    return "\n".join(lines)
