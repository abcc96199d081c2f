"""What a search ended with (:class:`SearchOutcome`) and how it is printed. Plain data: ``nas show`` builds one
from a stored study without importing the machinery of a running search."""

from __future__ import annotations

from dataclasses import dataclass

from ..report import Front, format_table
from .store import Counts, SearchPaths

__all__ = ["SearchOutcome", "format_outcome"]


@dataclass(frozen=True)
class SearchOutcome:
    name: str
    front: Front
    hypervolume: float | None
    reference: list[float] | None
    counts: Counts
    seconds: float
    parent_run_id: str
    paths: SearchPaths
    aborted: str | None = None
    signal: str | None = None  # "SIGINT" or "SIGTERM" when the search was stopped by one
    notes: tuple[str, ...] = ()  # what the user should know (a repaired journal, MLflow offline...)

    @property
    def exit_code(self) -> int:
        """0 done; 1 failed (aborted, or every finished trial failed); 130 / 143 stopped by SIGINT / SIGTERM."""
        if self.signal is not None:
            return 128 + {"SIGINT": 2, "SIGTERM": 15}[self.signal]
        if self.aborted or (self.counts.failed and not self.counts.complete):
            return 1
        return 0


def format_outcome(outcome: SearchOutcome) -> str:
    c = outcome.counts
    lines = [
        f"search '{outcome.name}': {c.complete} complete, {c.stopped} stopped early, {c.failed} failed, "
        f"{c.infeasible} infeasible (never trained), {c.repeats} repeats (not trained again), {c.interrupted} "
        f"interrupted (re-run); {c.steps} training steps in {outcome.seconds:.0f} s",
        f"hypervolume {outcome.hypervolume:.6g} (reference point {outcome.reference})"
        if outcome.hypervolume is not None else "hypervolume: not enough trials yet",
        "",
        "Pareto front:",
        format_table(outcome.front),
        "",
        f"artifacts: {outcome.paths.front}; browse with `nas ui` (MLflow run {outcome.parent_run_id})",
    ]
    if outcome.aborted:
        lines.insert(0, f"ABORTED: {outcome.aborted}")
    if outcome.notes:
        lines += ["", *outcome.notes]
    return "\n".join(lines)
