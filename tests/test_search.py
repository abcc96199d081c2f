"""The search controller end to end: Optuna ask/tell in the driver, trials as Ray tasks, MLflow tracking.

Searches run in this process through ``nas.cli.main`` (the controller starts a local Ray with every CPU once;
the module shuts it down at the end), except the kill-and-resume test, which needs a process to kill. Every
space is tiny (MQAR, vocab 16, seq_len 16, d_model 16-32, one layer, 20 steps), so a trial takes 1-2 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nas import registry
from nas.cli import main

TASK = "task: {type: mqar, vocab_size: 16, seq_len: 16, num_kv_pairs: 2, test_examples: 64}"
TRAINING = ("training: {steps: 20, batch_size: 16, log_every: 5, device: cpu, optimizer: {lr: 1e-2}, "
            "schedule: {warmup_steps: 2}}")
MEASURE = "measure: {batch_size: 1, warmup: 1, repeats: 3, train_batch_size: 4}"


def space_text(name: str, body: str, search: str, plugins: str = "") -> str:
    """A complete tiny search-space file: the common task/training/measure sections plus ``body``."""
    return "\n".join(filter(None, [
        f"name: {name}", f"plugins: [{plugins}]" if plugins else "", TASK, textwrap.dedent(body).strip(),
        TRAINING, MEASURE, f"search: {search}",
    ])) + "\n"


# --- helpers ------------------------------------------------------------------------------------------
def run_cli(cwd: Path, *argv: str, timeout: float = 180) -> tuple[int, str, str]:
    """``nas ARGV`` in this process with ``cwd`` as working directory: (exit code, stdout, stderr).

    A search still running after ``timeout`` seconds gets a KeyboardInterrupt (Ctrl-C): it stops its trials
    and returns non-zero, so a hung trial fails the test instead of hanging it.
    """
    import _thread
    import threading

    out, err = io.StringIO(), io.StringIO()
    fired = threading.Event()
    watchdog = threading.Timer(timeout, lambda: (fired.set(), _thread.interrupt_main()))
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.chdir(cwd)
        watchdog.start()
        try:
            code = main(list(argv))
        finally:
            watchdog.cancel()
    if fired.is_set():
        err.write(f"\n[test] nas {' '.join(argv)} was interrupted after {timeout} s\n")
    return code, out.getvalue(), err.getvalue()


def json_in(text: str) -> Any:
    """The JSON document printed by ``--json`` (Ray may print log lines around it)."""
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    return json.JSONDecoder().raw_decode(text[start:])[0]


def load_study(root: Path, name: str) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = root / "studies" / f"{name}.journal"
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))


def enqueue(root: Path, name: str, directions: list[str], trials: list[dict[str, Any]]) -> None:
    """Create the study a search will resume, with ``trials`` (parameters) waiting to run first."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = root / "studies" / f"{name}.journal"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(study_name=name, directions=directions,
                                storage=JournalStorage(JournalFileBackend(str(journal))))
    for params in trials:
        study.enqueue_trial(params)


def mlflow_runs(root: Path, name: str) -> tuple[Any, Any, list[Any]]:
    """(client, the one parent run, its child runs) of the search ``name`` stored under ``root``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) + 1 == len(runs)
    return client, parents[0], children


def trained(study: Any) -> list[Any]:
    """The trials that trained their architecture (not repeats of one trained before)."""
    return [t for t in study.get_trials(deepcopy=False) if "repeat_of" not in t.user_attrs]


def states(study: Any) -> dict[str, int]:
    """Trained trials by state."""
    out: dict[str, int] = {}
    for t in trained(study):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.fixture(scope="module", autouse=True)
def _isolated() -> Any:
    """Blocks the plugin modules below register are removed again; Ray started by a search is shut down."""
    with registry.REGISTRY.scratch():
        yield
    import ray

    ray.shutdown()


# --- one finished search, shared ------------------------------------------------------------------------
E2E_BODY = """
    model: {d_model: [16, 32], n_layers: 1, n_heads: 2}
    space:
      position: [{type: rope}, {type: sinusoidal}]
      ffn: [{type: mlp, expansion: [2, 4]}]
    objectives:
      - {metric: accuracy}
      - {metric: latency_ms}
      - {metric: params}
    """
E2E_SEARCH = "{{n_trials: {n}, concurrency: 2, sampler: {{type: nsga2, options: {{population_size: 4}}}}, dir: out}}"
OBJECTIVES = [("accuracy", "maximize"), ("latency_ms", "minimize"), ("params", "minimize")]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A search of 4 trials, extended to 6 by a second run with a larger n_trials, then run a third time
    with nothing left to do. Returns the folder, the outputs of the three runs and the stored study."""
    cwd = tmp_path_factory.mktemp("e2e")
    (cwd / "space.yaml").write_text(space_text("e2e", E2E_BODY, E2E_SEARCH.format(n=4)))
    (cwd / "space6.yaml").write_text(space_text("e2e", E2E_BODY, E2E_SEARCH.format(n=6)))
    runs = [run_cli(cwd, "search", "space.yaml", "--quiet", "--json"),
            run_cli(cwd, "search", "space6.yaml", "--quiet", "--json"),
            run_cli(cwd, "search", "space6.yaml", "--quiet", "--json")]
    for code, out, err in runs:
        assert code == 0, out + err
    return {"cwd": cwd, "root": cwd / "out", "runs": [json_in(out) for _, out, _ in runs],
            "study": load_study(cwd / "out", "e2e")}


