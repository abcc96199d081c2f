"""MLflow logging of one search: one parent run per search, one child run per trial. MLflow is a view of the
study journal, never a source of truth: a search goes on when the tracking store is lost, corrupt or
unreachable, and :meth:`SearchTracker.sync` rebuilds whatever the store lacks from the journal when it is
back (at start, when a lost store answers again, and at the end).

Every write comes from the search driver process, so a local SQLite store is safe (it is unsafe with
parallel writers). Runs are found by trial number (the ``trial_number`` tag under the parent), so a run
rebuilt after a loss is found like the original; the study's ``mlflow_run_ids`` attribute maps trial numbers
to the runs now holding them.

Layout of a child run, named ``t007 <architecture>`` (``★ t007 ...`` while on the front): params = every
setting of the architecture under the names the study gives them (``model.d_model``, ``position.rope.base``:
:func:`nas.space.architecture_params`) and the kernel that ran in each attention/norm module
(``kernel.layers.0.attention = sdpa:flash``); metrics = every number the journal holds for the trial under
its own name (:func:`trial_metrics`: the objectives, every measured figure, and whatever else a trial records
as numbers), and ``train_loss`` stepped by training step; tags = ``status``, ``failure_reason``, ``pareto``
(true/false), ``pareto_rank``, ``feasible``, ``trial_number``, ``info.*`` (device, seconds), and ``attempt`` /
``previous_failure`` when a trial ran again after its worker died; structured info (the kernels) as JSON under
``info/``. Pareto-optimal trials hold an MLflow pyfunc model ``model`` (:mod:`nas.mlflow_model`).

The parent holds the YAML, the resolved spec (flat params and ``spec/resolved.json``), the plugins and their
versions, ``hypervolume`` stepped by finished trial, the front's artifacts (CSV, JSON, PNG per objective
pair, interactive HTML), and a description (``mlflow.note.content``) with the front as a table linking each
front trial. The experiment is tagged for the UI's training view and holds a saved view of the front
(:data:`nas.tracking.FRONT_VIEW`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import __version__
from ..architecture import Architecture
from ..report import Front
from ..space import architecture_params
from ..spec import Spec, objective_directions, values
from ..tracking import FRONT_VIEW, column, flatten_params, log_params, open_experiment, save_view, tracking_uri
from .store import trial_status

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

__all__ = ["SearchTracker", "TRACKED_INFO", "run_label", "run_name", "trial_metrics", "front_markdown"]

T = TypeVar("T")

#: What of a trial's ``info`` is kept in the journal (to rebuild the run from) and logged: scalars as ``info.*``
#: tags, mappings as JSON under ``info/``.
TRACKED_INFO = ("device", "latency_threads", "seconds", "train_seconds", "steps", "measured_alone", "kernels")
RETRY_SECONDS = 10.0  # how often a search whose store stopped answering tries it again
#: User attributes of a trial that are bookkeeping, not measurements (any other number is a metric).
_NOT_METRICS = frozenset({"metrics", "info", "curve", "constraints", "architecture", "summary", "reason",
                          "mlflow_run_id", "attempts", "retry_of", "interrupted", "repeat_of", "arch_key", "status",
                          "rungs", "busy"})


def run_label(arch: Architecture) -> str:
    """The architecture part of a trial's run name: the one place that decides how runs read."""
    return arch.summary()


def run_name(number: int, label: str, pareto: bool = False) -> str:
    """``t007 softmax+rope d64 L2 H4``, starred on the front: sorts by trial, scans by architecture."""
    return f"{'★ ' if pareto else ''}t{number:03d} {label}"


def trial_metrics(attrs: dict[str, Any]) -> dict[str, float]:
    """Every number the journal holds for a trial (its user attributes), under one name each: the measured
    metrics by their own names (as the spec's objectives and constraints and ``nas show`` name them), then any
    other numeric attribute by its name, and a mapping of numbers as ``name.key`` (``verified.latency_ms``)."""
    out = {k: float(v) for k, v in attrs.get("metrics", {}).items() if _is_number(v)}
    for key, value in attrs.items():
        if key in _NOT_METRICS:
            continue
        if _is_number(value):
            out[key] = float(value)
        elif isinstance(value, dict) and value and all(_is_number(v) for v in value.values()):
            out.update({f"{key}.{k}": float(v) for k, v in value.items()})
    return out


