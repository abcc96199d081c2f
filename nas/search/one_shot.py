"""``search.strategy: one_shot``: one supernet screens the space, the best candidates are retrained from scratch.

Three phases, each resumable from what it wrote (a kill in any phase loses nothing that phase had finished):

1. **Train the supernet** (:mod:`nas.supernet`) as a Ray task, like a trial. Its weights and state go to
   ``<search.dir>/supernets/<name>/``; the state file is written last, so a supernet whose state exists is
   complete and a resumed search uses it instead of training again. A kill during training loses only that
   training.
2. **Screen subnets** (``nas show <name>.oneshot`` lists them): the configured sampler proposes
   ``search.one_shot.candidates`` architectures, each scored with inherited weights on the validation set (after
   ``calibration_batches``) and measured for hardware on the extracted standalone subnet, hardware first, as
   any trial is (limits make a candidate infeasible before it is scored). They live in a study of their own,
   the journal ``studies/<name>.oneshot.journal``: every scored candidate is in the journal the moment it is
   scored, and a candidate that was being scored when the search died is scored again.
3. **Retrain the best**: the ``top_k`` candidates by non-dominated rank (then by crowding, the first objective
   breaking ties) are enqueued in the search's own study and run by the ordinary controller as ordinary
   trials, from scratch, at the full budget, without early stopping. The search's study, its front, MLflow and
   ``nas show`` hold only these retrained trials; each names the candidate it came from
   (``one_shot_candidate``) and its inherited score (``inherited``).

The main study's ``one_shot`` attribute records what the supernet cost (``supernet_passes``: path forward and
backward passes, the unit trials' steps are counted in) so that compute can be counted end to end.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from ..architecture import Architecture, block_config
from ..model import meta_costs
from ..pareto import nondominated_ranks, to_minimize
from ..spec import LoadedSpec, Spec, make_sampler, objective_directions, spec_from_data
from ..supernet import STATE, Supernet, inherited_metrics, train_supernet
from ..trial import TrialResult, broken_limit, measure_hardware
from .controller import Controller
from .outcome import SearchOutcome
from .policy import AskTell
from .reconcile import reconcile
from .store import SearchAborted, SearchLock, SearchPaths, StudyStore, fingerprint

if TYPE_CHECKING:
    import optuna

__all__ = ["run_one_shot", "supernet_folder", "screening_paths", "score_subnet", "choose", "SupernetJob",
           "supernet_task", "export_subnet"]


def supernet_folder(paths: SearchPaths) -> Path:
    return paths.root / "supernets" / paths.name


def screening_paths(paths: SearchPaths) -> SearchPaths:
    """Where phase 2's study lives: a journal of its own beside the search's."""
    return SearchPaths(paths.root, f"{paths.name}.oneshot")


# --- phase 1: the supernet, as a Ray task --------------------------------------------------------------
@dataclass(frozen=True)
class SupernetJob:
    spec: dict[str, Any]
    plugins: list[str]
    folder: str
    steps: int
    seed: int
    sandwich: bool
    threads: int
    cwd: str


def supernet_task(job: SupernetJob) -> dict[str, Any]:
    """Runs in a Ray worker: train the supernet, save it, return its state."""
    import torch

    from ..runtime import pick_device

    if os.path.isdir(job.cwd):
        os.chdir(job.cwd)
        if job.cwd not in sys.path:
            sys.path.insert(0, job.cwd)
    spec = spec_from_data(job.spec, job.plugins)
    torch.set_num_threads(max(1, job.threads))
    torch.manual_seed(job.seed)
    net = Supernet(spec, seed=job.seed, device=pick_device(spec.training.device))
    trained = train_supernet(net, job.steps, job.seed, job.sandwich)
    state = {"seed": job.seed, "steps": trained.steps, "passes": trained.passes, "seconds": trained.seconds,
             "sandwich": job.sandwich, "fingerprint": fingerprint(spec), "curve": trained.curve,
             "tensors": len(net.store), "parameters": sum(p.numel() for p in net.parameters())}
    net.save(Path(job.folder), state)
    return state


def _supernet(spec: Spec, paths: SearchPaths, address: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Phase 1: the saved supernet's state, training it first (as a Ray task) unless a finished one is there."""
    import json

    cfg = spec.search.one_shot
    folder = supernet_folder(paths)
    steps = cfg.supernet_steps or spec.training.steps
    if Supernet.saved(folder):
        state: dict[str, Any] = json.loads((folder / STATE).read_text())
        if state.get("fingerprint") == fingerprint(spec) and state.get("steps") == steps:
            say(f"one-shot phase 1: the supernet in {folder} is trained ({state['passes']} path passes); reused")
            return state
        say(f"one-shot phase 1: the supernet in {folder} was trained for another space or budget; training again")
    import ray

    from .executor import RayExecutor

    RayExecutor(spec, address)  # starts or joins Ray as trials do
    r = spec.search.resources
    task = ray.remote(supernet_task).options(num_cpus=r.cpus, num_gpus=r.gpus, max_retries=0)
    job = SupernetJob(spec.model_dump(mode="json"), list(spec.plugins), str(folder.resolve()), steps,
                      spec.search.seed, cfg.sandwich, int(max(1, r.cpus)), os.getcwd())
    if spec.training.workers > 1:
        say("one-shot phase 1: the supernet trains on one worker (data-parallel supernet training is not "
            "implemented; training.workers applies to the retrained trials)")
    say(f"one-shot phase 1: training the supernet for {steps} steps")
    started = time.perf_counter()
    ref = task.remote(job)
    while not ray.wait([ref], timeout=0.5)[0]:
        pass
    state = ray.get(ref)
    say(f"one-shot phase 1: supernet trained, {state['passes']} path passes in {time.perf_counter() - started:.0f} s")
    return state