def test_search_completes_the_requested_trials_and_resuming_adds_only_the_missing_ones(e2e):
    first, second, third = e2e["runs"]
    repeats = first["counts"].pop("repeats")
    assert first["counts"] == {"complete": 4, "failed": 0, "interrupted": 0, "infeasible": 0, "stopped": 0,
                               "steps": 4 * 20}
    assert second["counts"]["complete"] == third["counts"]["complete"] == 6
    assert first["aborted"] is None and third["aborted"] is None
    assert states(e2e["study"]) == {"COMPLETE": 6}
    assert len(e2e["study"].trials) == 6 + third["counts"]["repeats"] and third["counts"]["repeats"] >= repeats
    # 8 architectures in this space: the sampler proposes some twice, none is trained twice
    assert len({t.user_attrs["arch_key"] for t in trained(e2e["study"])}) == 6
    # one MLflow parent run across all three invocations
    assert first["mlflow_parent_run_id"] == second["mlflow_parent_run_id"] == third["mlflow_parent_run_id"]


def test_every_trial_is_a_child_run_with_its_architecture_metrics_curve_and_tags(e2e):
    client, parent, children = mlflow_runs(e2e["root"], "e2e")
    assert parent.info.run_id == e2e["runs"][-1]["mlflow_parent_run_id"]
    assert parent.info.status == "FINISHED"
    assert len(children) == 6
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in trained(e2e["study"])}
    assert set(by_run) == {c.info.run_id for c in children}
    for child in children:
        trial = by_run[child.info.run_id]
        assert child.info.status == "FINISHED"
        assert child.data.tags["trial_number"] == str(trial.number)
        assert child.data.tags["status"] == "ok"
        assert child.data.tags["pareto"] in ("true", "false")
        assert child.data.tags["pareto_rank"].isdigit()
        assert "failure_reason" not in child.data.tags
        params = child.data.params
        # one naming scheme: every parameter the study sampled is the MLflow param of the same name
        assert trial.params and all(params[name] == str(value) for name, value in trial.params.items())
        assert params["attention.type"] == "softmax" and params["ffn.type"] == "mlp"
        assert params["model.n_layers"] == "1" and "None" not in params.values()
        assert child.info.run_name.endswith(f"t{trial.number:03d} {trial.user_attrs['summary']}")
        assert child.info.run_name.startswith("★ ") == (child.data.tags["pareto"] == "true")
        (e2e["cwd"] / "k" / child.info.run_id).mkdir(parents=True)
        kernels = client.download_artifacts(child.info.run_id, "info/kernels.json",
                                            str(e2e["cwd"] / "k" / child.info.run_id))
        assert json.loads(Path(kernels).read_text()) == {k[7:]: v for k, v in params.items() if k.startswith("kernel.")}
        assert not any(k.startswith("info.kernels") for k in child.data.tags)
        for metric, _ in OBJECTIVES:
            assert child.data.metrics[metric] == pytest.approx(trial.user_attrs["metrics"][metric])
        assert list(trial.values) == pytest.approx([child.data.metrics[m] for m, _ in OBJECTIVES])
        curve = client.get_metric_history(child.info.run_id, "train_loss")
        assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [0, 5, 10, 15, 19]
        assert all(math.isfinite(m.value) for m in curve)


def test_no_run_is_left_running(e2e):
    _, parent, children = mlflow_runs(e2e["root"], "e2e")
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}


def test_the_parent_holds_the_spec_the_front_artifacts_and_the_hypervolume_history(e2e):
    client, parent, _ = mlflow_runs(e2e["root"], "e2e")
    front = {f.path for f in client.list_artifacts(parent.info.run_id, "front")}
    assert front == {
        "front/front.csv", "front/front.json", "front/front.html",
        "front/front_accuracy__vs__latency_ms.png", "front/front_accuracy__vs__params.png",
        "front/front_latency_ms__vs__params.png",
    }
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "spec")} >= {"spec/space.yaml",
                                                                                    "spec/plugins.json"}
    assert parent.data.tags["nas.kind"] == "search"
    assert parent.data.params["search.sampler.type"] == "nsga2"
    assert "None" not in parent.data.params.values()  # unset settings are left out
    assert parent.data.params["space.position.1.type"] == "sinusoidal"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.nas-front"])["state"])
    assert view["searchFilter"] == "tags.pareto = 'true'" and view["orderByKey"] == "metrics.`accuracy`"
    assert view["selectedColumns"][1:4] == ["metrics.`accuracy`", "metrics.`latency_ms`", "metrics.`params`"]
    assert {"params.`model.d_model`", "params.`position.type`"} <= set(view["selectedColumns"])

    history = sorted(client.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: (m.step, m.timestamp))
    assert history, "no hypervolume logged"
    values = [m.value for m in history]
    # With a fixed reference, a new trial never shrinks the hypervolume; the verification at the end of each run
    # may (a front trial's latency measured again alone can be slower than its first value), so only what the
    # front holds at the end is pinned here.
    assert values[-1] > 0
    assert history[-1].step == 6
    stored = json.loads((e2e["root"] / "fronts" / "e2e" / "front.json").read_text())
    assert values[-1] == pytest.approx(stored["hypervolume"])
    assert e2e["runs"][-1]["hypervolume"] == pytest.approx(stored["hypervolume"])


