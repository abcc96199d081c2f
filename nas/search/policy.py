"""The ask/tell policy: what to try next, and what a finished trial counts as.

:class:`AskTell` asks the study for a trial, samples an architecture from it, rules out architectures over
``constraints.max_params`` before anything is trained (the sampler is told they are PRUNED), and tells the
study each result: the objective values and the soft constraints for an ok trial, FAIL for a failed one.
It keeps the counts the controller stops and aborts on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..architecture import Architecture
from ..blocks import Task
from ..model import build_task, meta_costs
from ..space import sample_architecture
from ..spec import Spec
from ..trial import Status, TrialResult
from .store import SearchAborted, StudyStore
from .tracking import TRACKED_INFO

if TYPE_CHECKING:
    import optuna
    import torch

__all__ = ["AskTell", "Proposal", "Told", "Progress", "soft_constraints"]

_SOFT_CONSTRAINTS = {  # spec.constraints field -> metric (max_params is hard: checked before training)
    "max_flops_per_token": "flops_per_token",
    "max_latency_ms": "latency_ms",
    "max_train_memory_mb": "train_memory_mb",
    "max_infer_memory_mb": "infer_memory_mb",
}


def soft_constraints(spec: Spec) -> list[tuple[str, float]]:
    """``[(metric, limit)]`` of the soft constraints the spec sets."""
    limits = [(metric, getattr(spec.constraints, key)) for key, metric in _SOFT_CONSTRAINTS.items()]
    return [(metric, float(limit)) for metric, limit in limits if limit is not None]


@dataclass
class Progress:
    """Counts of this search so far (the finished ones restored from the study on resume)."""

    done: int = 0  # complete + failed: what counts towards n_trials
    failed: int = 0
    infeasible: int = 0
    consecutive_failures: int = 0
    consecutive_infeasible: int = 0


@dataclass(frozen=True)
class Proposal:
    """A sampled architecture to train, with the study's trial it belongs to."""

    trial: "optuna.trial.Trial"
    arch: Architecture


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
        self.progress = Progress(done=counts.finished, failed=counts.failed, infeasible=counts.infeasible)
        self._sizing: tuple[Task, "torch.Tensor"] | None = None  # (task, example input) for max_params checks

    @property
    def max_infeasible(self) -> int:
        return max(50, self.spec.search.max_consecutive_failures)

    def ask(self) -> Proposal | None:
        """A trial to run, or None when the sample was ruled out (infeasible, or its sampling raised)."""
        from optuna.trial import TrialState

        study = self.store.study
        trial = study.ask()
        try:
            arch = sample_architecture(self.spec, trial)
        except Exception as exc:  # a block's own space raised: record it as a failed sample, go on
            trial.set_user_attr("reason", f"error while sampling: {type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            self._count("failed")
            self.check_failures()
            return None
        trial.set_user_attr("summary", arch.summary())
        limit = self.spec.constraints.max_params
        if limit is not None:
            if self._sizing is None:  # the task and an example input, built once: sizing runs every sample
                task = build_task(self.spec)
                self._sizing = (task, task.example_batch(1)[0])
            params = meta_costs(arch, *self._sizing)["params"]
            if params > limit:
                trial.set_user_attr("reason", f"infeasible: {int(params)} parameters > max_params {limit}")
                trial.set_user_attr("metrics", {"params": params})
                study.tell(trial, state=TrialState.PRUNED)
                self._count("infeasible")
                if self.progress.consecutive_infeasible >= self.max_infeasible:
                    raise SearchAborted(f"{self.max_infeasible} samples in a row were infeasible "
                                        "(over constraints.max_params?); widen the space or the limit")
                return None
        self.progress.consecutive_infeasible = 0
        return Proposal(trial, arch)

    def tell(self, trial: "optuna.trial.Trial", result: TrialResult) -> Told:
        """Record ``result`` in the study; an ok result with a non-finite objective counts as failed."""
        from optuna.trial import TrialState

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
        if reason:
            trial.set_user_attr("reason", reason)
        if status == "ok" and values is not None:
            limits = soft_constraints(self.spec)
            violations = [metrics[m] - limit for m, limit in limits]
            trial.set_user_attr("constraints", violations)  # our own front is computed over feasible trials
            for (metric, _), violation in zip(limits, violations):
                trial.set_constraint(f"max_{metric}", violation)  # <= 0: satisfied; read by the sampler
            self.store.study.tell(trial, values)
            self._count("ok")
        elif status == "infeasible":
            self.store.study.tell(trial, state=TrialState.PRUNED)
            self.progress.infeasible += 1  # ruled out in the worker; not a sample in a row that ask() aborts on
        else:
            self.store.study.tell(trial, state=TrialState.FAIL)
            self._count("failed")
        return Told(status, reason)

    def _count(self, status: str) -> None:
        p = self.progress
        if status == "ok":
            p.done += 1
            p.consecutive_failures = 0
        elif status == "failed":
            p.done += 1
            p.failed += 1
            p.consecutive_failures += 1
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
