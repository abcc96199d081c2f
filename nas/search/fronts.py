"""The front while a search runs: Pareto ranks as MLflow tags, a fixed reference point, the hypervolume
after every finished trial, and the front as the parent run's description."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..pareto import hypervolume, to_minimize
from ..report import TrialRow, compute_front
from ..spec import Spec
from .live import LiveView
from .store import StudyStore, natural_reference, study_rows
from .tracking import SearchTracker

__all__ = ["FrontKeeper"]


@dataclass
class FrontKeeper:
    spec: Spec
    objectives: list[tuple[str, str]]
    store: StudyStore
    tracker: SearchTracker
    view: LiveView
    hv: float | None = None
    ranks: dict[int, int | None] = field(default_factory=dict)  # last logged pareto_rank by trial number

    def update(self, log_all: bool = False) -> None:
        """Recompute the front from the study; log what changed (all of it with ``log_all``, on resume)."""
        rows = study_rows(self.store.study)
        if not rows:
            return
        directions = [d for _, d in self.objectives]
        front = compute_front(self.objectives, rows)
        before = {n for n, r in self.ranks.items() if r == 0}
        for row, rank in zip(front.rows, front.ranks):
            kept = rank if rank >= 0 else None
            if row.number in self.tracker.runs and (log_all or self.ranks.get(row.number, -2) != kept):
                self.tracker.set_pareto(row.number, kept)
                self.ranks[row.number] = kept
        if {r.number for r in front.pareto} != before:
            self.view.front(front.pareto)
        self._hypervolume(rows, directions)
        self.tracker.describe(front, self.hv, self.store.study.user_attrs.get("reference_point"))

    def _hypervolume(self, rows: list[TrialRow], directions: list[str]) -> None:
        study = self.store.study
        feasible = [r.values for r in rows if r.feasible]
        ref = study.user_attrs.get("reference_point")
        if ref is None and self.spec.search.reference_point is not None:
            ref = [self.spec.search.reference_point[m] for m, _ in self.objectives]
            study.set_user_attr("reference_point", ref)
        if ref is None and len(feasible) >= 2:  # derived once, then fixed, so hypervolume steps compare
            ref = natural_reference(feasible, directions)
            study.set_user_attr("reference_point", ref)
        if ref is not None and feasible:
            self.hv = hypervolume(to_minimize(feasible, directions), to_minimize([ref], directions)[0])
            self.tracker.log_hypervolume(self.hv, step=len(rows))