def test_the_logged_front_is_the_front_of_the_child_runs_metrics(e2e):
    from nas.pareto import hypervolume, nondominated_ranks, to_minimize

    client, parent, children = mlflow_runs(e2e["root"], "e2e")
    children = sorted(children, key=lambda c: int(c.data.tags["trial_number"]))
    directions = [d for _, d in OBJECTIVES]
    # the front is computed from the latency measured again alone where there is one (verified trials)
    values = [[c.data.metrics.get(f"verified_{m}", c.data.metrics[m]) for m, _ in OBJECTIVES] for c in children]
    ranks = nondominated_ranks(to_minimize(values, directions)).tolist()
    verified = {int(c.data.tags["trial_number"]) for c in children if c.data.tags.get("verified") == "true"}
    assert [int(c.data.tags["pareto_rank"]) for c in children] == ranks
    expected = {int(c.data.tags["trial_number"]) for c, r in zip(children, ranks) if r == 0}
    assert {int(c.data.tags["trial_number"]) for c in children if c.data.tags["pareto"] == "true"} == expected
    assert expected <= verified  # every front trial was re-measured

    folder = Path(client.download_artifacts(parent.info.run_id, "front", str(e2e["cwd"] / "downloaded")))
    stored = json.loads((folder / "front.json").read_text())
    assert {row["trial"] for row in stored["front"]} == expected
    assert {row["number"] for row in e2e["runs"][-1]["front"]} == expected  # (TrialRow fields here)
    assert [o["metric"] for o in stored["objectives"]] == [m for m, _ in OBJECTIVES]
    assert [row["pareto_rank"] for row in sorted(stored["trials"], key=lambda r: r["trial"])] == ranks
    ref = to_minimize([stored["reference_point"]], directions)[0]
    assert hypervolume(to_minimize(values, directions), ref) == pytest.approx(stored["hypervolume"])
    csv_lines = (folder / "front.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("trial,architecture,accuracy,latency_ms,params,feasible,pareto_rank")
    assert len(csv_lines) == 1 + len(children)
    assert (folder / "front.html").read_text().count("<svg") == 3
    assert all((folder / f"front_{p}.png").read_bytes()[:4] == b"\x89PNG"
               for p in ("accuracy__vs__latency_ms", "accuracy__vs__params", "latency_ms__vs__params"))


def test_pareto_optimal_children_carry_a_pyfunc_model_that_reproduces_their_accuracy(e2e):
    import mlflow

    from nas.spec import load_spec

    client, parent, children = mlflow_runs(e2e["root"], "e2e")
    spec = load_spec(e2e["cwd"] / "space.yaml").spec
    uri = f"sqlite:///{e2e['root'].resolve()}/mlflow.db"
    note = parent.data.tags["mlflow.note.content"]
    checked = 0
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # `runs:/` finds a run's logged model through the global URI
    try:
        checked = _check_front_models(children, note, parent, spec, e2e["cwd"])
    finally:
        mlflow.set_tracking_uri(before)  # (None: unset again; the searches of later tests read it)
    assert checked >= 1
    assert "**Hypervolume**" in note and "nas show e2e" in note


def _check_front_models(children: list[Any], note: str, parent: Any, spec: Any, cwd: Path) -> int:
    import mlflow
    import torch

    from nas.saved import find_saved, load_saved

    checked = 0
    for child in children:
        if child.data.tags["pareto"] != "true":  # (a trial on the front of an earlier run keeps its model)
            continue
        assert f"(#/experiments/{parent.info.experiment_id}/runs/{child.info.run_id})" in note  # linked
        assert child.data.tags["nas.model_id"].startswith("m-")
        folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{child.info.run_id}/model",
                                                          dst_path=str(cwd / child.info.run_id)))
        assert (folder / "MLmodel").is_file() and not list(folder.rglob("*.pkl"))
        saved = load_saved(folder)
        assert saved.architecture.d_model == int(child.data.params["model.d_model"])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the trial: the same reduction order
        try:
            accuracy = saved.task.evaluate(saved.model, spec.training.eval_batch_size, torch.device("cpu"))["accuracy"]
            x = saved.task.example_batch(2)[0]
            predicted = mlflow.pyfunc.load_model(f"runs:/{child.info.run_id}/model").predict(x.numpy())
        finally:
            torch.set_num_threads(threads)
        assert accuracy == pytest.approx(child.data.metrics["accuracy"], abs=1 / 128 + 1e-9)  # <= 1 of 128 targets
        with torch.inference_mode():
            assert np.allclose(predicted, saved.model(x).numpy(), atol=1e-5)
        assert find_saved(folder).name == "model"
        checked += 1
    return checked


