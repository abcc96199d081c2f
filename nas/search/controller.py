"""The search controller: composes the parts of a search and runs it to completion, or to an abort.

Why Ray tasks + Optuna ask/tell rather than Ray Tune (``Tuner`` + ``OptunaSearch``):

* the study lives in an Optuna journal file that is appended and fsynced per write, so a killed search loses
  at most the trials that were running; Tune's searcher state is snapshotted periodically instead;
* the driver is the only writer of both the journal and MLflow's SQLite store (both unsafe for parallel
  writers), and it decides exactly once what a finished trial counts as;
* any Optuna multi-objective sampler works unchanged; soft constraints reach it through
  ``Trial.set_constraint`` (Optuna 5's replacement for ``constraints_func``).

The parts, each with one job: :class:`~nas.search.store.StudyStore` (the journal), :class:`~nas.search.policy.AskTell`
(what to try, what a result counts as), :class:`~nas.search.executor.RayExecutor` (running trials),
:func:`~nas.search.reconcile.reconcile` (recovery on start), :class:`~nas.search.tracking.SearchTracker`
(MLflow), :class:`~nas.search.fronts.FrontKeeper` (ranks and hypervolume) and
:class:`~nas.search.live.LiveView` (the terminal). Interrupted trials never count towards ``n_trials``;
failed ones (exception, NaN, out of memory) do.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from ..architecture import Architecture
from ..report import Front, TrialRow, format_table, write_front
from ..spec import LoadedSpec, make_sampler, objective_directions
from .executor import RayExecutor, TrialOutput
from .fronts import FrontKeeper
from .live import LiveView
from .policy import AskTell
from .reconcile import reconcile
from .store import Counts, SearchAborted, SearchPaths, StudyStore, WeightStore, study_front
from .tracking import SearchTracker

if TYPE_CHECKING:
    import optuna

__all__ = ["Controller", "RunningTrial", "SearchOutcome", "run_search", "format_outcome"]


@dataclass(frozen=True)
class RunningTrial:
    trial: "optuna.trial.Trial"
    arch: Architecture
    run_id: str
    started: float


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


class Controller:
    """Runs one search to completion (or to an abort), resumable from its journal at any point."""

    def __init__(self, loaded: LoadedSpec, root: Path | None = None, address: str | None = None, live: bool = True):
        self.spec = loaded.spec
        self.source = Path(loaded.locations.source)
        self.paths = SearchPaths(Path(root or self.spec.search.dir), self.spec.name)
        self.address = address if address is not None else self.spec.search.address
        self.objectives = objective_directions(self.spec)
        self.view = LiveView(self.objectives, self.spec.search.n_trials, live)
        self.weights = WeightStore(self.paths)

    def run(self) -> SearchOutcome:
        started = time.perf_counter()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        store = StudyStore(self.spec, self.paths, self.objectives, make_sampler(self.spec), self.source.read_text())
        tracker = SearchTracker(self.paths.root, experiment=self.spec.name)
        parent_id = tracker.start_search(self.spec.name, self.spec, self.source, _plugin_list(),
                                         store.study.user_attrs.get("mlflow_parent_run_id"))
        store.study.set_user_attr("mlflow_parent_run_id", parent_id)
        lost = reconcile(store, tracker)
        if lost:
            self.view.say(f"resumed: {lost} interrupted trial(s) will run again")
        policy = AskTell(self.spec, store, self.objectives)
        fronts = FrontKeeper(self.spec, self.objectives, store, tracker, self.view)
        fronts.update(log_all=True)

        executor = RayExecutor(self.spec, self.address)
        running: dict[Any, RunningTrial] = {}
        aborted, status = None, "FINISHED"
        n_trials, concurrency = self.spec.search.n_trials, self.spec.search.concurrency
        try:
            while True:
                while len(running) < concurrency and policy.progress.done + len(running) < n_trials:
                    proposal = policy.ask()
                    if proposal is None:  # infeasible or unsampleable: nothing to run, try another
                        continue
                    run_id = tracker.start_trial(proposal.trial.number, proposal.arch.flat(), proposal.arch.summary())
                    proposal.trial.set_user_attr("mlflow_run_id", run_id)
                    running[executor.submit(proposal.arch)] = RunningTrial(proposal.trial, proposal.arch, run_id,
                                                                           time.perf_counter())
                if not running:
                    break
                for ref in executor.wait(list(running), timeout=0.5):
                    job = running.pop(ref)
                    self._collect(policy, tracker, fronts, job, executor.output(ref, job.arch))
                self.view.progress(policy.progress, [(j.trial.number, j.started) for j in running.values()], fronts.hv)
        except SearchAborted as exc:
            aborted, status = str(exc), "FAILED"
            self._interrupt(policy, tracker, executor, running, f"search aborted: {exc}")
        except KeyboardInterrupt:
            aborted, status = "interrupted by the user", "KILLED"
            self._interrupt(policy, tracker, executor, running, "interrupted: the search was stopped (Ctrl-C); it "
                                                                "runs again on resume")
        return self._finish(store, tracker, started, aborted, status)

    def _collect(self, policy: AskTell, tracker: SearchTracker, fronts: FrontKeeper, job: RunningTrial,
                 output: TrialOutput) -> None:
        result, number = output.result, job.trial.number
        if result.status == "ok" and output.weights is not None:  # before the journal says COMPLETE
            self.weights.save(number, output.weights, job.arch.model_dump_json(indent=2))
        told = policy.tell(job.trial, result)
        if told.status != "ok":  # a non-finite objective: failed after all
            self.weights.discard(number)
        tracker.finish_trial(job.run_id, told.status, result.metrics, told.reason, result.curve, result.info)
        self.view.trial(number, job.arch.summary(), told, result)
        if told.status == "ok":
            fronts.update()
        policy.check_failures()

    def _interrupt(self, policy: AskTell, tracker: SearchTracker, executor: RayExecutor,
                   running: dict[Any, RunningTrial], reason: str) -> None:
        """Stop running trials; fail them as interrupted and enqueue them again for the next resume."""
        for ref, job in running.items():
            executor.cancel(ref)
            policy.interrupt(job.trial, reason)
            tracker.kill_trial(job.run_id, reason)
        running.clear()

    def _finish(self, store: StudyStore, tracker: SearchTracker, started: float, aborted: str | None,
                status: str) -> SearchOutcome:
        front, hv, ref = study_front(store.study)
        if front.rows:
            write_front(front, self.paths.front, hv, ref)
            tracker.log_front(self.paths.front)
        if self.spec.search.save_weights:
            for row in front.pareto:
                self._log_model(tracker, row)
        tracker.end_search(status)
        return SearchOutcome(self.spec.name, front, hv, ref, store.counts(), time.perf_counter() - started,
                             tracker.parent_id, self.paths, aborted)

    def _log_model(self, tracker: SearchTracker, row: TrialRow) -> None:
        if row.run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            if self.weights.model_folder(row.number, Path(tmp), self.source.read_text()):
                tracker.log_model(row.run_id, Path(tmp))


def _plugin_list() -> list[dict[str, str]]:
    return [{"kind": e.kind, "name": e.name, "provider": e.provider, "version": e.version} for e in registry.entries()]


def run_search(loaded: LoadedSpec, root: Path | None = None, address: str | None = None,
               live: bool = True) -> SearchOutcome:
    """Run (or resume) the search described by a loaded spec. See :class:`Controller`."""
    return Controller(loaded, root, address, live).run()


def format_outcome(outcome: SearchOutcome) -> str:
    c = outcome.counts
    lines = [
        f"search '{outcome.name}': {c.complete} complete, {c.failed} failed, {c.infeasible} infeasible, "
        f"{c.interrupted} interrupted (re-run) in {outcome.seconds:.0f} s",
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
    return "\n".join(lines)
