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

import dataclasses
import json
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from ..architecture import Architecture
from ..report import TrialRow, write_front
from ..saved import TASK
from ..spec import LoadedSpec, make_sampler, objective_directions
from .executor import RayExecutor, TrialOutput
from .fronts import FrontKeeper
from .live import LiveView
from .outcome import SearchOutcome
from .policy import AskTell
from .reconcile import reconcile
from .store import SearchAborted, SearchLock, SearchPaths, StudyStore, WeightStore, study_front
from .stopping import RungBoard, rung_steps
from .tracking import SearchTracker
from .verify import verify_front

if TYPE_CHECKING:
    import optuna

__all__ = ["Controller", "RunningTrial", "run_search"]


@dataclass
class RunningTrial:
    trial: "optuna.trial.Trial"
    arch: Architecture
    started: float
    key: str = ""  # the architecture's canonical key (:func:`~nas.search.policy.architecture_key`)
    attempt: int = 1  # runs again (attempt + 1) when its worker process dies, up to search.retries times
    overlapped: bool = False  # another trial ran while this one was measured: its latency may be noisy


class Stopped(Exception):
    """SIGINT (Ctrl-C) or SIGTERM (``kill``, systemd, a batch scheduler) asked the search to stop."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """While the search loop runs, SIGINT and SIGTERM only note that a stop was asked for; the loop stops at
    its next safe point (at most half a second later), never in the middle of a journal or MLflow write. A
    second Ctrl-C interrupts at once. Signals can only be handled in the main thread; elsewhere nothing
    changes."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.requested = signal.Signals(signum).name

    def check(self) -> None:
        if self.requested is not None:
            raise Stopped(self.requested)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Controller:
    """Runs one search to completion (or to an abort), resumable from its journal at any point."""

    def __init__(self, loaded: LoadedSpec, root: Path | None = None, address: str | None = None, live: bool = True,
                 tracking_uri: str | None = None):
        self.spec = loaded.spec
        self.source = Path(loaded.locations.source)
        self.paths = SearchPaths(Path(root or self.spec.search.dir), self.spec.name)
        self.address = address if address is not None else self.spec.search.address
        self.tracking_uri = tracking_uri
        self.objectives = objective_directions(self.spec)
        self.view = LiveView(self.objectives, self.spec.search.n_trials, live)
        self.weights = WeightStore(self.paths)
        self.notes: list[str] = []
        self.exhausted = False  # the sampler only repeats itself (search.max_consecutive_repeats)

    def _note(self, line: str) -> None:
        self.notes.append(line)
        self.view.say(line)

    def run(self) -> SearchOutcome:
        """Run under the search's lock: a second process on the same search is refused (:class:`SearchRefused`)."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        lock = SearchLock(self.paths)
        lock.acquire()
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> SearchOutcome:
        started = time.perf_counter()
        store = StudyStore(self.spec, self.paths, self.objectives, lambda n: make_sampler(self.spec, resumed_after=n),
                           self.source.read_text())
        if store.repaired:
            self._note(f"warning: {store.repaired}")
        # Ray first: its processes start, and its workers warm up (imports, the task's data), while this
        # process sets up MLflow (importing it, creating its tables), which needs the CPU instead of waiting.
        executor = RayExecutor(self.spec, self.address)
        tracker = SearchTracker(self.paths.root, self.spec.name, self.tracking_uri, say=self._note)
        tracker.start_search(self.spec.name, self.spec, self.source, _plugin_list(),
                             store.study.user_attrs.get("mlflow_parent_run_id"))
        if tracker.parent_id:
            store.study.set_user_attr("mlflow_parent_run_id", tracker.parent_id)
        lost = reconcile(store)
        if lost:
            self.view.say(f"resumed: {lost} interrupted trial(s) will run again")
        rebuilt = tracker.sync(store.study)
        if rebuilt:
            self._note(f"MLflow: {rebuilt} run(s) the store did not have were rebuilt from the study journal")
        policy = AskTell(self.spec, store, self.objectives)
        fronts = FrontKeeper(self.spec, self.objectives, store, tracker, self.view)
        fronts.update(log_all=True)

        board = self._rung_board(store)
        running: dict[Any, RunningTrial] = {}
        waiting: dict[int, list["optuna.trial.Trial"]] = {}  # running trial -> repeats waiting for its outcome
        aborted, status, stopped_by = None, "FINISHED", None
        stop = StopSignals()
        try:
            stop.__enter__()
            while True:
                stop.check()
                self._track_started(tracker, self._fill(policy, executor, board, running, waiting, stop))
                if not running:
                    break
                finished: list[tuple[RunningTrial, TrialOutput, Any]] = []
                for ref in executor.wait(list(running), timeout=0.5):
                    job = running.pop(ref)
                    output = executor.output(ref, job.arch)
                    if output.worker_died and job.attempt <= self.spec.search.retries:
                        job.attempt += 1  # the same trial and run, once more
                        tracker.tag_attempt(job.trial.number, job.attempt, output.result.reason or "")
                        job.trial.set_user_attr("attempts", job.attempt)
                        job.overlapped = job.overlapped or bool(running)
                        running[executor.submit(job.arch, board.plan(job.trial.number) if board else None)] = job
                        continue
                    finished.append((job, output, self._record(policy, job, output, board)))
                    for repeat in waiting.pop(job.trial.number, []):
                        told = policy.tell_repeat(repeat, job.trial.number, counted=True)
                        self.view.repeat(repeat.number, job.trial.number, job.arch.summary(), told)
                try:
                    policy.check_failures()  # too many failures in a row: abort, these trials logged first
                    if finished:  # the freed slot starts its next trial before anything is written to MLflow
                        self._track_started(tracker, self._fill(policy, executor, board, running, waiting, stop))
                finally:
                    for job, output, told in finished:
                        tracker.finish_trial(job.trial.number, told.status, job.trial.user_attrs)  # as journaled
                        self.view.trial(job.trial.number, job.arch.summary(), told, output.result)
                if any(told.status == "ok" for _, _, told in finished):
                    fronts.update()  # once for all the trials that finished together
                if tracker.reconnect():
                    tracker.sync(store.study, running=[j.trial.number for j in running.values()])
                    fronts.update(log_all=True)
                self.view.progress(policy.progress, [(j.trial.number, j.started) for j in running.values()], fronts.hv)

            def wait(ref: Any) -> None:
                while not executor.wait([ref], timeout=0.5):
                    stop.check()

            if verify_front(self.spec, store, executor, tracker, self.objectives, wait, self.view.say):
                fronts.update(log_all=True)
        except SearchAborted as exc:
            aborted, status = str(exc), "FAILED"
            self._interrupt(policy, tracker, executor, running, f"search aborted: {exc}")
        except (KeyboardInterrupt, Stopped) as exc:
            stop.__exit__()  # a signal during the clean-up below takes its usual course
            stopped_by = exc.signal_name if isinstance(exc, Stopped) else "SIGINT"
            how = "SIGTERM" if stopped_by == "SIGTERM" else "Ctrl-C"
            aborted, status = f"stopped by {how}" if stopped_by == "SIGTERM" else "interrupted by the user", "KILLED"
            self._interrupt(policy, tracker, executor, running, f"interrupted: the search was stopped ({how}); it "
                                                                "runs again on resume")
            executor.shutdown()
        finally:
            stop.__exit__()
            self.view.close()
        return self._finish(store, tracker, started, aborted, status, stopped_by)

    def _rung_board(self, store: StudyStore) -> RungBoard | None:
        """The rungs of early stopping, with what the study recorded there; None when it is off."""
        cfg, t = self.spec.search.early_stopping, self.spec.training
        enabled = cfg.enabled if cfg.enabled is not None else self.spec.search.n_trials >= 8
        if not enabled:
            return None
        if t.workers > 1:
            self._note("early stopping is off: it needs training.workers = 1")
            return None
        steps = rung_steps(t.steps, cfg.min_fraction, cfg.reduction_factor)
        if not steps:
            return None
        board = RungBoard(steps, self.objectives, cfg.reduction_factor)
        for trial in store.study.get_trials(deepcopy=False):
            if trial.user_attrs.get("rungs") and "repeat_of" not in trial.user_attrs:
                board.add(trial.number, trial.user_attrs["rungs"], trial.user_attrs.get("metrics", {}))
        return board

    def _fill(self, policy: AskTell, executor: RayExecutor, board: RungBoard | None, running: dict[Any, RunningTrial],
              waiting: dict[int, list["optuna.trial.Trial"]], stop: StopSignals) -> list[RunningTrial]:
        """Submit trials until every slot is busy (or none are left); returns those submitted. Their MLflow runs
        are created afterwards (:meth:`_track_started`): nothing but the journal is written before a slot works."""
        n_trials, concurrency = self.spec.search.n_trials, self.spec.search.concurrency
        started: list[RunningTrial] = []
        while not self.exhausted and len(running) < concurrency and policy.progress.done + len(running) < n_trials:
            stop.check()
            proposal = policy.ask()
            if policy.exhausted:
                self.exhausted = True
                self._note(f"search ended early: {policy.exhausted}")
            if proposal is None:  # settled at once (infeasible, a repeat, a failed sample): try another
                continue
            trial, arch = proposal.trial, proposal.arch
            if proposal.repeat_of is not None:  # the same architecture is training now: wait for it
                waiting.setdefault(proposal.repeat_of, []).append(trial)
                continue
            trial.set_user_attr("architecture", arch.model_dump())  # the journal can rebuild its run
            job = RunningTrial(trial, arch, time.perf_counter(), proposal.key, overlapped=bool(running))
            for other in running.values():
                other.overlapped = True
            running[executor.submit(arch, board.plan(trial.number) if board else None)] = job
            started.append(job)
        return started

    @staticmethod
    def _track_started(tracker: SearchTracker, started: list[RunningTrial]) -> None:
        """The MLflow runs of trials just submitted (a run missing after a crash is rebuilt from the journal)."""
        for job in started:  # still running: none has been waited for since it was submitted
            job.trial.set_user_attr("mlflow_run_id", tracker.start_trial(job.trial.number, job.arch))

    def _record(self, policy: AskTell, job: RunningTrial, output: TrialOutput, board: RungBoard | None) -> Any:
        """What a finished trial counts as, in the journal (weights first, then the outcome); returns what
        ``policy.tell`` said. MLflow and the terminal follow once the freed slot is busy again."""
        result, number = output.result, job.trial.number
        result = dataclasses.replace(result, info={**result.info, "measured_alone": not job.overlapped})
        if result.status == "ok" and output.weights is not None:  # before the journal says COMPLETE
            self.weights.save(number, output.weights, job.arch.model_dump_json(indent=2))
        told = policy.tell(job.trial, result, job.key)
        if told.status != "ok":  # a non-finite objective: failed after all
            self.weights.discard(number)
        if board is not None and result.rungs:
            board.add(number, result.rungs, result.metrics)
        return told

    def _interrupt(self, policy: AskTell, tracker: SearchTracker, executor: RayExecutor,
                   running: dict[Any, RunningTrial], reason: str) -> None:
        """Stop running trials; fail them as interrupted and enqueue them again for the next resume.

        Every trial the study holds as RUNNING is this process's (the lock sees to that), including one asked
        for but not yet submitted when the interrupt came."""
        from optuna.trial import TrialState

        for ref in running:
            executor.cancel(ref)
        running.clear()
        for t in policy.store.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            policy.store.fail_and_requeue(t.number, t.params, reason)
            tracker.kill_trial(t.number, reason)

    def _finish(self, store: StudyStore, tracker: SearchTracker, started: float, aborted: str | None,
                status: str, stopped_by: str | None) -> SearchOutcome:
        if tracker.offline is not None and tracker.reconnect():  # one last try to hand MLflow what it missed
            tracker.sync(store.study)
        front, hv, ref = study_front(store.study)
        if front.rows:
            write_front(front, self.paths.front, hv, ref)
            tracker.log_front(self.paths.front)
        if self.spec.search.save_weights:
            for row in front.pareto:
                self._log_model(tracker, row)
        tracker.end_search(status)
        if tracker.offline is not None:
            self._note(f"warning: MLflow ({tracker.uri}) was not reachable at the end ({tracker.offline}); the study "
                       f"journal {self.paths.journal} has every result, and the next `nas search` of this space "
                       "rebuilds the runs")
        return SearchOutcome(self.spec.name, front, hv, ref, store.counts(), time.perf_counter() - started,
                             tracker.parent_id, self.paths, aborted, stopped_by, tuple(self.notes))

    def _log_model(self, tracker: SearchTracker, row: TrialRow) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"  # a saved model (nas.saved): the weights store's files and the task
            folder.mkdir()
            if self.weights.model_folder(row.number, folder, self.source.read_text()):
                (folder / TASK).write_text(json.dumps(self.spec.task.model_dump(mode="json"), indent=2))
                tracker.log_model(row.number, folder)


def _plugin_list() -> list[dict[str, str]]:
    return [{"kind": e.kind, "name": e.name, "provider": e.provider, "version": e.version} for e in registry.entries()]


def run_search(loaded: LoadedSpec, root: Path | None = None, address: str | None = None,
               live: bool = True, tracking_uri: str | None = None) -> SearchOutcome:
    """Run (or resume) the search described by a loaded spec. See :class:`Controller`."""
    return Controller(loaded, root, address, live, tracking_uri).run()