def test_show_reports_the_same_front(e2e):
    code, out, err = run_cli(e2e["cwd"], "show", "e2e", "--json", "--dir", "out")
    assert code == 0, err
    shown, searched = json.loads(out), e2e["runs"][-1]
    assert shown["counts"] == searched["counts"]
    assert shown["failures"] == []
    assert shown["hypervolume"] == pytest.approx(searched["hypervolume"])
    assert shown["reference_point"] == searched["reference_point"]
    front = [(r["number"], r["values"]) for r in searched["front"]]
    assert [(r["number"], r["values"]) for r in shown["front"]] == front
    assert shown["pair_fronts"] == searched["pair_fronts"]

    assert all(set(r["params"]) == set(e2e["study"].trials[r["number"]].params) for r in shown["front"])

    code, out, _ = run_cli(e2e["cwd"], "show", "e2e", "--all", "--dir", "out")
    assert code == 0
    assert "Pareto front:" in out and "6 complete, 0 stopped early, 0 failed" in out
    for row in searched["front"]:
        assert f"\n{row['number']} " in out
    assert "model.d_model=" in out and "position.type=" in out  # the study's names

    code, out, _ = run_cli(e2e["cwd"], "show", "e2e", "--json", "--all", "--dir", "out")
    everything = json.loads(out)
    assert code == 0 and len(everything["trials"]) == 6
    assert {t["number"] for t in everything["trials"] if t["pareto_rank"] == 0} == {r["number"] for r in shown["front"]}
    # the front's values are the verified latency where a trial was measured again alone
    assert all(t["metrics"].get("verified_latency_ms", t["metrics"]["latency_ms"]) == t["values"][1]
               for t in everything["trials"])

    code, out, _ = run_cli(e2e["cwd"], "show", "--dir", "out")  # no name: the searches there
    assert code == 0 and "e2e  6 complete, 0 failed" in out


def test_show_of_an_unknown_search_names_the_known_ones(e2e):
    code, _, err = run_cli(e2e["cwd"], "show", "e2f", "--dir", "out")
    assert code == 2
    assert "no search named 'e2f'" in err and "known: e2e" in err


def test_ui_dry_run_prints_an_mlflow_command_bound_to_localhost(e2e, tmp_path):
    code, out, _ = run_cli(e2e["cwd"], "ui", "--dry-run", "--dir", "out", "--port", "5123")
    assert code == 0
    lines = out.strip().splitlines()
    command = lines[-1].split()
    assert Path(command[0]).name == "mlflow" and command[1] == "ui"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"
    assert command[command.index("--workers") + 1] == "1"
    assert command[command.index("--allowed-hosts") + 1] == "127.0.0.1:5123,localhost:5123"
    assert command[command.index("--cors-allowed-origins") + 1] == "http://127.0.0.1:5123,http://localhost:5123"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{(e2e['root'] / 'mlflow.db').resolve()}"
    experiment = mlflow_runs(e2e["root"], "e2e")[1].info.experiment_id
    assert lines[0] == (f"e2e: http://127.0.0.1:5123/#/experiments/{experiment}/runs?viewStateShareKey=nas-front"
                        "&workflowType=machine_learning")

    code, _, err = run_cli(tmp_path, "ui", "--dry-run", "--dir", "nowhere")
    assert code == 2 and "no MLflow store" in err
    code, _, err = run_cli(e2e["cwd"], "ui", "e2f", "--dry-run", "--dir", "out")
    assert code == 2 and "known: e2e" in err


def test_resuming_a_search_with_a_different_space_is_refused(e2e):
    text = (e2e["cwd"] / "space.yaml").read_text().replace("d_model: [16, 32]", "d_model: [16, 64]")
    (e2e["cwd"] / "changed.yaml").write_text(text)
    code, out, err = run_cli(e2e["cwd"], "search", "changed.yaml", "--quiet")
    assert code == 2  # a refused search is bad input (issue 11: it used to exit 1)
    assert "already exists" in err and "different space" in err and "name:" in err
    assert states(load_study(e2e["root"], "e2e")) == {"COMPLETE": 6}


# --- bad input ----------------------------------------------------------------------------------------
def test_a_sampler_option_the_sampler_does_not_take_exits_2_with_its_location(tmp_path):
    text = space_text("bad", "model: {d_model: 16, n_layers: 1, n_heads: 2}",
                      "\n  n_trials: 2\n  sampler:\n    type: tpe\n    options: {n_startup: 3}\n  dir: out")
    (tmp_path / "space.yaml").write_text(text)
    line = text.splitlines().index("    options: {n_startup: 3}") + 1
    code, _, err = run_cli(tmp_path, "search", "space.yaml")
    assert code == 2
    assert f"space.yaml:{line}: search.sampler.options: not accepted by the tpe sampler" in err
    assert "n_startup" in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_resume_flag_needs_an_existing_search(tmp_path):
    (tmp_path / "space.yaml").write_text(space_text("fresh", "model: {d_model: 16, n_layers: 1, n_heads: 2}",
                                                    "{n_trials: 1, dir: out}"))
    code, _, err = run_cli(tmp_path, "search", "space.yaml", "--resume")
    assert code == 2
    assert "--resume: no search named 'fresh' under out to resume" in err
    assert not (tmp_path / "out").exists()


