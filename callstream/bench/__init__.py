"""Benchmarks behind `callstream bench …`; figures are reported in the README.

A benchmark module has `run(...) -> dict` (flat figures), `report(results) -> str` (a table for
people) and, when it has targets, `TARGETS`: each a figure and the bound it must meet. Targets
are ratios to a baseline measured in the same run wherever one makes sense: the shared machines
this project runs on vary by a quarter or more from day to day, a ratio much less.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    """`figure` must be at least `at_least` and at most `at_most` (either may be absent)."""

    figure: str
    at_least: float | None = None
    at_most: float | None = None

    def met(self, results: Mapping[str, float]) -> bool:
        value = results[self.figure]
        return (self.at_least is None or value >= self.at_least) and (
            self.at_most is None or value <= self.at_most
        )

    def line(self, results: Mapping[str, float]) -> str:
        """`ratio 0.64, target >= 0.6: met`."""
        bounds = [
            f"{sign} {bound:g}"
            for sign, bound in ((">=", self.at_least), ("<=", self.at_most))
            if bound is not None
        ]
        verdict = "met" if self.met(results) else "NOT MET"
        return f"{self.figure} {results[self.figure]:g}, target {' and '.join(bounds)}: {verdict}"


def verdicts(targets: tuple[Target, ...], results: Mapping[str, float]) -> dict[str, bool]:
    """What a JSON report adds to the figures: `targets_met`, when there are targets."""
    return {"targets_met": all(target.met(results) for target in targets)} if targets else {}
