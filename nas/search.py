"""The search controller: Optuna ask/tell in the driver, trials as Ray tasks, results to MLflow.

Why Ray tasks + Optuna ask/tell rather than Ray Tune (``Tuner`` + ``OptunaSearch``):

* the study lives in an Optuna journal file that is appended and fsynced per write, so a killed search loses
  at most the trials that were running; Tune's searcher state is snapshotted periodically instead;
* the driver is the only writer of both the journal and MLflow's SQLite store (both unsafe for parallel
  writers), and it decides exactly once what a finished trial counts as;
* any Optuna multi-objective sampler works unchanged; soft constraints reach it through
  ``Trial.set_constraint`` (Optuna 5's replacement for ``constraints_func``).

Recovery: on start, trials left RUNNING by a dead driver are marked FAIL (``interrupted``), their parameters
are enqueued again so the same architecture re-runs, and their MLflow runs are closed as KILLED. Interrupted
trials never count towards ``n_trials``; failed ones (exception, NaN, out of memory) do.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .report import Front, TrialRow, compute_front, format_table, write_front
from .spec import objective_directions
from .space import Architecture, sample_architecture

__all__ = ["SearchPaths", "run_search", "make_sampler", "load_study", "study_front", "SearchAborted"]

log = logging.getLogger("nas.search")

_SOFT_CONSTRAINTS = {  # spec.constraints field -> metric (max_params is hard: checked before training)
    "max_flops_per_token": "flops_per_token",
    "max_latency_ms": "latency_ms",
    "max_train_memory_mb": "train_memory_mb",
    "max_infer_memory_mb": "infer_memory_mb",
}


class SearchAborted(RuntimeError):
    """Too many consecutive failures, or an unusable space; the study is kept and can be resumed."""


@dataclass
class SearchPaths:
    """Everything a search writes lives under one root (``search.dir``, default ``.nas``)."""

    root: Path
    name: str

    @property
    def journal(self) -> Path:
        return self.root / "studies" / f"{self.name}.journal"

    @property
    def weights(self) -> Path:
        return self.root / "weights" / self.name

    @property
    def front(self) -> Path:
        return self.root / "fronts" / self.name


# --- Optuna ------------------------------------------------------------------------------------------
def soft_constraints(spec: Any) -> list[tuple[str, float]]:
    return [(metric, getattr(spec.constraints, key)) for key, metric in _SOFT_CONSTRAINTS.items()
            if getattr(spec.constraints, key) is not None]


def make_sampler(spec: Any) -> Any:
    """The Optuna sampler named in ``search.sampler``, seeded.

    Parameters that exist only in some trials (a block's own settings, a choice reduced by another choice)
    are sampled independently by design, so the samplers' warnings about that are off unless asked for.
    """
    import optuna

    cfg, seed = spec.search.sampler, spec.search.seed
    options = dict(cfg.options)
    classes = {
        "random": optuna.samplers.RandomSampler,
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "gp": optuna.samplers.GPSampler,
    }
    if cfg.type == "gp":  # (TPE deprecated the option in Optuna 4.9 and no longer warns)
        options.setdefault("warn_independent_sampling", False)
    return classes[cfg.type](seed=seed, **options)


def _storage(paths: SearchPaths) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(paths.journal)))


def load_study(paths: SearchPaths) -> Any:
    """An existing study, read-only use (``nas show``). Raises KeyError if there is none."""
    import optuna

    if not paths.journal.exists():
        known = sorted(p.stem for p in paths.journal.parent.glob("*.journal")) if paths.journal.parent.exists() else []
        raise KeyError(f"no search named '{paths.name}' under {paths.root}; known: {', '.join(known) or 'none'}")
    return optuna.load_study(study_name=paths.name, storage=_storage(paths))


# --- the trial as a Ray task ----------------------------------------------------------------------------
def _trial_task(spec_data: dict, plugins: list[str], arch_data: dict, cwd: str, threads: int,
                memory_mb: int | None) -> dict:
    """Runs in a Ray worker: rebuild the registry and the spec there, run one trial, return its result."""
    if os.path.isdir(cwd):  # local clusters: relative paths (text files, plugin modules) as in the driver
        os.chdir(cwd)
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
    if memory_mb is not None:
        return _run_limited(spec_data, plugins, arch_data, cwd, threads, memory_mb)
    return _run_here(spec_data, plugins, arch_data, threads)


def _run_here(spec_data: dict, plugins: list[str], arch_data: dict, threads: int,
              memory_mb: int | None = None) -> dict:
    """One trial in this process: ``{"result": TrialResult as a dict, "weights": safetensors bytes or None}``."""
    import torch

    from .spec import spec_model
    from .trial import run_trial

    registry.load_plugins(plugins)
    spec = spec_model().model_validate(spec_data)
    torch.set_num_threads(max(1, threads))
    if memory_mb is not None:
        import torch._dynamo  # noqa: F401  imported lazily by the first meta-device build: ~250 MB of address
        # space that belongs to the baseline, not to the trial
        _limit_memory(memory_mb)
    result = run_trial(spec, Architecture.model_validate(arch_data), keep_model=True)
    if memory_mb is not None:  # the limit is for the trial, not for handing its result back
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
    model = result.info.pop("model", None)
    out = {"result": result.to_dict(), "weights": None}
    if model is not None:
        from safetensors.torch import save_model

        with tempfile.TemporaryDirectory() as tmp:
            save_model(model, f"{tmp}/w.safetensors")  # handles the shared position module
            out["weights"] = Path(f"{tmp}/w.safetensors").read_bytes()
    return out


def _run_limited(spec_data: dict, plugins: list[str], arch_data: dict, cwd: str, threads: int,
                 memory_mb: int) -> dict:
    """One trial in a child process under the address-space limit (``search.resources.memory_mb``).

    Never under the limit in the Ray worker itself: Ray starts threads there at any time, and a thread that
    cannot get its stack aborts the worker, which then hangs instead of returning. A child that dies (a
    native allocation failure can abort it) is recorded as out of memory.
    """
    import pickle
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        result_path, log_path = Path(tmp) / "result.pkl", Path(tmp) / "stderr.txt"
        with log_path.open("wb") as log:
            proc = subprocess.run(
                [sys.executable, "-c", "import sys; from nas.search import _limited_child; _limited_child(sys.argv[1])",
                 str(result_path)],
                input=pickle.dumps((spec_data, plugins, arch_data, cwd, threads, memory_mb)),
                stderr=log, cwd=cwd if os.path.isdir(cwd) else None,
            )
        errors = log_path.read_text(errors="replace")
        if errors:
            sys.stderr.write(errors[-20000:])
        if proc.returncode == 0 and result_path.exists():
            return pickle.loads(result_path.read_bytes())
    last = next((line.strip() for line in reversed(errors.splitlines()) if line.strip()), "")
    reason = (f"out of memory: the trial process died (exit code {proc.returncode}) under search.resources."
              f"memory_mb = {memory_mb}" + (f": {last[:300]}" if last else ""))
    return {"result": _failed(Architecture.model_validate(arch_data), reason), "weights": None}


def _limited_child(result_path: str) -> None:
    """Entry point of the child process of :func:`_run_limited`: arguments on stdin, result to ``result_path``."""
    import pickle

    spec_data, plugins, arch_data, cwd, threads, memory_mb = pickle.load(sys.stdin.buffer)
    if os.path.isdir(cwd) and cwd not in sys.path:
        sys.path.insert(0, cwd)
    out = _run_here(spec_data, plugins, arch_data, threads, memory_mb)
    Path(result_path).write_bytes(pickle.dumps(out))


def _limit_memory(memory_mb: int) -> None:
    """Cap this process's address space at its current size plus ``memory_mb`` (Linux). Larger allocations
    fail, and the trial is recorded as out of memory. Only ever called in a process that runs one trial."""
    import resource

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


# --- the controller -------------------------------------------------------------------------------------
@dataclass
class _Running:
    trial: Any
    arch: Architecture
    run_id: str
    started: float


@dataclass
class SearchOutcome:
    name: str
    front: Front
    hypervolume: float | None
    reference: list[float] | None
    counts: dict[str, int]
    seconds: float
    parent_run_id: str
    paths: SearchPaths
    aborted: str | None = None


@dataclass
class _State:
    done: int = 0
    failed: int = 0
    infeasible: int = 0
    consecutive_failures: int = 0
    consecutive_infeasible: int = 0
    hv: float | None = None
    ranks: dict[int, int | None] = field(default_factory=dict)  # last logged pareto_rank by trial number


def _counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    c = {"complete": 0, "failed": 0, "interrupted": 0, "infeasible": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.FAIL:
            c["interrupted" if t.user_attrs.get("interrupted") else "failed"] += 1
        elif t.state == TrialState.PRUNED:
            c["infeasible"] += 1
    return c


def _finished(counts: dict[str, int]) -> int:
    return counts["complete"] + counts["failed"]


def study_rows(study: Any) -> list[TrialRow]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        feasible = all(v <= 0 for v in t.user_attrs.get("constraints", [])) if "constraints" in t.user_attrs else True
        rows.append(TrialRow(t.number, t.user_attrs.get("summary", ""), list(t.values), feasible,
                             t.user_attrs.get("mlflow_run_id"), t.user_attrs.get("metrics", {})))
    return rows


def study_front(study: Any) -> tuple[Front, float | None, list[float] | None]:
    """The front of a study as stored, with its hypervolume and reference point."""
    from .pareto import hypervolume, to_minimize

    objectives = [tuple(o) for o in study.user_attrs["objectives"]]
    front = compute_front(objectives, study_rows(study))
    ref = study.user_attrs.get("reference_point")
    hv = None
    if ref is not None and front.rows:
        pts = to_minimize([r.values for r in front.rows if r.feasible], [d for _, d in objectives])
        hv = hypervolume(pts, to_minimize([ref], [d for _, d in objectives])[0]) if len(pts) else 0.0
    return front, hv, ref


class Controller:
    """Runs one search to completion (or to an abort), resumable from its journal at any point."""

    def __init__(self, loaded: Any, root: Path | None = None, address: str | None = None, live: bool = True):
        self.spec = loaded.spec
        self.source = Path(loaded.locations.source)
        self.paths = SearchPaths(Path(root or self.spec.search.dir), self.spec.name)
        self.address = address if address is not None else self.spec.search.address
        self.objectives = objective_directions(self.spec)
        self.live = live
        self.state = _State()
        self._sizing: tuple[Any, Any] | None = None  # (task, example input) for max_params checks
        self._last_view: tuple[int, int] | None = None  # (done, running) last printed by the live view

    # -- set-up --------------------------------------------------------------------------------------
    def _open_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = _storage(self.paths)
        study = optuna.create_study(study_name=self.spec.name, storage=storage, sampler=make_sampler(self.spec),
                                    directions=[d for _, d in self.objectives], load_if_exists=True)
        fingerprint = self._fingerprint()
        stored = study.user_attrs.get("fingerprint")
        if stored is None:
            study.set_user_attr("fingerprint", fingerprint)
            study.set_user_attr("objectives", [list(o) for o in self.objectives])
            study.set_user_attr("spec_text", self.source.read_text())
        elif stored != fingerprint:
            raise SearchAborted(
                f"a search named '{self.spec.name}' already exists in {self.paths.journal} with a different space, "
                "task, training or objectives; resuming it would mix incomparable trials. Give this search "
                "another `name:` (or move the old study away)."
            )
        return study

    def _fingerprint(self) -> str:
        import hashlib
        import json

        data = self.spec.model_dump(mode="json")
        data.pop("search", None)  # how many trials, where and how fast may change between resumes
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def _reconcile(self, study: Any, tracker: Any, parent_id: str) -> int:
        """Fail and re-enqueue trials a dead driver left RUNNING; close their MLflow runs as KILLED."""
        from optuna.trial import TrialState

        reason = "interrupted: the search process stopped while this trial ran; it is run again"
        lost = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _fail_and_requeue(study, t._trial_id, t.number, t.params, reason)
            lost += 1
        # MLflow: a trial's run is closed after Optuna records the trial, so a RUNNING run is either lost
        # (KILLED) or its trial was recorded just before the crash (finish it from the journal).
        by_run = {t.user_attrs.get("mlflow_run_id"): t for t in study.get_trials(deepcopy=False)}
        for run in tracker.running_children(parent_id):
            t = by_run.get(run.info.run_id)
            if t is not None and not t.user_attrs.get("interrupted") and t.state != TrialState.RUNNING:
                status = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "infeasible"}.get(t.state, "failed")
                tracker.finish_trial(run.info.run_id, status, t.user_attrs.get("metrics", {}),
                                     t.user_attrs.get("reason"))
            else:
                tracker.kill_trial(run.info.run_id, reason)
        return lost

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        import ray

        from .tracking import Tracker

        started = time.perf_counter()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        study = self._open_study()
        tracker = Tracker(self.paths.root, experiment=self.spec.name)
        parent_id = tracker.start_search(self.spec.name, self.spec, self.source, _plugin_list(),
                                         study.user_attrs.get("mlflow_parent_run_id"))
        study.set_user_attr("mlflow_parent_run_id", parent_id)
        lost = self._reconcile(study, tracker, parent_id)
        if lost:
            self._say(f"resumed: {lost} interrupted trial(s) will run again")

        counts = _counts(study)
        self.state.done, self.state.failed, self.state.infeasible = (
            _finished(counts), counts["failed"], counts["infeasible"])
        self._update_front(study, tracker, parent_id, log_all=True)

        _init_ray(self.address, self.spec)
        task = self._remote()
        running: dict[Any, _Running] = {}
        aborted = None
        status = "FINISHED"
        try:
            while True:
                while len(running) < self.spec.search.concurrency and self.state.done + len(running) < self.spec.search.n_trials:
                    submitted = self._submit(study, tracker, parent_id, task, running)
                    if submitted is None:  # an infeasible sample: nothing to run, try another
                        if self.state.consecutive_infeasible >= self._max_infeasible():
                            raise SearchAborted(f"{self._max_infeasible()} samples in a row were infeasible "
                                                "(over constraints.max_params?); widen the space or the limit")
                        continue
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    self._collect(study, tracker, parent_id, ref, running.pop(ref))
                self._view(running)
        except SearchAborted as exc:
            aborted, status = str(exc), "FAILED"
            self._interrupt(study, tracker, running, f"search aborted: {exc}")
        except KeyboardInterrupt:
            aborted, status = "interrupted by the user", "KILLED"
            self._interrupt(study, tracker, running, "interrupted: the search was stopped (Ctrl-C); it runs again "
                                                    "on resume")
        outcome = self._finish(study, tracker, parent_id, started, aborted, status)
        return outcome

    def _max_infeasible(self) -> int:
        return max(50, self.spec.search.max_consecutive_failures)

    def _remote(self) -> Any:
        import ray

        r = self.spec.search.resources
        fresh_process = r.gpus > 0  # GPU memory does not outlive a trial (memory_mb runs it in a child process)
        remote = ray.remote(max_calls=1)(_trial_task) if fresh_process else ray.remote(_trial_task)
        return remote.options(num_cpus=0 if self.spec.training.workers > 1 else r.cpus, num_gpus=r.gpus,
                              max_retries=self.spec.search.retries)

    def _submit(self, study: Any, tracker: Any, parent_id: str, task: Any, running: dict) -> Any:
        from optuna.trial import TrialState

        from .model import meta_costs
        from .trial import build_task

        trial = study.ask()
        try:
            arch = sample_architecture(self.spec, trial)
        except Exception as exc:  # a block's own space raised: record it as a failed sample, go on
            trial.set_user_attr("reason", f"error while sampling: {type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            self.state.done += 1
            self.state.failed += 1
            self.state.consecutive_failures += 1
            self._check_failures()
            return None
        trial.set_user_attr("summary", arch.summary())
        limit = self.spec.constraints.max_params
        if limit is not None:
            if self._sizing is None:  # the task and an example input, built once: sizing runs every sample
                task_obj = build_task(self.spec)
                self._sizing = (task_obj, task_obj.example_batch(1)[0])
            params = meta_costs(arch, *self._sizing)["params"]
            if params > limit:
                trial.set_user_attr("reason", f"infeasible: {int(params)} parameters > max_params {limit}")
                trial.set_user_attr("metrics", {"params": params})
                study.tell(trial, state=TrialState.PRUNED)
                self.state.infeasible += 1
                self.state.consecutive_infeasible += 1
                return None
        self.state.consecutive_infeasible = 0
        run_id = tracker.start_trial(parent_id, trial.number, arch.flat(), arch.summary())
        trial.set_user_attr("mlflow_run_id", run_id)
        r = self.spec.search.resources
        ref = task.remote(self.spec.model_dump(mode="json"), list(self.spec.plugins), arch.model_dump(),
                          os.getcwd(), int(max(1, r.cpus)), r.memory_mb)
        running[ref] = _Running(trial, arch, run_id, time.perf_counter())
        return ref

    def _collect(self, study: Any, tracker: Any, parent_id: str, ref: Any, job: _Running) -> None:
        import ray
        from optuna.trial import TrialState

        weights = None
        try:
            out = ray.get(ref)
            result, weights = out["result"], out["weights"]
        except ray.exceptions.OutOfMemoryError as exc:
            result = _failed(job.arch, f"out of memory: killed by Ray's memory monitor ({str(exc).splitlines()[0]})")
        except ray.exceptions.WorkerCrashedError:
            result = _failed(job.arch, f"worker died (process crashed), after {self.spec.search.retries} retries")
        except ray.exceptions.RayTaskError as exc:  # raised outside run_trial, e.g. a plugin missing on that node
            cause = exc.cause if exc.cause is not None else exc
            result = _failed(job.arch, f"error in the Ray worker: {type(cause).__name__}: {cause}")
        except ray.exceptions.RayError as exc:
            result = _failed(job.arch, f"ray: {type(exc).__name__}: {str(exc).splitlines()[0]}")

        trial, metrics = job.trial, result["metrics"]
        status, reason = result["status"], result.get("reason")
        values = None
        if status == "ok":
            values = [metrics.get(m, math.nan) for m, _ in self.objectives]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                status, reason = "failed", f"nan: non-finite objective values {dict(zip([m for m, _ in self.objectives], values))}"
        trial.set_user_attr("metrics", metrics)
        if reason:
            trial.set_user_attr("reason", reason)
        if status == "ok":
            violations = [metrics[m] - limit for m, limit in soft_constraints(self.spec)]
            trial.set_user_attr("constraints", violations)  # our own front is computed over feasible trials
            for (metric, _), violation in zip(soft_constraints(self.spec), violations):
                trial.set_constraint(f"max_{metric}", violation)  # <= 0: satisfied; read by the sampler
            if weights is not None:
                self.paths.weights.mkdir(parents=True, exist_ok=True)
                (self.paths.weights / f"trial_{trial.number}.safetensors").write_bytes(weights)
                (self.paths.weights / f"trial_{trial.number}.json").write_text(job.arch.model_dump_json(indent=2))
            study.tell(trial, values)
            self.state.consecutive_failures = 0
        elif status == "infeasible":
            study.tell(trial, state=TrialState.PRUNED)
            self.state.infeasible += 1
        else:
            study.tell(trial, state=TrialState.FAIL)
            self.state.failed += 1
            self.state.consecutive_failures += 1
        if status != "infeasible":
            self.state.done += 1
        tracker.finish_trial(job.run_id, status, metrics, reason, result.get("curve", []), result.get("info"))
        self._say(f"trial {trial.number:>3} {status:<10} {job.arch.summary():<40} "
                  + (" ".join(f"{m}={metrics.get(m, float('nan')):.4g}" for m, _ in self.objectives) if status == "ok"
                     else reason or ""))
        if status == "ok":
            self._update_front(study, tracker, parent_id)
        self._check_failures()

    def _check_failures(self) -> None:
        limit = self.spec.search.max_consecutive_failures
        if self.state.consecutive_failures >= limit:
            raise SearchAborted(f"{self.state.consecutive_failures} trials failed in a row (search.max_consecutive_"
                                f"failures = {limit}); see the failure reasons above or with `nas show {self.spec.name}`")

    def _update_front(self, study: Any, tracker: Any, parent_id: str, log_all: bool = False) -> None:
        from .pareto import hypervolume, to_minimize

        rows = study_rows(study)
        if not rows:
            return
        directions = [d for _, d in self.objectives]
        front = compute_front(self.objectives, rows)
        before = {n for n, r in self.state.ranks.items() if r == 0}
        for row, rank in zip(front.rows, front.ranks):
            rank = rank if rank >= 0 else None
            if row.run_id and (log_all or self.state.ranks.get(row.number, "unset") != rank):
                tracker.set_pareto(row.run_id, rank)
                self.state.ranks[row.number] = rank
        if {r.number for r in front.pareto} != before:
            self._say("  front now: " + "; ".join(
                f"#{r.number} {r.summary} (" + ", ".join(f"{m}={v:.3g}" for (m, _), v in zip(self.objectives, r.values))
                + ")" for r in front.pareto))
        feasible = [r.values for r in rows if r.feasible]
        ref = study.user_attrs.get("reference_point")
        if ref is None and self.spec.search.reference_point is not None:
            ref = [self.spec.search.reference_point[m] for m, _ in self.objectives]
            study.set_user_attr("reference_point", ref)
        if ref is None and len(feasible) >= 2:  # derived once, then fixed, so hypervolume steps compare
            ref = natural_reference(feasible, directions)
            study.set_user_attr("reference_point", ref)
        if ref is not None and feasible:
            hv = hypervolume(to_minimize(feasible, directions), to_minimize([ref], directions)[0])
            self.state.hv = hv
            tracker.log_hypervolume(parent_id, hv, step=len(rows))

    def _interrupt(self, study: Any, tracker: Any, running: dict, reason: str) -> None:
        """Stop running trials; fail them as interrupted and enqueue them again for the next resume."""
        import ray

        for ref, job in running.items():
            ray.cancel(ref, force=True)
            _fail_and_requeue(study, job.trial._trial_id, job.trial.number, job.trial.params, reason)
            tracker.kill_trial(job.run_id, reason)
        running.clear()

    def _finish(self, study: Any, tracker: Any, parent_id: str, started: float, aborted: str | None,
                status: str) -> SearchOutcome:
        front, hv, ref = study_front(study)
        if front.rows:
            write_front(front, self.paths.front, hv, ref)
            tracker.log_artifacts(parent_id, self.paths.front, "front")
        if self.spec.search.save_weights:
            for row in front.pareto:
                self._log_model(tracker, row)
        tracker.end_search(parent_id, status)
        counts = _counts(study)
        return SearchOutcome(self.spec.name, front, hv, ref, counts, time.perf_counter() - started, parent_id,
                             self.paths, aborted)

    def _log_model(self, tracker: Any, row: TrialRow) -> None:
        weights = self.paths.weights / f"trial_{row.number}.safetensors"
        if row.run_id is None or not weights.exists():
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "weights.safetensors").write_bytes(weights.read_bytes())
            (folder / "architecture.json").write_text((self.paths.weights / f"trial_{row.number}.json").read_text())
            (folder / "space.yaml").write_text(self.source.read_text())
            tracker.log_model(row.run_id, folder)

    # -- output --------------------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if self.live:
            print(line, flush=True)

    def _view(self, running: dict) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        key = (self.state.done, len(running))
        if self._last_view == key:
            return
        self._last_view = key
        hv = f"{self.state.hv:.4g}" if self.state.hv is not None else "-"
        names = ", ".join(f"{j.trial.number} ({now - j.started:.0f}s)" for j in running.values())
        print(f"  [{self.state.done}/{self.spec.search.n_trials} done, {len(running)} running, {self.state.failed} "
              f"failed, {self.state.infeasible} infeasible] hypervolume {hv}  running: {names or '-'}", flush=True)


def _fail_and_requeue(study: Any, trial_id: int, number: int, params: dict[str, Any], reason: str) -> None:
    """Mark a trial that did not finish as FAIL (``interrupted``, with ``reason``) and enqueue its parameters,
    so the same architecture runs again and the lost attempt never counts towards ``n_trials``."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial_id, "interrupted", True)
    study._storage.set_trial_user_attr(trial_id, "reason", reason)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"retry_of": number}, skip_if_exists=False)


