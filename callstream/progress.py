"""Progress of a one-shot job (replay, redrive): done / total, rate and ETA.

A bar redrawn in place on stderr when it is a terminal; otherwise a structlog line every
`every_s` seconds and one at the end, so logs stay readable when the job runs unattended.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import structlog

log = structlog.get_logger("callstream.progress")

WIDTH = 30


class Progress:
    """Count work done against a total that may become known only after the job started."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        every_s: float = 5.0,
    ) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty()
        self.every_s = every_s
        self.started = self._shown = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._shown >= (0.1 if self.bar else self.every_s):
            self._shown = now
            self._show(final=False)

    def close(self) -> None:
        """The last line: the bar completed (and a newline), or the final log line."""
        self._show(final=True)

    def rate(self) -> float:
        """Units per second since the start."""
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while the total or the rate is unknown."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def _show(self, *, final: bool) -> None:
        eta = self.eta_s()
        if not self.bar:
            log.info(
                f"{self.what}_{'done' if final else 'progress'}",
                done=self.done,
                total=self.total,
                per_s=round(self.rate(), 1),
                eta_s=None if final or eta is None else round(eta),
            )
            return
        total = "?" if self.total is None else str(self.total)
        fraction = self.done / self.total if self.total else (1.0 if final else 0.0)
        filled = round(WIDTH * min(fraction, 1.0))
        line = (
            f"\r{self.what} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{total}"
            f" {self.rate():,.0f}/s ETA {'-' if eta is None else _clock(eta)}"
        )
        self.stream.write(line + ("\n" if final else ""))
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
