"""MLflow logging of a search: one parent run per search, one child run per trial.

Every write comes from the search driver process, so a local SQLite store is safe (it is unsafe with
parallel writers). The Optuna journal is the source of truth; :meth:`Tracker.reconcile` brings MLflow back in
line with it after a crash (the controller's reconciliation: runs left RUNNING become KILLED, or are finished
from the stored trial data).

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
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Tracker", "tracking_uri"]

_MAX_PARAM = 500  # MLflow params are short strings; longer values are cut with a marker


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        text = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
        out[prefix[:-1]] = text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."
    return out


class Tracker:
    """Writes a search to MLflow. ``root`` holds ``mlflow.db`` and the ``mlartifacts`` folder."""

    def __init__(self, root: Path, experiment: str):
        import mlflow
        from mlflow import MlflowClient

        self._mlflow = mlflow
        self.root = root
        self.uri = tracking_uri(root)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = (root / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = found.experiment_id

    # -- the search --------------------------------------------------------------------------------
    def start_search(self, name: str, spec: Any, yaml_path: Path, plugins: list[dict[str, str]],
                     run_id: str | None) -> str:
        """Create the parent run, or reopen ``run_id`` when resuming. Returns the parent run id."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"nas.kind": "search", "nas.search": name})
        rid = run.info.run_id
        params = _flatten(spec.model_dump(mode="json"))
        params.update({f"plugin.{p['kind']}.{p['name']}": f"{p['provider']}=={p['version']}" for p in plugins})
        self._log_params(rid, params)
        self.client.log_artifact(rid, str(yaml_path), "spec")
        self.client.log_text(rid, json.dumps(plugins, indent=2), "spec/plugins.json")
        return rid

    def end_search(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def log_hypervolume(self, run_id: str, value: float, step: int) -> None:
        self.client.log_metric(run_id, "hypervolume", value, step=step)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, parent_id: str, number: int, flat_arch: dict[str, Any], summary: str) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": parent_id, "nas.kind": "trial", "trial_number": str(number),
                  "architecture": summary},
        )
        self._log_params(run.info.run_id, {k: str(v) for k, v in flat_arch.items()})
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
            self._log_params(run_id, {f"kernel.{path}": str(k) for path, k in info["kernels"].items()})
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
    def running_children(self, parent_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
            max_results=10000,
        )

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 90):  # log_batch takes at most 100 params
            self.client.log_batch(run_id, params=items[i: i + 90])


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