# --- phase 2: screening ---------------------------------------------------------------------------------
def score_subnet(spec: Spec, net: Supernet, arch: Architecture, calibration_batches: int = 0) -> TrialResult:
    """A candidate's result: hardware first on the extracted standalone subnet (sizes on the meta device, then
    training memory, latency and inference memory as in any trial; over a limit: infeasible, never scored),
    then its quality with inherited weights (of the subnet as extracted: a compression in the architecture is
    measured for hardware here, and applied to quality only when the candidate is retrained). Never raises for a
    bad architecture: it fails with the reason."""
    import torch

    started, wall = time.perf_counter(), time.time()
    info: dict[str, Any] = {"inherited": True, "steps": 0}
    metrics: dict[str, float] = {}
    try:
        task = net.task
        metrics.update(meta_costs(arch, task, task.example_batch(spec.measure.batch_size)[0]))
        reason = broken_limit(spec, metrics)
        if reason is None:
            model = net.extract(arch)
            compressor = registry.build("compression", block_config("compression", arch.compression))
            with torch.random.fork_rng(devices=[]):
                metrics.update(measure_hardware(model, task, spec, net.device, compressor))
            reason = broken_limit(spec, metrics)
        if reason is not None:
            return TrialResult("infeasible", arch.model_dump(), metrics, reason, info=info)
        metrics.update(inherited_metrics(net, arch, calibration_batches))
    except Exception as exc:  # a block that fails to build or run at this size: recorded, the screening goes on
        return TrialResult("failed", arch.model_dump(), metrics, f"error: {type(exc).__name__}: {exc}", info=info)
    info.update(seconds=time.perf_counter() - started, busy=[wall, time.time()])
    return TrialResult("ok", arch.model_dump(), metrics, None, info=info)


