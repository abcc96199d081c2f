"""MLflow logging of one search: one parent run per search, one child run per trial.

Every write comes from the search driver process, so a local SQLite store is safe (it is unsafe with
parallel writers). The Optuna journal is the source of truth; :func:`nas.search.reconcile.reconcile` brings
MLflow back in line with it after a crash (runs left RUNNING become KILLED, or are finished from the stored
trial data).

Layout of a child run: params = the architecture as flat keys (``layers.0.attention.type``) and the kernel
that ran in each attention/norm module (``kernel.layers.0.attention = sdpa:flash``); metrics = the
objectives and every measured figure, and ``train_loss`` stepped by training step; tags = ``status``,
``failure_reason``, ``pareto`` (true/false), ``pareto_rank``, ``trial_number``. The parent holds the YAML,
the resolved spec, the plugins and their versions, ``hypervolume`` stepped by finished trial, and the
front's artifacts (CSV, JSON, PNG per objective pair, interactive HTML).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..spec import Spec
from ..tracking import flatten_params, log_params, open_experiment, tracking_uri

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = ["SearchTracker"]


class SearchTracker:
    """Writes one search to MLflow: the experiment named after the search, and its parent run, which
    :meth:`start_search` creates (or reopens on resume) and every later call refers to."""

    def __init__(self, root: Path, experiment: str):
        self.root = root
        self.uri = tracking_uri(root)
        self.client, self.experiment_id = open_experiment(root, experiment)
        self.parent_id = ""

    # -- the search --------------------------------------------------------------------------------
    def start_search(self, name: str, spec: Spec, yaml_path: Path, plugins: list[dict[str, str]],
                     run_id: str | None) -> str:
        """Create the parent run, or reopen ``run_id`` when resuming. Returns the parent run id."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.parent_id = run_id
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"nas.kind": "search", "nas.search": name})
        self.parent_id = run.info.run_id
        params = flatten_params(spec.model_dump(mode="json"))
        params.update({f"plugin.{p['kind']}.{p['name']}": f"{p['provider']}=={p['version']}" for p in plugins})
        log_params(self.client, self.parent_id, params)
        self.client.log_artifact(self.parent_id, str(yaml_path), "spec")
        self.client.log_text(self.parent_id, json.dumps(plugins, indent=2), "spec/plugins.json")
        return self.parent_id

    def end_search(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)

    def log_hypervolume(self, value: float, step: int) -> None:
        self.client.log_metric(self.parent_id, "hypervolume", value, step=step)

    def log_front(self, folder: Path) -> None:
        self.client.log_artifacts(self.parent_id, str(folder), "front")

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, number: int, flat_arch: dict[str, Any], summary: str) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": self.parent_id, "nas.kind": "trial", "trial_number": str(number),
                  "architecture": summary},
        )
        log_params(self.client, run.info.run_id, {k: str(v) for k, v in flat_arch.items()})
        return run.info.run_id

    def finish_trial(self, run_id: str, status: str, metrics: dict[str, float], reason: str | None,
                     curve: Iterable[tuple[int, float]] = (), info: dict[str, Any] | None = None) -> None:
        """Log a finished trial and close its run (FINISHED for ok/infeasible, FAILED for failed)."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
        entries += [Metric("train_loss", float(loss), now, int(step)) for step, loss in curve if _is_number(loss)]
        tags = [RunTag("status", status)]
        if reason:
            tags.append(RunTag("failure_reason", reason[:4000]))
        for k in ("device", "latency_threads", "seconds", "train_seconds", "kernels"):
            if info and info.get(k) is not None:
                tags.append(RunTag(f"info.{k}", str(info[k])[:4000]))
        if info and info.get("kernels"):  # which kernel produced the latency figures, one param per module
            log_params(self.client, run_id, {f"kernel.{path}": str(k) for path, k in info["kernels"].items()})
        for i in range(0, len(entries), 900):  # log_batch takes at most 1000 metrics
            self.client.log_batch(run_id, metrics=entries[i: i + 900], tags=tags if i == 0 else [])
        if not entries:
            self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def kill_trial(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, "status", "interrupted")
        self.client.set_tag(run_id, "failure_reason", reason)
        self.client.set_terminated(run_id, "KILLED")

    def set_pareto(self, run_id: str, rank: int | None) -> None:
        self.client.set_tag(run_id, "pareto", "true" if rank == 0 else "false")
        self.client.set_tag(run_id, "pareto_rank", str(rank) if rank is not None else "none")

    def log_model(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder), "model")

    # -- recovery ----------------------------------------------------------------------------------
    def running_children(self) -> list["Run"]:
        runs: list["Run"] = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'",
            max_results=10000,
        )
        return runs


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
