"""The live view of a search in the terminal.

On a terminal: one live display (rich) at the bottom with the counts of the search (done, running, failed and
every other count :class:`~nas.search.policy.Progress` keeps), the hypervolume, an estimate of the time left and
the running trials; finished trials and changes of the front scroll above it. Elsewhere (CI logs, a pipe):
plain lines, one per finished trial with the counts, and one when the front changes. Silent when not ``live``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..report import TrialRow
from ..trial import TrialResult

if TYPE_CHECKING:
    from .policy import Progress, Told

__all__ = ["LiveView", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h20m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class LiveView:
    objectives: list[tuple[str, str]]
    n_trials: int
    live: bool = True
    tty: bool | None = None  # a rich live display; default: whether stdout is a terminal
    _started: float | None = None
    _done_at_start: int = 0
    _counts: dict[str, int] = field(default_factory=dict)
    _running: list[tuple[int, float]] = field(default_factory=list)
    _hv: float | None = None
    _live: Any = None  # the rich Live display, while it runs
    _pending: list[str] = field(default_factory=list)  # plain output: lines waiting for the counts after them

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = self.live and sys.stdout.isatty()

    def say(self, line: str) -> None:
        if not self.live:
            return
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def trial(self, number: int, summary: str, told: "Told", result: TrialResult) -> None:
        figures = (" ".join(f"{m}={result.metrics.get(m, float('nan')):.4g}" for m, _ in self.objectives)
                   if told.status == "ok" else told.reason or "")
        self._emit(f"trial {number:>3} {told.status:<10} {summary:<40} {figures}")

    def repeat(self, number: int, of: int, summary: str, told: "Told") -> None:
        self._emit(f"trial {number:>3} {'repeat':<10} {summary:<40} the architecture of trial {of} ({told.status}), "
                 "not trained again")

    def front(self, rows: list[TrialRow]) -> None:
        self._emit("  front now: " + "; ".join(
            f"#{r.number} {r.summary} (" + ", ".join(f"{m}={v:.3g}" for (m, _), v in zip(self.objectives, r.values))
            + ")" for r in rows))

    def _emit(self, line: str) -> None:
        """A line about a finished trial: at once above the live display; in plain output, once the counts after
        it are known (the first line of each trial then ends with them)."""
        if self.tty:
            self.say(line)
        elif self.live:
            self._pending.append(line)

    def progress(self, progress: "Progress", running: list[tuple[int, float]], hv: float | None) -> None:
        """Called after every step of the search loop. ``running``: (trial number, start time by
        ``time.perf_counter``) of each running trial."""
        if not self.live:
            return
        now = time.perf_counter()
        if self._started is None:
            self._started, self._done_at_start = now, progress.done
        self._counts = {k: v for k, v in dataclasses.asdict(progress).items()
                        if isinstance(v, int) and not k.startswith("consecutive")}
        self._running, self._hv = running, hv
        if self.tty:
            self._show()
        else:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pending[0] += f"  [{self.status_line()}]"
            print("\n".join(self._pending), flush=True)
            self._pending.clear()

    def eta(self) -> float | None:
        """Seconds left at this run's pace so far (None before a trial finished in it)."""
        done = self._counts.get("done", 0)
        finished_here = done - self._done_at_start
        if self._started is None or finished_here <= 0:
            return None
        return (time.perf_counter() - self._started) / finished_here * max(0, self.n_trials - done)

    def status_line(self) -> str:
        """``4/20 done, 2 running, 0 failed, 1 infeasible; hypervolume 0.158; about 1m20s left``."""
        counts = dict(self._counts)
        parts = [f"{counts.pop('done', 0)}/{self.n_trials} done", f"{len(self._running)} running"]
        parts += [f"{v} {k.replace('_', ' ')}" for k, v in counts.items()]
        hv = f"{self._hv:.4g}" if self._hv is not None else "-"
        eta = self.eta()
        left = f"about {format_duration(eta)} left" if eta is not None else "time left: after the first trial"
        return f"{', '.join(parts)}; hypervolume {hv}; {left}"

    def _show(self) -> None:
        from rich.live import Live
        from rich.text import Text

        now = time.perf_counter()
        text = Text(self.status_line(), style="bold")
        if self._running:
            text.append("\nrunning: " + ", ".join(f"trial {n} ({format_duration(now - t)})" for n, t in self._running),
                        style="dim")
        if self._live is None:
            self._live = Live(text, refresh_per_second=2, transient=True)
            self._live.start()
        else:
            self._live.update(text)

    def close(self) -> None:
        """Stop the live display, or print what waits (before the final summary is printed)."""
        self._flush()
        if self._live is not None:
            self._live.stop()
            self._live = None
