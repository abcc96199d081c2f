"""The ask/tell policy: what to try next, and what a finished trial counts as.

:class:`AskTell` asks the study for a trial and samples an architecture from it. An architecture already
trained in this search (the same canonical key: the resolved architecture, every default filled in) is never
trained again: a repeat of a finished trial is told that trial's outcome at once, and a repeat of a running
one waits for it. Architectures over ``constraints.max_params`` or ``max_flops_per_token`` are ruled out here
on the meta device; latency and memory limits are checked by the trial on the untrained model, before any
training. Either way an infeasible trial is told PRUNED with its constraint values, so the sampler learns the
infeasible region. It keeps the counts the controller stops and aborts on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..architecture import Architecture
from ..blocks import Task
from ..model import build_task, meta_costs
from ..space import sample_architecture
from ..spec import Spec
from ..trial import Status, TrialResult, broken_limit, limits_of
from .store import SearchAborted, StudyStore, trial_status
from .tracking import TRACKED_INFO

if TYPE_CHECKING:
    import optuna
    import torch

__all__ = ["AskTell", "Proposal", "Told", "Progress", "architecture_key"]


def architecture_key(arch: Architecture) -> str:
    """The canonical key of a resolved architecture: equal for architectures that build the same model."""
    return hashlib.sha256(json.dumps(arch.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Progress:
    """Counts of this search so far (the finished ones restored from the study on resume)."""

    done: int = 0  # trained architectures (complete, failed, stopped early): what counts towards n_trials
    failed: int = 0
    infeasible: int = 0
    stopped: int = 0
    repeats: int = 0
    steps: int = 0  # training steps run, over all trials
    consecutive_failures: int = 0
    consecutive_infeasible: int = 0
    consecutive_repeats: int = 0


@dataclass(frozen=True)
class Proposal:
    """A sampled architecture, with the study's trial it belongs to. ``repeat_of``: the running trial with the
    same architecture, whose outcome this one waits for instead of training."""

    trial: "optuna.trial.Trial"
    arch: Architecture
    key: str
    repeat_of: int | None = None


@dataclass(frozen=True)
class Told:
    """What a result counted as once told to the study."""

    status: Status
    reason: str | None


class AskTell:
    """Asks for architectures and tells results, for one study."""

    def __init__(self, spec: Spec, store: StudyStore, objectives: list[tuple[str, str]]):
        self.spec, self.store, self.objectives = spec, store, objectives
        counts = store.counts()
        self.progress = Progress(done=counts.finished, failed=counts.failed, infeasible=counts.infeasible,
                                 stopped=counts.stopped, repeats=counts.repeats, steps=counts.steps)
        self._sizing: tuple[Task, "torch.Tensor"] | None = None  # (task, example input) for the meta-device checks
        self.trained: dict[str, int] = {}  # architecture key -> the trial that holds its outcome
        self.running: dict[str, int] = {}  # architecture key -> the trial training it now
        from optuna.trial import TrialState

        for t in store.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                                 TrialState.PRUNED)):
            key = t.user_attrs.get("arch_key")
            if key and "repeat_of" not in t.user_attrs and not t.user_attrs.get("interrupted"):
                self.trained.setdefault(key, t.number)

    @property
    def max_infeasible(self) -> int:
        return max(50, self.spec.search.max_consecutive_failures)

    def ask(self) -> Proposal | None:
        """A trial to run (or to wait for), or None when the sample was settled at once: ruled out as
        infeasible, a repeat of a finished trial, or its sampling raised."""
        from optuna.trial import TrialState

        study = self.store.study
        trial = study.ask()
        try:
            arch = sample_architecture(self.spec, trial)
        except Exception as exc:  # a block's own space raised: record it as a failed sample, go on
            trial.set_user_attr("reason", f"error while sampling: {type(exc).__name__}: {exc}")
            trial.set_user_attr("status", "failed")
            study.tell(trial, state=TrialState.FAIL)
            self._count("failed")
            self.check_failures()
            return None
        key = architecture_key(arch)
        trial.set_user_attr("summary", arch.summary())
        trial.set_user_attr("arch_key", key)
        if key in self.trained and self.spec.search.deduplicate:
            self.tell_repeat(trial, self.trained[key])
            return None
        if key in self.running and self.spec.search.deduplicate:
            self._count_repeat()  # told when that trial finishes
            return Proposal(trial, arch, key, repeat_of=self.running[key])
        self.progress.consecutive_repeats = 0
        if self.spec.constraints.max_params is not None or self.spec.constraints.max_flops_per_token is not None:
            if self._sizing is None:  # the task and an example input, built once: sizing runs every sample
                task = build_task(self.spec)
                self._sizing = (task, task.example_batch(self.spec.measure.batch_size)[0])
            sized = meta_costs(arch, *self._sizing)
            reason = broken_limit(self.spec, sized)
            if reason is not None:
                trial.set_user_attr("metrics", sized)
                self._tell_infeasible(trial, sized, reason)
                self.trained[key] = trial.number
                self._count("infeasible")
                if self.progress.consecutive_infeasible >= self.max_infeasible:
                    raise SearchAborted(f"{self.max_infeasible} samples in a row were infeasible "
                                        "(over constraints.max_params or max_flops_per_token?); widen the space "
                                        "or the limit")
                return None
        self.progress.consecutive_infeasible = 0
        self.running[key] = trial.number
        return Proposal(trial, arch, key)

    def _tell_infeasible(self, trial: "optuna.trial.Trial", metrics: dict[str, float], reason: str) -> None:
        """PRUNED, with the constraint values that were measured (> 0: broken), which the samplers read."""
        from optuna.trial import TrialState

        trial.set_user_attr("reason", reason)
        trial.set_user_attr("status", "infeasible")
        for key, metric, limit in limits_of(self.spec):
            if metric in metrics:
                trial.set_constraint(key, metrics[metric] - limit)
        self.store.study.tell(trial, state=TrialState.PRUNED)

    def tell(self, trial: "optuna.trial.Trial", result: TrialResult, key: str | None = None) -> Told:
        """Record ``result`` in the study; an ok result with a non-finite objective counts as failed."""
        from optuna.trial import TrialState

        if key is not None:
            self.running.pop(key, None)
            self.trained[key] = trial.number
        metrics, status, reason = result.metrics, result.status, result.reason
        values = None
        if status == "ok":
            values = [metrics.get(m, math.nan) for m, _ in self.objectives]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                named = dict(zip([m for m, _ in self.objectives], values))
                status, reason, values = "failed", f"nan: non-finite objective values {named}", None
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("curve", [list(p) for p in result.curve])  # so a lost MLflow run can be rebuilt
        trial.set_user_attr("info", {k: result.info[k] for k in TRACKED_INFO if result.info.get(k) is not None})
        trial.set_user_attr("steps", result.steps)
        if result.info.get("busy"):  # the wall-clock span the worker spent on it (controller overhead)
            trial.set_user_attr("busy", result.info["busy"])
        if result.rungs:
            trial.set_user_attr("rungs", result.rungs)
        trial.set_user_attr("status", status)
        self.progress.steps += result.steps
        if reason:
            trial.set_user_attr("reason", reason)
        if status == "ok" and values is not None:
            violations = []
            for k, metric, limit in limits_of(self.spec):  # all <= 0: the trial was measured within them
                if metric in metrics:
                    violations.append(metrics[metric] - limit)
                    trial.set_constraint(k, violations[-1])
            trial.set_user_attr("constraints", violations)
            self.store.study.tell(trial, values)
            self._count("ok")
        elif status == "infeasible":
            self._tell_infeasible(trial, metrics, reason or "infeasible")
            self.progress.infeasible += 1  # ruled out in the worker; not a sample in a row that ask() aborts on
        elif status == "stopped":
            self.store.study.tell(trial, state=TrialState.PRUNED)
            self._count("stopped")
        else:
            self.store.study.tell(trial, state=TrialState.FAIL)
            self._count("failed")
        return Told(status, reason)

    def tell_repeat(self, trial: "optuna.trial.Trial", of: int, counted: bool = False) -> Told:
        """Tell ``trial`` the outcome of trial ``of``, which trained the same architecture: the same values (the
        sampler learns from it as from the original), never trained again, not counted towards n_trials."""
        from optuna.trial import TrialState

        original = self.store.study.get_trials(deepcopy=False)[of]
        attrs = original.user_attrs
        for name in ("metrics", "reason"):
            if name in attrs:
                trial.set_user_attr(name, attrs[name])
        status = trial_status(original)
        trial.set_user_attr("repeat_of", of)
        trial.set_user_attr("status", status)
        for name, value in original.constraints.items():
            trial.set_constraint(name, value)
        if original.state == TrialState.COMPLETE:
            self.store.study.tell(trial, list(original.values))
        else:
            self.store.study.tell(trial, state=original.state if original.state == TrialState.PRUNED
                                  else TrialState.FAIL)
        if not counted:  # (a repeat that waited for a running trial was counted when it was asked for)
            self._count_repeat()
        return Told(cast(Status, status), attrs.get("reason"))

    @property
    def exhausted(self) -> str | None:
        """Why the search should end early: the sampler keeps proposing architectures already trained."""
        n = self.progress.consecutive_repeats
        if n >= self.spec.search.max_consecutive_repeats:
            return (f"the sampler proposed {n} architectures in a row that were already trained (search.max_"
                    "consecutive_repeats): the space looks exhausted")
        return None

    def _count_repeat(self) -> None:
        self.progress.repeats += 1
        self.progress.consecutive_repeats += 1

    def _count(self, status: str) -> None:
        p = self.progress
        if status == "ok":
            p.done += 1
            p.consecutive_failures = 0
        elif status == "failed":
            p.done += 1
            p.failed += 1
            p.consecutive_failures += 1
        elif status == "stopped":
            p.done += 1
            p.stopped += 1
            p.consecutive_failures = 0
        else:
            p.infeasible += 1
            p.consecutive_infeasible += 1

    def check_failures(self) -> None:
        """Abort after ``search.max_consecutive_failures`` failures in a row."""
        limit = self.spec.search.max_consecutive_failures
        if self.progress.consecutive_failures >= limit:
            raise SearchAborted(f"{self.progress.consecutive_failures} trials failed in a row (search.max_consecutive_"
                                f"failures = {limit}); see the failure reasons above or with "
                                f"`nas show {self.spec.name}`")