class SearchTracker:
    """Writes one search to MLflow, and stays out of the search's way when MLflow fails.

    Any exception from MLflow turns the tracker offline: later writes are skipped (the journal has them) and the
    store is tried again every ``RETRY_SECONDS``; :meth:`reconnect` says when it answers, and the controller then
    calls :meth:`sync`. ``say`` reports each change of state on the terminal.
    """

    def __init__(self, root: Path, experiment: str, uri: str | None = None,
                 say: Callable[[str], None] = lambda line: None):
        self.root, self.experiment, self.say = root, experiment, say
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri(root)
        self.parent_id = ""
        self.runs: dict[int, str] = {}  # trial number -> the run that holds it
        self.labels: dict[int, str] = {}  # trial number -> its architecture label (run names)
        self.offline: str | None = None  # why MLflow is not being written to, or None
        self._retry_at = 0.0
        self._client: MlflowClient | None = None
        self.experiment_id = ""
        # an unreachable server should cost seconds, not MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._set_aside_corrupt_store()  # before MLflow opens it (it keeps one engine per store for the process)
        self._connect()

    # -- connection ------------------------------------------------------------------------------------
    def _connect(self) -> bool:
        try:
            self._client, self.experiment_id = open_experiment(self.root, self.experiment, self.uri)
        except Exception as exc:
            self._lost(exc)
            return False
        return True

    def _set_aside_corrupt_store(self) -> bool:
        """A local SQLite store that is not a database any more is moved aside (never deleted), so a fresh one
        can be rebuilt from the journal. True when it was."""
        path = self.root / "mlflow.db"
        if self.uri != tracking_uri(self.root) or not path.exists():
            return False
        import sqlite3

        try:
            with sqlite3.connect(path) as db:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                if verdict == "ok":
                    return False
        except sqlite3.DatabaseError as exc:
            verdict = str(exc)
        aside = path.with_name(f"mlflow.db.corrupt-{int(time.time())}")
        path.rename(aside)
        self.say(f"warning: the MLflow store {path} is corrupt ({verdict}); moved to {aside}; a new one is rebuilt "
                 "from the study journal")
        return True

    def _lost(self, exc: BaseException) -> None:
        first = self.offline is None
        self.offline = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if first:
            self.say(f"warning: MLflow ({self.uri}) is not answering ({self.offline}); the search goes on and "
                     "writes the study journal only; the runs are rebuilt from it when MLflow is back")

    def reconnect(self) -> bool:
        """True when the tracker was offline and the store answers again (then call :meth:`sync`)."""
        if self.offline is None or time.monotonic() < self._retry_at:
            return False
        if not self._connect():
            return False
        try:
            assert self._client is not None
            self._client.search_experiments(max_results=1)
        except Exception as exc:
            self._lost(exc)
            return False
        self.offline = None
        self.say(f"MLflow ({self.uri}) answers again; rebuilding what it missed from the study journal")
        return True

    def _guard(self, fn: Callable[["MlflowClient"], T], default: T) -> T:
        if self.offline is not None or self._client is None:
            return default
        try:
            return fn(self._client)
        except Exception as exc:
            self._lost(exc)
            return default

    # -- the search --------------------------------------------------------------------------------
    def start_search(self, name: str, spec: Spec, yaml_path: Path, plugins: list[dict[str, str]],
                     run_id: str | None) -> str:
        """Reopen the parent run ``run_id`` (on resume) or create it. Returns its id ("" while offline)."""

        def start(client: "MlflowClient") -> str:
            if run_id:
                try:
                    client.update_run(run_id, status="RUNNING")
                    return run_id
                except Exception as exc:  # lost with its store: a new parent, rebuilt below by sync()
                    if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
                        raise
            run = client.create_run(self.experiment_id, run_name=name, tags={
                "nas.kind": "search", "nas.search": name, "nas.version": __version__,
                "mlflow.note.content": f"Search `{name}`: its front appears here as trials finish."})
            resolved = spec.model_dump(mode="json")
            params = flatten_params(resolved)
            params.update({f"plugin.{p['kind']}.{p['name']}": f"{p['provider']}=={p['version']}" for p in plugins})
            log_params(client, run.info.run_id, params)
            client.log_artifact(run.info.run_id, str(yaml_path), "spec")
            client.log_text(run.info.run_id, json.dumps(resolved, indent=2), "spec/resolved.json")
            client.log_text(run.info.run_id, json.dumps(plugins, indent=2), "spec/plugins.json")
            return str(run.info.run_id)

        self.spec = spec
        self.parent_id = self._guard(start, "")
        self._start_args = (name, spec, yaml_path, plugins)
        if self.parent_id:
            self._guard(self._save_front_view, None)
        return self.parent_id

    def _save_front_view(self, client: "MlflowClient") -> None:
        """The experiment's saved view of the front: its trials only, best first on the first objective, the
        objectives as columns, then the searched parameters."""
        objectives = objective_directions(self.spec)
        first, direction = objectives[0]
        state = {
            "searchFilter": "tags.pareto = 'true'",
            "orderByKey": column("metrics", first), "orderByAsc": direction == "minimize",
            "selectedColumns": [column("attributes", "Models")] + [column("metrics", m) for m, _ in objectives]
            + [column("params", p) for p in sorted(searched_params(self.spec))],
        }
        save_view(client, self.experiment_id, FRONT_VIEW, f"Pareto front of {self.spec.name}", state)

    def end_search(self, status: str = "FINISHED") -> None:
        self._guard(lambda c: c.set_terminated(self.parent_id, status), None)

    def log_hypervolume(self, value: float, step: int) -> None:
        self._guard(lambda c: c.log_metric(self.parent_id, "hypervolume", value, step=step), None)

    def log_front(self, folder: Path) -> None:
        self._guard(lambda c: c.log_artifacts(self.parent_id, str(folder), "front"), None)

    def describe(self, front: Front, hypervolume: float | None, reference: list[float] | None) -> None:
        """Write the front into the parent run's description (shown on its page in the UI)."""
        text = front_markdown(self.spec, front, hypervolume, reference, self.experiment_id, self.runs)
        self._guard(lambda c: c.set_tag(self.parent_id, "mlflow.note.content", text), None)

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, number: int, arch: Architecture) -> str:
        """Create trial ``number``'s run; returns its id ("" while offline)."""
        label = self.labels[number] = run_label(arch)
        params = architecture_params(arch, self.spec.model.per_layer)

        def start(client: "MlflowClient") -> str:
            run = client.create_run(
                self.experiment_id, run_name=run_name(number, label),
                tags={"mlflow.parentRunId": self.parent_id, "nas.kind": "trial", "trial_number": str(number),
                      "architecture": label},
            )
            log_params(client, run.info.run_id, {k: _param_text(v) for k, v in params.items()})
            return str(run.info.run_id)

        run_id = self._guard(start, "")
        if run_id:
            self.runs[number] = run_id
        return run_id

    def finish_trial(self, number: int, status: str, attrs: dict[str, Any]) -> None:
        """Log a finished trial from what the journal holds for it (its user attributes: metrics, reason,
        curve, info and any other numbers) and close its run (FINISHED for ok/infeasible/stopped, FAILED for failed)."""
        run_id = self.runs.get(number)
        if run_id:
            self._guard(lambda c: _finish(c, run_id, status, attrs), None)

    def _close(self, run_id: str, status: str) -> None:
        self._guard(lambda c: c.set_terminated(run_id, status), None)

    def tag_attempt(self, number: int, attempt: int, previous_failure: str) -> None:
        run_id = self.runs.get(number)
        if run_id:
            self._guard(lambda c: (c.set_tag(run_id, "attempt", str(attempt)),
                                   c.set_tag(run_id, "previous_failure", previous_failure[:4000])), None)

    def kill_trial(self, number: int, reason: str) -> None:
        run_id = self.runs.get(number)
        if run_id:
            self._guard(lambda c: _kill(c, run_id, reason), None)

    def set_pareto(self, number: int, rank: int | None) -> None:
        """Tag trial ``number`` with its Pareto rank (None: infeasible) and star its run's name while it is on
        the front."""
        run_id = self.runs.get(number)
        if not run_id:
            return

        def tag(client: "MlflowClient") -> None:
            client.set_tag(run_id, "pareto", "true" if rank == 0 else "false")
            client.set_tag(run_id, "pareto_rank", str(rank) if rank is not None else "infeasible")
            if number in self.labels:
                client.update_run(run_id, name=run_name(number, self.labels[number], rank == 0))

        self._guard(tag, None)

    def log_verified(self, number: int, metrics: dict[str, float]) -> None:
        """Values measured again at the end, alone: logged beside the first ones as ``verified_<metric>``."""
        run_id = self.runs.get(number)
        if run_id:
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            entries = [Metric(f"verified_{k}", float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
            self._guard(lambda c: c.log_batch(run_id, metrics=entries, tags=[RunTag("verified", "true")]), None)

    def log_model(self, number: int, folder: Path) -> None:
        """Log the saved model in ``folder`` (:mod:`nas.saved`) as trial ``number``'s MLflow pyfunc model
        ``model``, with an input example and its signature."""
        run_id = self.runs.get(number)
        if not run_id or self._guard(lambda c: "nas.model_id" in c.get_run(run_id).data.tags, True):
            return  # offline, or logged by an earlier run of this search
        try:
            assert self._client is not None
            model_id = _log_pyfunc(self._client, self.experiment_id, run_id, folder)
        except Exception as exc:  # a model that cannot be logged is said, and the search still ends well
            self.say(f"warning: trial {number}'s MLflow model was not logged ({type(exc).__name__}: {exc})")
            return
        self._guard(lambda c: c.set_tag(run_id, "nas.model_id", model_id), None)

    # -- the journal is the truth ------------------------------------------------------------------
    def sync(self, study: "optuna.Study", running: Iterable[int] = ()) -> int:
        """Make MLflow show what the journal holds: the parent run, and one run per trial that was submitted,
        finished from the journal (metrics, reason, curve) or KILLED when interrupted. ``running``: trials this
        process is running now (their runs are created if missing and left open). Returns the runs rebuilt."""
        from optuna.trial import TrialState

        if self.offline is not None:
            return 0
        if not self.parent_id or not self._guard(lambda c: bool(c.get_run(self.parent_id)), False):
            if self.offline is not None:
                return 0
            self.parent_id = ""
            self.start_search(*self._start_args, None)
            if not self.parent_id:
                return 0
            study.set_user_attr("mlflow_parent_run_id", self.parent_id)
        children = self._guard(lambda c: c.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'", max_results=50000),
            None)
        if children is None:
            return 0
        by_number = {int(r.data.tags["trial_number"]): r for r in sorted(children, key=lambda r: r.info.start_time)
                     if r.data.tags.get("trial_number", "").isdigit()}
        now_running, rebuilt = set(running), 0
        for t in study.get_trials(deepcopy=False):
            if "architecture" not in t.user_attrs and "mlflow_run_id" not in t.user_attrs:
                continue  # never submitted (ruled out before training): it never had a run
            run = by_number.get(t.number)
            arch = Architecture.model_validate(t.user_attrs["architecture"]) if "architecture" in t.user_attrs else None
            if arch is not None:
                self.labels[t.number] = run_label(arch)
            if run is None:
                if arch is None or not self.start_trial(t.number, arch):
                    return rebuilt
                rebuilt += 1
            else:
                self.runs[t.number] = run.info.run_id
                if run.info.status != "RUNNING" or t.number in now_running:
                    continue
                if run.data.metrics and not t.user_attrs.get("interrupted"):
                    # its results went in as one batch before the store failed: only closing it was lost
                    final = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED"}.get(t.state, "FAILED")
                    self._close(run.info.run_id, final)
                    continue
            if t.number in now_running or t.state == TrialState.WAITING:
                continue
            if t.user_attrs.get("interrupted") or t.state == TrialState.RUNNING:
                self.kill_trial(t.number, t.user_attrs.get("reason") or "interrupted")
            else:
                status = trial_status(t)
                self.finish_trial(t.number, status, t.user_attrs)
                verified = study.user_attrs.get(f"verified.{t.number}")
                if verified:
                    self.log_verified(t.number, verified["metrics"])
        if self.offline is None:
            study.set_user_attr("mlflow_run_ids", {str(n): r for n, r in self.runs.items()})
        return rebuilt


def _finish(client: "MlflowClient", run_id: str, status: str, attrs: dict[str, Any]) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, 0) for k, v in trial_metrics(attrs).items()]
    entries += [Metric("train_loss", float(loss), now, int(step)) for step, loss in attrs.get("curve", [])
                if _is_number(loss)]
    entries += [Metric(f"rung_{k}", float(v), now, int(r["step"])) for r in attrs.get("rungs", [])
                for k, v in r["metrics"].items() if _is_number(v)]  # early stopping: the quality at each rung
    tags = [RunTag("status", status)]
    if attrs.get("reason"):
        tags.append(RunTag("failure_reason", str(attrs["reason"])[:4000]))
    if status == "ok" and "constraints" in attrs:
        tags.append(RunTag("feasible", "true" if all(v <= 0 for v in attrs["constraints"]) else "false"))
    info = attrs.get("info") or {}
    for k, v in info.items():
        if isinstance(v, (dict, list)):  # structured info as JSON, never as a Python repr
            if v:
                client.log_text(run_id, json.dumps(v, indent=2, default=str), f"info/{k}.json")
        elif v is not None:
            tags.append(RunTag(f"info.{k}", str(v)[:4000]))
    if info.get("kernels"):  # which kernel produced the latency figures, one param per module
        log_params(client, run_id, {f"kernel.{path}": str(k) for path, k in info["kernels"].items()})
    for i in range(0, len(entries), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=entries[i: i + 900], tags=tags if i == 0 else [])
    if not entries:
        client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