def _screen(spec: Spec, paths: SearchPaths, source: str, net: Supernet, say: Callable[[str], None]) -> StudyStore:
    """Phase 2: score candidates until ``candidates`` are done (scored, or failed), resuming the journal."""
    objectives = objective_directions(spec)
    named = spec.model_copy(update={"name": screening_paths(paths).name})  # `nas show NAME.oneshot` reads it
    store = StudyStore(named, screening_paths(paths), objectives, lambda n: make_sampler(spec, resumed_after=n),
                       source)
    lost = reconcile(store)
    if lost:
        say(f"one-shot phase 2: {lost} candidate(s) interrupted while being scored; scored again")
    policy = AskTell(spec, store, objectives)
    target = spec.search.one_shot.candidates
    if policy.progress.done < target:
        say(f"one-shot phase 2: scoring candidates with inherited weights ({policy.progress.done}/{target} done)")
    while policy.progress.done < target and policy.exhausted is None:
        proposal = policy.ask()
        if proposal is None:
            continue
        proposal.trial.set_user_attr("architecture", proposal.arch.model_dump())  # for `nas supernet export`
        result = score_subnet(spec, net, proposal.arch, spec.search.one_shot.calibration_batches)
        policy.tell(proposal.trial, result, proposal.key)
        policy.check_failures()
    return store