# --- failures -----------------------------------------------------------------------------------------
FAILING_BLOCKS = '''
"""Attention blocks that fail in three ways, for tests of the search controller."""
from typing import Literal

import torch
from torch import nn

from nas import BlockConfig, Capabilities, register

ANY = frozenset({"none", "embedding", "rotary", "bias"})


class _Base(nn.Module):
    capabilities = Capabilities(positions=ANY)

    def __init__(self, config, dims, position):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)


@register("attention", "t_raises")
class Raises(_Base):
    """Raises in every forward on real data (sizing on the meta device still works)."""

    class Config(BlockConfig):
        type: Literal["t_raises"] = "t_raises"

    def forward(self, x):
        if x.device.type != "meta":
            raise ValueError("t_raises: this block is broken on purpose")
        return self.proj(x)


@register("attention", "t_nan")
class NaN(_Base):
    """Returns NaN."""

    class Config(BlockConfig):
        type: Literal["t_nan"] = "t_nan"

    def forward(self, x):
        return self.proj(x) * float("nan")


@register("attention", "t_hog")
class Hog(_Base):
    """Needs a 1 GiB buffer in every forward."""

    class Config(BlockConfig):
        type: Literal["t_hog"] = "t_hog"

    def forward(self, x):
        if x.device.type != "meta":
            x = x + torch.zeros(2**28, device=x.device)[0]
        return self.proj(x)
'''