def _kill(client: "MlflowClient", run_id: str, reason: str) -> None:
    client.set_tag(run_id, "status", "interrupted")
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, "KILLED")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param_text(value: Any) -> str:
    """A param value as YAML writes it: JSON for lists, mappings and booleans, plain text otherwise."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict, bool)) else str(value)


def searched_params(spec: Spec) -> set[str]:
    """The dotted names of the settings ``spec`` searches (a list of choices or a range), as the runs' params
    and the study name them: the model's sizes, the choice of block per kind, each listed block's searched
    fields. (A block with its own define-by-run space may search more; its names start the same way.)"""
    m, out = spec.model, set()
    for k in ("d_model", "n_heads", "n_layers", "norm_placement"):
        choices = values(getattr(m, k))
        if choices is None or len(choices) > 1:
            out.add(f"model.{k}")
    layer_choices = values(m.n_layers)
    n_layers = max(int(c) for c in layer_choices) if layer_choices else int(getattr(m.n_layers, "high", 1))
    for kind, entries in spec.space.model_dump(mode="json").items():
        per_layer = m.per_layer and kind in ("attention", "norm", "ffn")
        for prefix in ([f"layers.{i}.{kind}" for i in range(n_layers)] if per_layer else [kind]):
            if len(entries) > 1:
                out.add(f"{prefix}.type")
            for entry in entries:
                for field, value in entry.items():
                    if field != "type" and (isinstance(value, dict) or (isinstance(value, list) and len(value) > 1)):
                        out.add(f"{prefix}.{entry['type']}.{field}")
    return out


def front_markdown(spec: Spec, front: Front, hypervolume: float | None, reference: list[float] | None,
                   experiment_id: str, runs: dict[int, str]) -> str:
    """The parent run's description: the front as a table (each trial linking to its run), the hypervolume,
    what was searched, and where to look next."""
    objectives = front.objectives
    sign = -1 if objectives[0][1] == "maximize" else 1
    rows = sorted(front.pareto, key=lambda r: sign * r.values[0])
    head = ["trial", "architecture"] + [f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in objectives]
    lines = [f"### Pareto front of `{spec.name}`: {len(rows)} of {len(front.rows)} complete trials", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        run = runs.get(r.number) or r.run_id
        name = f"t{r.number:03d}"
        link = f"[{name}](#/experiments/{experiment_id}/runs/{run})" if run else name
        lines.append("| " + " | ".join([link, r.summary.replace("|", "/")] + [f"{v:.4g}" for v in r.values]) + " |")
    hv = (f"{hypervolume:.6g} (reference point {[float(f'{v:.4g}') for v in reference or []]})"
          if hypervolume is not None else "not yet (it needs two feasible trials)")
    lines += ["", f"**Hypervolume** {hv}", "", "**Searched** " + "; ".join(_spec_summary(spec)), "",
              f"**Next** `nas show {spec.name}` in a terminal (`--all`: every trial). The front alone: filter "
              "`tags.pareto = 'true'`. A front trial's model: `mlflow.pyfunc.load_model(\"runs:/RUN_ID/model\")`, "
              f"or `nas export {spec.name} TRIAL DIR` and then `nas.load_model(DIR)` in Python."]
    return "\n".join(lines)


def _spec_summary(spec: Spec) -> list[str]:
    task = {k: v for k, v in spec.task.model_dump(mode="json").items() if k != "type" and v is not None}
    model = {k: v for k, v in spec.model.model_dump(mode="json").items() if v is not None}
    blocks = {kind: [e["type"] for e in entries] for kind, entries in spec.space.model_dump(mode="json").items()}
    limits = {k: v for k, v in spec.constraints.model_dump().items() if v is not None}
    s = spec.search
    text = lambda v: json.dumps(v) if isinstance(v, (bool, list, dict)) else str(v)
    parts = [f"task {spec.task.type} ({', '.join(f'{k} {text(v)}' for k, v in task.items())})",
             "model " + ", ".join(f"{k} {text(v)}" for k, v in model.items()),
             "blocks " + ", ".join(f"{kind} {'/'.join(types)}" for kind, types in blocks.items()),
             "objectives " + ", ".join(f"{m} ({d[:3]})" for m, d in objective_directions(spec)),
             f"{spec.training.steps} training steps"]
    if limits:
        parts.append("constraints " + ", ".join(f"{k} {v:g}" for k, v in limits.items()))
    parts.append(f"{s.n_trials} trials, {s.concurrency} at a time, sampler {s.sampler.type} (seed {s.seed})")
    return parts


def _log_pyfunc(client: "MlflowClient", experiment_id: str, run_id: str, folder: Path) -> str:
    """Log the saved model in ``folder`` as run ``run_id``'s pyfunc model ``model``, from code
    (:mod:`nas.mlflow_model`, so no class is pickled), with an input example and the signature it implies.
    Returns the logged model's id.

    Written with the client (a logged model, its artifacts, the run's output), not ``mlflow.pyfunc.log_model``:
    that one logs to the fluent API's active run at its global tracking URI, state shared by everything in the
    process (tests run several searches in one)."""
    import tempfile

    import mlflow
    import torch
    from mlflow.entities import LoggedModelOutput, Metric
    from mlflow.models import Model, infer_signature

    from .. import mlflow_model
    from ..saved import load_saved

    saved = load_saved(folder)
    x = saved.task.example_batch(1)[0]
    with torch.inference_mode():
        y = saved.model(x).float().numpy()
    run = client.get_run(run_id)
    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, params=run.data.params,
                                        tags={"nas.trial_run": run_id})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pyfunc.save_model(
                path=f"{tmp}/model", python_model=str(Path(mlflow_model.__file__)), artifacts={"model": str(folder)},
                input_example=x.numpy(), signature=infer_signature(x.numpy(), y),
                mlflow_model=Model(run_id=run_id, model_id=logged.model_id),
                pip_requirements=[f"nas-transformers=={__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}", "safetensors"])
            client.log_model_artifacts(logged.model_id, f"{tmp}/model")
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    # the trial's figures on the model's page too (as log_model does: the run's metrics again, with the model id)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=logged.model_id, run_id=run_id)
                                      for k, v in run.data.metrics.items() if k != "train_loss"])
    return str(logged.model_id)