def choose(study: "optuna.Study", objectives: list[tuple[str, str]], k: int) -> list["optuna.trial.FrozenTrial"]:
    """The ``k`` best scored, feasible candidates (no repeats): by non-dominated rank, then by crowding distance
    within a rank (the spread NSGA-II keeps), then by the first objective."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "repeat_of" not in t.user_attrs and all(v <= 0 for v in t.constraints.values())]
    if not done:
        return []
    points = to_minimize([list(t.values) for t in done], [d for _, d in objectives])
    ranks = nondominated_ranks(points)
    crowd = [0.0] * len(done)
    for r in set(ranks.tolist()):
        members = [i for i in range(len(done)) if ranks[i] == r]
        for j in range(points.shape[1]):
            order = sorted(members, key=lambda i: points[i, j])
            span = points[order[-1], j] - points[order[0], j] or 1.0
            crowd[order[0]] = crowd[order[-1]] = math.inf
            for a, b, c in zip(order, order[1:], order[2:]):
                crowd[b] += (points[c, j] - points[a, j]) / span
    best = sorted(range(len(done)), key=lambda i: (int(ranks[i]), -crowd[i], float(points[i, 0]), done[i].number))
    return [done[i] for i in best[:k]]


# --- phase 3 and the whole ------------------------------------------------------------------------------
def _enqueue(spec: Spec, paths: SearchPaths, source: str, chosen: list["optuna.trial.FrozenTrial"],
             supernet: dict[str, Any], screened: int) -> None:
    """Put the chosen candidates in the search's study, once: a resumed search finds them there (waiting,
    running or done) and enqueues only those it does not have."""
    objectives = objective_directions(spec)
    lock = SearchLock(paths)
    lock.acquire()
    try:
        store = StudyStore(spec, paths, objectives, lambda n: make_sampler(spec, resumed_after=n), source)
        study = store.study
        study.set_user_attr("one_shot", {"supernet_passes": supernet["passes"], "supernet_steps": supernet["steps"],
                                         "supernet_seconds": supernet.get("seconds"), "candidates": screened,
                                         "retrained": [t.number for t in chosen]})
        have = {t.user_attrs.get("one_shot_candidate") for t in study.get_trials(deepcopy=False)}
        metric = objectives[0][0]
        for t in chosen:
            if t.number not in have:
                study.enqueue_trial(t.params, user_attrs={"one_shot_candidate": t.number,
                                                          "inherited": t.user_attrs.get("metrics", {}).get(metric)},
                                    skip_if_exists=False)
    finally:
        lock.release()


def run_one_shot(loaded: LoadedSpec, root: Path | None = None, address: str | None = None, live: bool = True,
                 tracking_uri: str | None = None) -> SearchOutcome:
    """Run (or resume) a one-shot search: the three phases above, the last one by :class:`Controller`."""
    from ..runtime import pick_device

    spec = loaded.spec
    cfg = spec.search.one_shot
    paths = SearchPaths(Path(root or spec.search.dir), spec.name)
    source = Path(loaded.locations.source).read_text()
    notes: list[str] = []

    def say(line: str) -> None:  # live: as it happens; otherwise among the outcome's notes
        if live:
            print(line, flush=True)
        else:
            notes.append(line)

    paths.root.mkdir(parents=True, exist_ok=True)
    screening_lock = SearchLock(screening_paths(paths))  # one one-shot run of this search at a time
    screening_lock.acquire()
    try:
        supernet = _supernet(spec, paths, address if address is not None else spec.search.address, say)
        import torch

        net, _ = Supernet.load(supernet_folder(paths), spec, device=pick_device(spec.training.device))
        torch.set_num_threads(max(1, int(spec.search.resources.cpus)))
        store = _screen(spec, paths, source, net, say)
        objectives = objective_directions(spec)
        chosen = choose(store.study, objectives, cfg.top_k)
        if not chosen:
            raise SearchAborted(f"one-shot: none of the screened candidates was scored and feasible (see `nas show "
                                f"{screening_paths(paths).name} --all`); nothing to retrain")
        screened = sum(1 for t in store.study.get_trials(deepcopy=False) if "repeat_of" not in t.user_attrs
                       and t.user_attrs.get("status") in ("ok", "failed"))
        say(f"one-shot phase 2: {screened} candidates scored; retraining the best {len(chosen)} from scratch")
        _enqueue(spec, paths, source, chosen, supernet, screened)
        retrain = spec.search.model_copy(update={
            "n_trials": max(1, len(chosen)), "early_stopping": spec.search.early_stopping.model_copy(
                update={"enabled": False})})
        phase3 = dataclasses.replace(loaded, spec=spec.model_copy(update={"search": retrain}))
        outcome = Controller(phase3, root, address, live, tracking_uri).run()
    finally:
        screening_lock.release()
    return dataclasses.replace(outcome, notes=tuple(notes) + outcome.notes)


# --- `nas supernet export` ------------------------------------------------------------------------------
def export_subnet(root: Path, name: str, out: Path, candidate: int | None = None) -> tuple[int, Architecture]:
    """Write screened candidate ``candidate`` (default: the best by non-dominated rank) of one-shot search
    ``name``, extracted from its supernet with the inherited weights, as a saved model (:mod:`nas.saved`) in
    ``out``: the same files as ``nas export`` writes for a trial, loadable with ``nas.load_model``. Raises
    ``ValueError`` naming what is missing."""
    import tempfile

    import yaml
    from safetensors.torch import save_model

    from ..saved import write_saved
    from .store import load_study

    paths = SearchPaths(root, name)
    folder = supernet_folder(paths)
    if not Supernet.saved(folder):
        raise ValueError(f"search '{name}' has no trained supernet in {folder} (is it a one-shot search, and did "
                         "its phase 1 finish?)")
    try:
        study = load_study(screening_paths(paths))
    except KeyError:
        raise ValueError(f"search '{name}' has screened no candidates yet ({screening_paths(paths).journal})") from None
    text = study.user_attrs.get("spec_text", "")
    spec = spec_from_data(yaml.safe_load(text))
    objectives = [(m, d) for m, d in study.user_attrs["objectives"]]
    trials = {t.number: t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == "ok"}
    if candidate is None:
        best = choose(study, objectives, 1)
        if not best:
            raise ValueError(f"search '{name}' has no scored, feasible candidate")
        candidate = best[0].number
    if candidate not in trials:
        raise ValueError(f"search '{name}' has no screened candidate {candidate} (see `nas show {name}.oneshot`)")
    stored = trials[candidate].user_attrs.get("architecture")
    if stored is not None:
        arch = Architecture.model_validate(stored)
    else:  # sampled again from its parameters
        from optuna.trial import FixedTrial

        from ..space import sample_architecture

        arch = sample_architecture(spec, FixedTrial(trials[candidate].params))
    net, _ = Supernet.load(folder, spec)
    model = net.extract(arch)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, f"{tmp}/w.safetensors")  # handles the shared position module
        weights = Path(f"{tmp}/w.safetensors").read_bytes()
    write_saved(out, weights, arch.model_dump_json(indent=2), spec.task, text)
    return candidate, arch