FAILING_BODY = """
    model: {d_model: 16, n_layers: 1, n_heads: 2}
    space:
      attention: [{type: softmax}, {type: t_raises}, {type: t_nan}, {type: t_hog}]
      position: [{type: sinusoidal}]
    """


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A search of 5 trials under a 64 MB memory limit whose first four are, in order: a block that raises,
    one that returns NaN, one that needs 1 GiB, and plain softmax (enqueued in the study beforehand)."""
    cwd = tmp_path_factory.mktemp("failing")
    (cwd / "nas_test_failing_blocks.py").write_text(FAILING_BLOCKS)
    search = ("{n_trials: 5, concurrency: 2, sampler: {type: random}, deduplicate: false, dir: out, "
              "resources: {memory_mb: 64}}")
    (cwd / "space.yaml").write_text(space_text("failing", FAILING_BODY, search, plugins="nas_test_failing_blocks"))
    enqueue(cwd / "out", "failing", ["maximize", "minimize"],
            [{"attention.type": block} for block in ("t_raises", "t_nan", "t_hog", "softmax")])
    code, out, err = run_cli(cwd, "search", "space.yaml", "--quiet", "--json")
    assert code == 0, out + err
    study = load_study(cwd / "out", "failing")
    trials = {t.params["attention.type"] if t.number < 4 else "sampled": t for t in study.trials}
    return {"cwd": cwd, "root": cwd / "out", "outcome": json_in(out), "study": study, "trials": trials}


def test_failed_trials_are_recorded_and_the_search_finishes(failing):
    study = failing["study"]
    assert len(study.trials) == 5
    assert [t.params["attention.type"] for t in study.trials[:4]] == ["t_raises", "t_nan", "t_hog", "softmax"]
    trials = failing["trials"]
    assert trials["softmax"].state.name == "COMPLETE"
    for block in ("t_raises", "t_nan", "t_hog"):
        assert trials[block].state.name == "FAIL", block
        assert trials[block].values is None
        assert not trials[block].user_attrs.get("interrupted")
    counts = failing["outcome"]["counts"]
    assert counts["complete"] + counts["failed"] == 5 and counts["failed"] >= 3 and counts["interrupted"] == 0
    assert failing["outcome"]["aborted"] is None
    assert {row["number"] for row in failing["outcome"]["front"]} <= {
        t.number for t in study.trials if t.state.name == "COMPLETE"}


def test_failure_reasons_name_the_exception_and_nan(failing):
    raised = failing["trials"]["t_raises"].user_attrs["reason"]
    assert "ValueError" in raised and "t_raises: this block is broken on purpose" in raised
    assert failing["trials"]["t_nan"].user_attrs["reason"].startswith("nan:")
    assert "allocate" in failing["trials"]["t_hog"].user_attrs["reason"]


def test_a_trial_over_the_memory_limit_is_recorded_as_out_of_memory(failing):
    assert failing["trials"]["t_hog"].user_attrs["reason"].startswith("out of memory")


def test_failed_trials_are_failed_child_runs_with_their_reason(failing):
    _, parent, children = mlflow_runs(failing["root"], "failing")
    assert parent.info.status == "FINISHED"
    by_run = {c.info.run_id: c for c in children}
    assert len(children) == 5
    for block, trial in failing["trials"].items():
        run = by_run[trial.user_attrs["mlflow_run_id"]]
        if trial.state.name == "FAIL":
            assert run.info.status == "FAILED", block
            assert run.data.tags["status"] == "failed"
            assert run.data.tags["failure_reason"] == trial.user_attrs["reason"]
            assert "pareto" not in run.data.tags  # only complete trials are ranked
        else:
            assert run.info.status == "FINISHED"
            assert run.data.tags["status"] == "ok" and "failure_reason" not in run.data.tags
    code, out, _ = run_cli(failing["cwd"], "show", "failing", "--json", "--dir", "out")
    assert code == 0
    failures = {f["trial"]: f["reason"] for f in json.loads(out)["failures"]}
    assert failures == {t.number: t.user_attrs["reason"] for t in failing["study"].trials if t.state.name == "FAIL"}


DRIVER_ONLY = '''
"""Importable in the search driver only, like a plugin installed on the head node but not on the workers."""
import os

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.pid")) as f:
    if int(f.read()) != os.getpid():
        raise ImportError("nas_test_driver_only is not installed on this node")
'''


def test_consecutive_failures_abort_the_search_with_a_clear_message(tmp_path):
    (tmp_path / "nas_test_driver_only.py").write_text(DRIVER_ONLY)
    (tmp_path / "driver.pid").write_text(str(os.getpid()))
    search = ("{n_trials: 12, concurrency: 2, max_consecutive_failures: 3, sampler: {type: random}, "
              "deduplicate: false, dir: out}")
    body = "model: {d_model: [16, 32], n_layers: 1, n_heads: 2}"
    (tmp_path / "space.yaml").write_text(space_text("doomed", body, search, plugins="nas_test_driver_only"))
    code, out, err = run_cli(tmp_path, "search", "space.yaml", "--quiet")
    assert code == 1, out + err
    assert "ABORTED: 3 trials failed in a row (search.max_consecutive_failures = 3)" in out

    study = load_study(tmp_path / "out", "doomed")
    failed = [t for t in study.trials if t.state.name == "FAIL" and not t.user_attrs.get("interrupted")]
    assert len(failed) == 3
    for t in failed:  # the worker's own exception, not Ray's wrapper
        assert t.user_attrs["reason"].startswith("error in the Ray worker: PluginError: plugin module "
                                                 "'nas_test_driver_only' failed to import"), t.user_attrs["reason"]
        assert "not installed on this node" in t.user_attrs["reason"]
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "COMPLETE")]
    assert [t.user_attrs["retry_of"] for t in waiting] == [t.number for t in interrupted]

    _, parent, children = mlflow_runs(tmp_path / "out", "doomed")
    assert parent.info.status == "FAILED"
    assert sorted(c.info.status for c in children) == sorted(["FAILED"] * 3 + ["KILLED"] * len(interrupted))


def test_limits_rule_architectures_out_before_training_and_keep_them_off_the_front(tmp_path):
    """max_params rules a sample out on the meta device (PRUNED, no run); max_latency_ms rules the other one out
    in the worker, measured untrained and never trained (PRUNED, a run with its measured values). Either way
    the sampler sees the constraint values, nothing counts towards n_trials, and the front stays empty: the
    space holds no feasible architecture, so the search ends once the sampler only repeats itself."""
    body = """
        model: {d_model: [16, 64], n_layers: 1, n_heads: 2}
        space:
          position: [{type: rope}]
        constraints: {max_params: 10000, max_latency_ms: 0.000001}
        """
    search = "{n_trials: 2, concurrency: 2, sampler: {type: tpe}, max_consecutive_repeats: 5, dir: out}"
    (tmp_path / "space.yaml").write_text(space_text("constrained", body, search))
    enqueue(tmp_path / "out", "constrained", ["maximize", "minimize"], [{"model.d_model": 64}])
    code, out, err = run_cli(tmp_path, "search", "space.yaml", "--quiet", "--json")
    assert code == 0, out + err
    outcome = json_in(out)
    assert any("exhausted" in n for n in outcome["notes"])
    study = load_study(tmp_path / "out", "constrained")
    pruned = [t for t in trained(study) if t.state.name == "PRUNED"]
    assert sorted(t.params["model.d_model"] for t in pruned) == [16, 64] and study.trials[0] in pruned
    assert outcome["counts"]["complete"] == 0 and outcome["counts"]["infeasible"] == 2
    for t in pruned:
        assert t.user_attrs.get("steps", 0) == 0 and t.user_attrs["status"] == "infeasible"
        if t.params["model.d_model"] == 64:
            assert t.user_attrs["reason"] == "infeasible: params 51920 > constraints.max_params = 10000"
            assert t.constraints["max_params"] == 51920 - 10000
            assert "mlflow_run_id" not in t.user_attrs
        else:
            assert t.user_attrs["reason"].startswith("infeasible: latency_ms ")
            assert t.constraints["max_latency_ms"] == pytest.approx(t.user_attrs["metrics"]["latency_ms"] - 1e-6)
            assert t.user_attrs["mlflow_run_id"]
    assert outcome["front"] == [] and outcome["hypervolume"] is None

    _, _, children = mlflow_runs(tmp_path / "out", "constrained")
    (child,) = children
    assert child.data.tags["status"] == "infeasible" and "latency_ms" in child.data.metrics


# --- the sampler and the dynamic parameter names ------------------------------------------------------
DYNAMIC_BLOCKS = '''
"""Two attention blocks: one takes every position scheme, one cannot take rotary positions."""
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, register


class _Mean(nn.Module):
    def __init__(self, config, dims, position):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x):  # causal running mean, (B, T, C)
        t = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return self.proj(x.cumsum(1) / t)


@register("attention", "t_anypos")
class AnyPosition(_Mean):
    """Takes every position scheme."""

    class Config(BlockConfig):
        type: Literal["t_anypos"] = "t_anypos"
        scale: float = Field(1.0, gt=0)

    capabilities = Capabilities(positions=frozenset({"none", "embedding", "rotary", "bias"}))


@register("attention", "t_norotary")
class NoRotary(_Mean):
    """Takes embedding positions only."""

    class Config(BlockConfig):
        type: Literal["t_norotary"] = "t_norotary"
        width: int = 2
'''

DYNAMIC_SPACE = """\
name: dynamic
plugins: [nas_test_dynamic_blocks]
task: {type: mqar, vocab_size: 16, seq_len: 16, num_kv_pairs: 2, test_examples: 64}
model: {d_model: [16, 32], n_layers: 2, n_heads: [2, 4], per_layer: true}
space:
  attention:
    - {type: softmax}
    - {type: t_anypos, scale: {low: 0.5, high: 2.0, log: true}}
    - {type: t_norotary, width: [1, 2, 4]}
  position: [{type: rope, base: {low: 1000, high: 100000, log: true}}, {type: sinusoidal}, {type: learned}]
  ffn: [{type: mlp, expansion: [2, 4]}]
