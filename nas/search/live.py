"""The live view of a search in the terminal: one line per finished trial, the front when it changes, and a
progress line when the number done or running changes. Silent when not ``live``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..report import TrialRow
from ..trial import TrialResult

if TYPE_CHECKING:
    from .policy import Progress, Told

__all__ = ["LiveView"]


@dataclass
class LiveView:
    objectives: list[tuple[str, str]]
    n_trials: int
    live: bool = True
    _last: tuple[int, int] | None = None  # (done, running) last printed

    def say(self, line: str) -> None:
        if self.live:
            print(line, flush=True)

    def trial(self, number: int, summary: str, told: "Told", result: TrialResult) -> None:
        figures = (" ".join(f"{m}={result.metrics.get(m, float('nan')):.4g}" for m, _ in self.objectives)
                   if told.status == "ok" else told.reason or "")
        self.say(f"trial {number:>3} {told.status:<10} {summary:<40} " + figures)

    def repeat(self, number: int, of: int, summary: str, told: "Told") -> None:
        self.say(f"trial {number:>3} {'repeat':<10} {summary:<40} the architecture of trial {of} ({told.status}), "
                 "not trained again")

    def front(self, rows: list[TrialRow]) -> None:
        self.say("  front now: " + "; ".join(
            f"#{r.number} {r.summary} (" + ", ".join(f"{m}={v:.3g}" for (m, _), v in zip(self.objectives, r.values))
            + ")" for r in rows))

    def progress(self, progress: "Progress", running: list[tuple[int, float]], hv: float | None) -> None:
        """``running``: (trial number, start time by ``time.perf_counter``) of each running trial."""
        if not self.live:
            return
        key = (progress.done, len(running))
        if self._last == key:
            return
        self._last = key
        now = time.perf_counter()
        names = ", ".join(f"{number} ({now - started:.0f}s)" for number, started in running)
        hv_text = f"{hv:.4g}" if hv is not None else "-"
        print(f"  [{progress.done}/{self.n_trials} done, {len(running)} running, {progress.failed} failed, "
              f"{progress.stopped} stopped early, {progress.infeasible} infeasible, {progress.repeats} repeats] "
              f"hypervolume {hv_text}  running: {names or '-'}", flush=True)
