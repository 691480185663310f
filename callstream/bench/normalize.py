"""`callstream bench normalize`: payloads/s of each normalizer on one core, and the baseline ratio.

Each provider's normalizer runs over the same pool of realistic payloads (callstream.samples)
for a fixed time in this one process; the baselines run the plain-Python Wavecell mapping
(callstream.bench.baseline) over the same Wavecell pool. The best of three rounds is kept,
so a noisy neighbour lowers no figure.
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
_CONTEXT = {"callSerialNo": "645735364434067472"}


def _rate(work: Callable[[bytes], object], pool: list[bytes], seconds: float) -> float:
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


def run(seconds: float = 3.0) -> dict[str, float]:
    """Measured rates: `<provider>_per_s` for each provider, then each baseline's rate and ratio.

    `baseline_ratio` compares with the usual strptime mapper, `baseline_isoformat_ratio` with the
    same mapper using the C-implemented datetime.fromisoformat.
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
        rate = _rate(
            lambda body, p=parser: baseline.wavecell(body, now, p), pools["wavecell"], seconds
        )
        results[f"{name}_per_s"] = round(rate)
        results[f"{name}_ratio"] = round(results["wavecell_per_s"] / rate, 2)
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
