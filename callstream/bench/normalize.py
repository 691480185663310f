"""`callstream bench normalize`: payloads/s of each normalizer on one core, and the baseline ratio.

Each provider's normalizer runs over the same pool of realistic payloads (callstream.samples)
for a fixed time in this one process; the baselines run the plain-Python Wavecell mapping
(callstream.bench.baseline) over the same Wavecell pool, in the same rounds (see `run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from statistics import median

from callstream import samples
from callstream.bench import Target, baseline
from normalize import normalize

TARGETS = (Target("baseline_ratio", at_least=4),)
"""wavecell through normalize() at least 4x the plain-Python mapper (strptime) on one core."""
POOL = 2_000
ROUNDS = 3
_CONTEXT = {"callSerialNo": "645735364434067472"}


def _rate(work: Callable[[bytes], object], pool: list[bytes], seconds: float) -> float:
    """Payloads/s of `work` over `pool`, cycled for `seconds`."""
    done, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for body in pool:
            work(body)
        done += len(pool)
    return done / (time.perf_counter() - started)


def run(seconds: float = 3.0) -> dict[str, float]:
    """Measured rates: `<provider>_per_s` for each provider, then each baseline's rate and ratio.

    `baseline_ratio` compares with the usual strptime mapper, `baseline_isoformat_ratio` with the
    same mapper using the C-implemented datetime.fromisoformat. Each of ROUNDS rounds measures
    every provider and then both baselines for `seconds / ROUNDS` each; a rate is the best of
    its rounds (a noisy neighbour lowers none), a ratio the median of the rounds' own ratios
    (wavecell and the baseline measured seconds apart, under the same neighbours).
    """
    now = datetime.now(UTC)
    pools = {provider: samples.payloads(provider, POOL) for provider in samples.GENERATORS}
    work: dict[str, Callable[[bytes], object]] = {
        provider: lambda body, p=provider: normalize(p, body, received_at=now, context=_CONTEXT)
        for provider in pools
    }
    baselines = {
        "baseline": baseline.strptime_parser,
        "baseline_isoformat": baseline.isoformat_parser,
    }
    for name, parser in baselines.items():
        work[name] = lambda body, p=parser: baseline.wavecell(body, now, p)
    rounds = [
        {
            name: _rate(job, pools.get(name, pools["wavecell"]), seconds / ROUNDS)
            for name, job in work.items()
        }
        for _ in range(ROUNDS)
    ]
    results = {f"{name}_per_s": round(max(r[name] for r in rounds)) for name in pools}
    for name in baselines:
        results[f"{name}_per_s"] = round(max(r[name] for r in rounds))
        results[f"{name}_ratio"] = round(median(r["wavecell"] / r[name] for r in rounds), 2)
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
