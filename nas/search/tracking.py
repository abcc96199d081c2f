"""MLflow logging of one search: one parent run per search, one child run per trial. MLflow is a view of the
study journal, never a source of truth: a search goes on when the tracking store is lost, corrupt or
unreachable, and :meth:`SearchTracker.sync` rebuilds whatever the store lacks from the journal when it is
back (at start, when a lost store answers again, and at the end).

Every write comes from the search driver process, so a local SQLite store is safe (it is unsafe with
parallel writers). Runs are found by trial number (the ``trial_number`` tag under the parent), so a run
rebuilt after a loss is found like the original; the study's ``mlflow_run_ids`` attribute maps trial numbers
to the runs now holding them.

Layout of a child run: params = the architecture as flat keys (``layers.0.attention.type``) and the kernel
that ran in each attention/norm module (``kernel.layers.0.attention = sdpa:flash``); metrics = the
objectives and every measured figure, and ``train_loss`` stepped by training step; tags = ``status``,
``failure_reason``, ``pareto`` (true/false), ``pareto_rank``, ``trial_number``, and ``attempt`` /
``previous_failure`` when a trial ran again after its worker died. The parent holds the YAML, the resolved
spec, the plugins and their versions, ``hypervolume`` stepped by finished trial, and the front's artifacts
(CSV, JSON, PNG per objective pair, interactive HTML).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..architecture import Architecture
from ..spec import Spec
from ..tracking import flatten_params, log_params, open_experiment, tracking_uri
from .store import trial_status

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

__all__ = ["SearchTracker", "TRACKED_INFO"]

T = TypeVar("T")

#: What of a trial's ``info`` becomes tags (and is kept in the journal to rebuild the run from).
TRACKED_INFO = ("device", "latency_threads", "seconds", "train_seconds", "steps", "measured_alone", "kernels")
RETRY_SECONDS = 10.0  # how often a search whose store stopped answering tries it again


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
            run = client.create_run(self.experiment_id, run_name=name, tags={"nas.kind": "search", "nas.search": name})
            params = flatten_params(spec.model_dump(mode="json"))
            params.update({f"plugin.{p['kind']}.{p['name']}": f"{p['provider']}=={p['version']}" for p in plugins})
            log_params(client, run.info.run_id, params)
            client.log_artifact(run.info.run_id, str(yaml_path), "spec")
            client.log_text(run.info.run_id, json.dumps(plugins, indent=2), "spec/plugins.json")
            return str(run.info.run_id)

        self.parent_id = self._guard(start, "")
        self._start_args = (name, spec, yaml_path, plugins)
        return self.parent_id

    def end_search(self, status: str = "FINISHED") -> None:
        self._guard(lambda c: c.set_terminated(self.parent_id, status), None)

    def log_hypervolume(self, value: float, step: int) -> None:
        self._guard(lambda c: c.log_metric(self.parent_id, "hypervolume", value, step=step), None)

    def log_front(self, folder: Path) -> None:
        self._guard(lambda c: c.log_artifacts(self.parent_id, str(folder), "front"), None)

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, number: int, flat_arch: dict[str, Any], summary: str) -> str:
        """Create trial ``number``'s run; returns its id ("" while offline)."""

        def start(client: "MlflowClient") -> str:
            run = client.create_run(
                self.experiment_id, run_name=f"trial-{number}",
                tags={"mlflow.parentRunId": self.parent_id, "nas.kind": "trial", "trial_number": str(number),
                      "architecture": summary},
            )
            log_params(client, run.info.run_id, {k: str(v) for k, v in flat_arch.items()})
            return str(run.info.run_id)

        run_id = self._guard(start, "")
        if run_id:
            self.runs[number] = run_id
        return run_id

    def finish_trial(self, number: int, status: str, metrics: dict[str, float], reason: str | None,
                     curve: Iterable[tuple[int, float]] = (), info: dict[str, Any] | None = None,
                     rungs: Iterable[dict[str, Any]] = ()) -> None:
        """Log a finished trial and close its run (FINISHED for ok/infeasible/stopped, FAILED for failed);
        the quality at each rung of early stopping as ``rung_<metric>`` stepped by training step."""
        run_id = self.runs.get(number)
        if run_id:
            self._guard(lambda c: _finish(c, run_id, status, metrics, reason, list(curve), info or {}, list(rungs)),
                        None)

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
        run_id = self.runs.get(number)
        if run_id:
            self._guard(lambda c: (c.set_tag(run_id, "pareto", "true" if rank == 0 else "false"),
                                   c.set_tag(run_id, "pareto_rank", str(rank) if rank is not None else "none")), None)

    def log_verified(self, number: int, metrics: dict[str, float]) -> None:
        """Values measured again at the end, alone: logged beside the first ones as ``verified_<metric>``."""
        run_id = self.runs.get(number)
        if run_id:
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            entries = [Metric(f"verified_{k}", float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
            self._guard(lambda c: c.log_batch(run_id, metrics=entries, tags=[RunTag("verified", "true")]), None)

    def log_model(self, number: int, folder: Path) -> None:
        run_id = self.runs.get(number)
        if run_id:
            self._guard(lambda c: c.log_artifacts(run_id, str(folder), "model"), None)

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
            if run is None:
                arch = t.user_attrs.get("architecture")
                flat = Architecture.model_validate(arch).flat() if arch else {}
                if not self.start_trial(t.number, flat, t.user_attrs.get("summary", "")):
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
                self.finish_trial(t.number, status, t.user_attrs.get("metrics", {}), t.user_attrs.get("reason"),
                                  [tuple(p) for p in t.user_attrs.get("curve", [])], t.user_attrs.get("info"),
                                  t.user_attrs.get("rungs", []))
                verified = study.user_attrs.get(f"verified.{t.number}")
                if verified:
                    self.log_verified(t.number, verified["metrics"])
        if self.offline is None:
            study.set_user_attr("mlflow_run_ids", {str(n): r for n, r in self.runs.items()})
        return rebuilt


def _finish(client: "MlflowClient", run_id: str, status: str, metrics: dict[str, float], reason: str | None,
            curve: list[tuple[int, float]], info: dict[str, Any], rungs: list[dict[str, Any]]) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
    entries += [Metric("train_loss", float(loss), now, int(step)) for step, loss in curve if _is_number(loss)]
    entries += [Metric(f"rung_{k}", float(v), now, int(r["step"])) for r in rungs for k, v in r["metrics"].items()
                if _is_number(v)]
    tags = [RunTag("status", status)]
    if reason:
        tags.append(RunTag("failure_reason", reason[:4000]))
    for k in TRACKED_INFO:
        if info.get(k) is not None:
            tags.append(RunTag(f"info.{k}", str(info[k])[:4000]))
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
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