"""


@pytest.fixture(scope="module")
def dynamic_spec(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from nas.spec import load_spec

    folder = tmp_path_factory.mktemp("dynamic")
    (folder / "nas_test_dynamic_blocks.py").write_text(DYNAMIC_BLOCKS)
    (folder / "space.yaml").write_text(DYNAMIC_SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        return load_spec(folder / "space.yaml").spec


def with_sampler(spec: Any, type_: str, **options: Any) -> Any:
    sampler = spec.search.sampler.model_copy(update={"type": type_, "options": options})
    return spec.model_copy(update={"search": spec.search.model_copy(update={"sampler": sampler})})


@pytest.mark.parametrize(("sampler", "options"), [
    ("nsga2", {"population_size": 4}),
    ("nsga3", {"population_size": 4}),
    ("tpe", {"n_startup_trials": 4}),
    ("tpe", {"n_startup_trials": 4, "multivariate": True, "group": True}),
    ("random", {}),
])
def test_samplers_take_the_per_position_attention_names_without_complaint(dynamic_spec, sampler, options, caplog):
    """A reduced attention choice set (rope rules out t_norotary) gets its own name, ``...|position=rotary``;
    several generations of each sampler run over both names without an error or a warning."""
    import logging
    import warnings

    import optuna

    from nas.search import make_sampler
    from nas.space import sample_architecture

    spec = with_sampler(dynamic_spec, sampler, **options)
    study = optuna.create_study(sampler=make_sampler(spec), directions=["maximize", "minimize"])
    rng = np.random.default_rng(0)
    names: set[str] = set()
    optuna.logging.enable_propagation()
    try:
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="optuna"):
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate
            for _ in range(20):
                trial = study.ask()
                arch = sample_architecture(spec, trial)
                for layer in arch.layers:
                    if arch.position["type"] == "rope":
                        assert layer.attention["type"] != "t_norotary"
                names |= set(trial.params)
                study.tell(trial, [float(rng.random()), float(rng.random())])
    finally:
        optuna.logging.disable_propagation()
    assert {"layers.0.attention.type|position=rotary", "layers.0.attention.type"} <= names
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(study.trials) == 20 and all(t.state.name == "COMPLETE" for t in study.trials)


@pytest.mark.parametrize("sampler", ["random", "nsga2", "tpe"])
def test_enqueued_parameters_rebuild_the_same_architecture(dynamic_spec, sampler):
    """What resume relies on: ``study.enqueue_trial(trial.params)`` samples the very same architecture again,
    continuous values and per-position names included."""
    import optuna

    from nas.search import make_sampler
    from nas.space import sample_architecture

    spec = with_sampler(dynamic_spec, sampler)
    study = optuna.create_study(sampler=make_sampler(spec), directions=["maximize", "minimize"])
    originals = []
    for i in range(12):
        trial = study.ask()
        arch = sample_architecture(spec, trial)
        originals.append((trial.params, arch))
        study.tell(trial, [i / 12, 1 - i / 12])
    assert any("|position=" in name for params, _ in originals for name in params)
    for params, arch in originals:
        study.enqueue_trial(params, user_attrs={"retry_of": 0}, skip_if_exists=False)
        again = study.ask()
        assert sample_architecture(spec, again) == arch
        assert again.params == params
        study.tell(again, [0.5, 0.5])


# --- kill and resume --------------------------------------------------------------------------------------
def _processes() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(pid: int) -> set[int]:
    """Every process started, directly or not, by ``pid`` (Ray workers run in process groups of their own)."""
    parents = _processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def kill_tree(proc: subprocess.Popen, known: set[int] = frozenset()) -> None:
    """SIGKILL a process started with ``start_new_session=True``, its group, and the processes it started."""
    pids = set(known) | descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_killed_search_resumes_without_losing_finished_trials(tmp_path):
    search = "{n_trials: 6, concurrency: 2, sampler: {type: random}, dir: out}"
    body = """
        model: {d_model: [16, 32], n_layers: 1, n_heads: 2}
        space:
          position: [{type: rope}, {type: sinusoidal}]
          ffn: [{type: mlp, expansion: [2, 4]}]
        """
    (tmp_path / "space.yaml").write_text(space_text("resume", body, search).replace("steps: 20", "steps: 40"))
    # Ray's files in a folder of this test's own (short: Ray's socket paths must fit 107 bytes), holding the
    # address a crashed `ray start` leaves behind: a search without search.address must start its own Ray.
    ray_tmp = Path(tempfile.mkdtemp(prefix="nas-ray-"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    command = [sys.executable, "-m", "nas.cli", "search", "space.yaml"]
    root = tmp_path / "out"
    try:
        _kill_and_resume(tmp_path, root, command, env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _kill_and_resume(tmp_path: Path, root: Path, command: list[str], env: dict[str, str]) -> None:
    """SIGKILL the search once 2 trials are complete and others run; run it again; check what it kept."""
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    log_text = (tmp_path / "first.log").read_text
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert first.poll() is None, "the search ended before it could be killed:\n" + log_text()
            assert time.monotonic() < deadline, "no 2 complete trials in time:\n" + log_text()
            started |= descendants(first.pid)
            journal = root / "studies" / "resume.journal"
            with contextlib.suppress(KeyError, ValueError):  # the study may not be in the journal yet
                now = states(load_study(root, "resume")) if journal.exists() else {}
                if now.get("COMPLETE", 0) >= 2 and now.get("RUNNING", 0) >= 1:
                    break
            time.sleep(0.2)
        started |= descendants(first.pid)
    finally:
        kill_tree(first, started)
        log.close()

    before = {t.number: t for t in load_study(root, "resume").trials}
    assert any(t.state.name == "RUNNING" for t in before.values())

    second = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        output, _ = second.communicate(timeout=300)
    finally:
        if second.poll() is None:
            kill_tree(second)
    assert second.returncode == 0, output
    assert "resumed:" in output and "interrupted trial(s) will run again" in output

    study = load_study(root, "resume")
    trials = {t.number: t for t in study.trials}
    for number, old in before.items():  # nothing that had finished was lost or changed
        if old.state.name == "COMPLETE":
            assert trials[number].state.name == "COMPLETE"
            assert trials[number].values == old.values and trials[number].params == old.params
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    assert {t.number for t in interrupted} <= {n for n, t in before.items() if t.state.name == "RUNNING"}
    for t in interrupted:
        assert "interrupted" in t.user_attrs["reason"]
        retries = [r for r in study.trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retries) == 1, t.number
        if "summary" in t.user_attrs:  # it was sampled in full before the kill: the same architecture ran again
            assert retries[0].params == t.params
            assert retries[0].user_attrs["summary"] == t.user_attrs["summary"]
        else:  # killed while sampling: what was sampled is kept
            assert t.params.items() <= retries[0].params.items()
        assert retries[0].state.name in ("COMPLETE", "FAIL") and not retries[0].user_attrs.get("interrupted")
    finished = [t for t in trained(study) if t.state.name == "COMPLETE"
                or (t.state.name == "FAIL" and not t.user_attrs.get("interrupted"))]
    assert len(finished) == 6
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]

    _, parent, children = mlflow_runs(root, "resume")
    assert parent.info.status == "FINISHED"
    assert "RUNNING" not in {c.info.status for c in children}
    by_run = {c.info.run_id: c for c in children}
    for t in interrupted:
        if "mlflow_run_id" in t.user_attrs:
            run = by_run[t.user_attrs["mlflow_run_id"]]
            assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    for t in finished:
        assert by_run[t.user_attrs["mlflow_run_id"]].info.status in ("FINISHED", "FAILED")


def test_export_writes_a_model_that_loads_in_a_fresh_interpreter_and_pickles_are_refused(e2e, tmp_path):
    import torch

    from nas.saved import find_saved, load_model

    front = e2e["runs"][-1]["front"][0]["number"]
    out = tmp_path / "exported"
    code, text, err = run_cli(e2e["cwd"], "export", "e2e", str(front), str(out), "--dir", "out")
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"weights.safetensors", "architecture.json", "task.json", "space.yaml",
                                               "README.md"}
    assert "nas.load_model" in (out / "README.md").read_text()
    script = ("import sys, torch, nas; m = nas.load_model(sys.argv[1]); x = torch.zeros(2, 16, dtype=torch.long); "
              "print(tuple(m(x).shape)); print('mlflow' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["(2,", "16,", "16)", "False"]  # logits per position; MLflow not needed

    code, _, err = run_cli(e2e["cwd"], "export", "e2e", str(front), str(out), "--dir", "out")
    assert code == 2 and "not empty" in err
    code, _, err = run_cli(e2e["cwd"], "export", "e2e", "99", str(tmp_path / "x"), "--dir", "out")
    assert code == 2 and "no trial 99" in err

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(1)}, pickled / "model.pt")
    with pytest.raises(ValueError, match="refus"):
        find_saved(pickled)
    with pytest.raises(ValueError, match="refusing a pickle"):
        load_model(pickled / "model.pt")
    renamed = tmp_path / "renamed"
    shutil.copytree(out, renamed)
    torch.save({"w": torch.zeros(1)}, renamed / "weights.safetensors")  # a pickle behind a safetensors name
    with pytest.raises(ValueError, match="safetensors weights only"):
        load_model(renamed)