def natural_reference(values: list[list[float]], directions: list[str]) -> list[float]:
    """A hypervolume reference point that later trials rarely cross: 0 for a non-negative metric to maximise
    (accuracy), twice the worst value for a positive metric to minimise (latency, memory, parameters), and
    otherwise the worst value plus 10% of the observed range."""
    from .pareto import reference_point, to_minimize

    generic = reference_point(to_minimize(values, directions))
    ref = []
    for i, d in enumerate(directions):
        column = [v[i] for v in values if math.isfinite(v[i])]
        if d == "maximize" and min(column) >= 0:
            ref.append(0.0)
        elif d == "minimize" and min(column) > 0:
            ref.append(2.0 * max(column))
        else:
            ref.append(-generic[i] if d == "maximize" else float(generic[i]))
    return ref


def _failed(arch: Architecture, reason: str) -> dict:
    return {"status": "failed", "reason": reason, "metrics": {}, "architecture": arch.model_dump(), "curve": [],
            "info": {}}


def _plugin_list() -> list[dict[str, str]]:
    return [{"kind": e.kind, "name": e.name, "provider": e.provider, "version": e.version} for e in registry.entries()]


def _init_ray(address: str | None, spec: Any) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:  # "local": a new instance, even when `ray start` left a cluster (or its stale address) on this machine
        ray.init(address="local", num_cpus=os.cpu_count(), **kwargs)


def run_search(loaded: Any, root: Path | None = None, address: str | None = None, live: bool = True) -> SearchOutcome:
    """Run (or resume) the search described by a loaded spec. See :class:`Controller`."""
    return Controller(loaded, root, address, live).run()


def format_outcome(outcome: SearchOutcome) -> str:
    c = outcome.counts
    lines = [
        f"search '{outcome.name}': {c['complete']} complete, {c['failed']} failed, {c['infeasible']} infeasible, "
        f"{c['interrupted']} interrupted (re-run) in {outcome.seconds:.0f} s",
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
