"""A search that spends compute where the front is: hardware first, no duplicate training, early stopping at
rungs, and a front re-measured alone at the end."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from test_search import json_in, load_study, run_cli, space_text

from nas import registry
from nas.cli import sample_one
from nas.model import build_model, build_task
from nas.search.policy import architecture_key
from nas.search.store import StudyStore, SearchPaths, study_front
from nas.search.verify import verification_candidates, verify_front
from nas.spec import load_spec, objective_directions
from nas.trial import execute_trial, measure_hardware, run_trial


@pytest.fixture(scope="module", autouse=True)
def _isolated() -> Any:
    with registry.REGISTRY.scratch():
        yield
    import ray

    ray.shutdown()


@pytest.fixture
def tiny(write_spec, tiny_spec_text):
    loaded = load_spec(write_spec(tiny_spec_text), device="cpu")
    return loaded.spec, sample_one(loaded.spec, seed=0)


def with_constraints(spec: Any, **limits: float) -> Any:
    return spec.model_copy(update={"constraints": spec.constraints.model_copy(update=limits)})


# --- hardware first ---------------------------------------------------------------------------------------
def test_an_architecture_over_a_latency_limit_is_measured_and_never_trained(tiny, monkeypatch):
    spec, arch = tiny

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an infeasible architecture was trained")

    monkeypatch.setattr("nas.trial.train", no_training)
    result = run_trial(with_constraints(spec, max_latency_ms=1e-9), arch)
    assert result.status == "infeasible"
    assert result.reason.startswith("infeasible: latency_ms") and "constraints.max_latency_ms" in result.reason
    assert result.steps == 0 and result.curve == []
    for metric in ("params", "flops_per_token", "train_memory_mb", "latency_ms", "latency_ci_low_ms",
                   "infer_memory_mb"):
        assert math.isfinite(result.metrics[metric]) and result.metrics[metric] > 0, metric
    assert "accuracy" not in result.metrics


def test_the_untrained_measurement_is_the_trained_one_for_memory(tiny):
    """Memory depends on shapes, not on the weights' values: what is measured before training holds after."""
    spec, arch = tiny
    task = build_task(spec)
    model = build_model(arch, task)
    before = measure_hardware(model, task, spec, __import__("torch").device("cpu"),
                              registry.build("compression", registry.get("compression", "none").config()))
    result = run_trial(spec, arch)
    assert result.status == "ok"
    assert result.metrics["train_memory_mb"] == pytest.approx(before["train_memory_mb"])
    assert result.metrics["infer_memory_mb"] == pytest.approx(before["infer_memory_mb"])


def test_measuring_first_does_not_change_training(tiny):
    """The hardware phase draws nothing from training's random stream: the same seed gives the same model."""
    spec, arch = tiny
    a, b = run_trial(spec, arch), run_trial(spec, arch)
    assert a.curve == b.curve and a.metrics["accuracy"] == b.metrics["accuracy"]


# --- rungs in a trial -------------------------------------------------------------------------------------
def test_rungs_that_go_on_change_nothing_and_a_stop_keeps_the_rung(tiny):
    spec, arch = tiny
    plain = run_trial(spec, arch)
    asked: list[tuple[int, float]] = []
    through = execute_trial(spec, arch, rungs=[2, 6], at_rung=lambda s, m: asked.append((s, m["accuracy"])) or True)
    assert [s for s, _ in asked] == [2, 6]
    assert through.result.curve == plain.curve
    assert through.result.metrics["accuracy"] == plain.metrics["accuracy"]
    assert [r["continued"] for r in through.result.rungs] == [True, True]

    stopped = execute_trial(spec, arch, rungs=[2, 6], at_rung=lambda s, m: s < 6).result
    assert stopped.status == "stopped" and stopped.steps == 6
    assert stopped.metrics["accuracy"] == pytest.approx(asked[1][1])  # the quality at the rung it stopped at
    assert "latency_ms" in stopped.metrics  # the hardware values measured before training
    assert [r["step"] for r in stopped.rungs] == [2, 6]


# --- one search: hardware first, dedup, early stopping, exhaustion, resume --------------------------------
BODY = """
    model: {d_model: [16, 32, 48], n_layers: 1, n_heads: 2}
    space:
      position: [{type: rope}, {type: sinusoidal}]
      ffn: [{type: mlp, expansion: [2, 4]}]
    objectives:
      - {metric: accuracy}
      - {metric: latency_ms}
      - {metric: train_memory_mb}
    constraints: {max_params: PARAMS, max_train_memory_mb: MEMORY}
    """
SEARCH = ("{n_trials: 6, concurrency: 2, sampler: {type: random}, seed: 1, dir: out, max_consecutive_repeats: 60, "
          "early_stopping: {enabled: true, min_fraction: 0.1, reduction_factor: 3}}")


@pytest.fixture(scope="module")
def efficient(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """d_model 48 is over max_params (ruled out on the meta device), d_model 32 over max_train_memory_mb
    (measured on the untrained model in the worker): 4 feasible architectures for n_trials 6."""
    cwd = tmp_path_factory.mktemp("efficient")
    draft = space_text("efficient", BODY.replace("PARAMS", "1000000000").replace("MEMORY", "100000"), SEARCH)
    (cwd / "draft.yaml").write_text(draft)
    spec = load_spec(cwd / "draft.yaml", device="cpu").spec
    task = build_task(spec)
    sizes: dict[int, list[float]] = {16: [], 32: [], 48: []}
    params: dict[int, float] = {}
    cpu = __import__("torch").device("cpu")
    none = registry.build("compression", registry.get("compression", "none").config())
    for seed in range(40):  # every architecture of the space, by sampling
        arch = sample_one(spec, seed=seed)
        model = build_model(arch, task)
        sizes[arch.d_model].append(measure_hardware(model, task, spec, cpu, none)["train_memory_mb"])
        params[arch.d_model] = max(params.get(arch.d_model, 0), sum(p.numel() for p in model.parameters()))
    memory = (max(sizes[16]) + min(sizes[32])) / 2
    assert max(sizes[16]) < memory < min(sizes[32])
    text = space_text("efficient", BODY.replace("PARAMS", str(int(params[32]) + 1)).replace("MEMORY", f"{memory:.6f}"),
                      SEARCH)
    (cwd / "space.yaml").write_text(text)
    first = run_cli(cwd, "search", "space.yaml", "--quiet", "--json")
    assert first[0] == 0, first[1] + first[2]
    after_first = load_study(cwd / "out", "efficient")
    trained_first = [t.number for t in after_first.trials if t.user_attrs.get("steps", 0) > 0]
    second = run_cli(cwd, "search", "space.yaml", "--quiet", "--json")
    assert second[0] == 0, second[1] + second[2]
    return {"cwd": cwd, "first": json_in(first[1]), "second": json_in(second[1]), "trained_first": trained_first,
            "study": load_study(cwd / "out", "efficient"), "memory": memory}


def arch_of(t: Any) -> int:
    return int(t.params.get("model.d_model", 0))


def test_no_architecture_is_trained_twice_even_across_a_resume(efficient):
    study = efficient["study"]
    trained = [t for t in study.trials if t.user_attrs.get("steps", 0) > 0]
    keys = [t.user_attrs["arch_key"] for t in trained]
    assert len(keys) == len(set(keys)) == 4  # every feasible architecture once, and no more
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert repeats, "a random sampler over 6 architectures proposes some twice"
    for t in repeats:
        original = study.trials[t.user_attrs["repeat_of"]]
        assert t.user_attrs["arch_key"] == original.user_attrs["arch_key"]
        assert t.state == original.state and t.user_attrs.get("steps", 0) == 0
        if original.state.name == "COMPLETE":
            assert list(t.values) == list(original.values)  # the sampler learns from the repeat as from the original
    # the second run trained nothing: the space was exhausted, and every repeat was recognised after the resume
    assert [t.number for t in trained] == efficient["trained_first"]
    assert efficient["second"]["counts"]["repeats"] > efficient["first"]["counts"]["repeats"]
    assert any("exhausted" in note for note in efficient["first"]["notes"])


def test_the_key_ignores_how_an_architecture_was_reached(tiny):
    spec, arch = tiny
    again = type(arch).model_validate_json(arch.model_dump_json())
    assert architecture_key(again) == architecture_key(arch)
    other = arch.model_copy(update={"d_model": arch.d_model * 2})
    assert architecture_key(other) != architecture_key(arch)


def test_an_architecture_over_a_limit_is_never_trained_and_the_sampler_sees_it(efficient):
    study = efficient["study"]
    over = [t for t in study.trials if arch_of(t) in (32, 48) and "repeat_of" not in t.user_attrs]
    assert {arch_of(t) for t in over} == {32, 48}
    for t in over:
        assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["status"] == "infeasible"
        assert t.user_attrs.get("steps", 0) == 0
        limit = "max_params" if arch_of(t) == 48 else "max_train_memory_mb"
        assert t.constraints[limit] > 0  # what TPE, NSGA-II and GP read as infeasible
        assert f"constraints.{limit}" in t.user_attrs["reason"]
    measured = [t for t in over if arch_of(t) == 32]
    assert all(t.user_attrs["metrics"]["train_memory_mb"] > efficient["memory"] for t in measured)
    assert all("latency_ms" in t.user_attrs["metrics"] for t in measured)  # measured in full before refusing
    feasible = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert feasible and all(v <= 0 for t in feasible for v in t.constraints.values())


def test_trials_reach_rungs_and_a_stopped_trial_survives_the_restart(efficient):
    study = efficient["study"]
    trained = [t for t in study.trials if t.user_attrs.get("steps", 0) > 0]
    assert all([r["step"] for r in t.user_attrs["rungs"]][:1] == [2] for t in trained)
    for t in trained:
        if t.user_attrs["status"] == "stopped":
            assert t.state == optuna.trial.TrialState.PRUNED
            assert t.user_attrs["steps"] == t.user_attrs["rungs"][-1]["step"] < 20
            assert t.user_attrs["curve"] and not t.user_attrs["rungs"][-1]["continued"]
        else:
            assert t.user_attrs["steps"] == 20
    counts = efficient["second"]["counts"]
    assert counts["stopped"] == sum(t.user_attrs["status"] == "stopped" for t in trained)
    assert counts["steps"] == sum(t.user_attrs["steps"] for t in trained)


def test_every_front_trial_is_verified_alone_after_the_search(efficient):
    study = efficient["study"]
    front, _, _ = study_front(study)
    assert front.pareto and all(r.verified for r in front.pareto)
    for r in front.pareto:
        v = study.user_attrs[f"verified.{r.number}"]["metrics"]
        assert v["latency_ci_low_ms"] <= v["latency_ms"] <= v["latency_ci_high_ms"]
        assert r.metrics["verified_latency_ms"] == v["latency_ms"]
    code, out, _ = run_cli(efficient["cwd"], "show", "efficient", "--dir", "out")
    assert code == 0 and "verified" in out


def test_a_dominated_trial_stops_at_the_first_rung_and_the_rungs_survive_a_restart(tmp_path):
    """Hardware-only objectives make the rung decisions known in advance: d_model 32 has more parameters and
    training memory than 16, so at the first rung it is dominated by the trial recorded there and stops. After a
    restart, d_model 48 is judged against the rungs read back from the journal, and stops too."""
    from test_search import enqueue

    body = """
        model: {d_model: [16, 32, 48], n_layers: 1, n_heads: 2}
        objectives: [{metric: params}, {metric: train_memory_mb}]
        """
    search = "{{n_trials: {n}, concurrency: 1, sampler: {{type: random}}, dir: out, early_stopping: {{enabled: true}}}}"
    (tmp_path / "two.yaml").write_text(space_text("rungs", body, search.format(n=2)))
    (tmp_path / "three.yaml").write_text(space_text("rungs", body, search.format(n=3)))
    enqueue(tmp_path / "out", "rungs", ["minimize", "minimize"], [{"model.d_model": d} for d in (16, 32, 48)])
    code, out, err = run_cli(tmp_path, "search", "two.yaml", "--quiet")
    assert code == 0, out + err
    first = load_study(tmp_path / "out", "rungs").trials
    assert [t.user_attrs["status"] for t in first[:2]] == ["ok", "stopped"]
    assert first[0].user_attrs["steps"] == 20 and first[1].user_attrs["steps"] == 2
    assert [r["continued"] for r in first[0].user_attrs["rungs"]] == [True, True]  # rungs at 2 and 6
    assert [(r["step"], r["continued"]) for r in first[1].user_attrs["rungs"]] == [(2, False)]

    code, out, err = run_cli(tmp_path, "search", "three.yaml", "--quiet", "--json")
    assert code == 0, out + err
    trials = load_study(tmp_path / "out", "rungs").trials
    assert [t.user_attrs["status"] for t in trials[:3]] == ["ok", "stopped", "stopped"]
    for before, after in zip(first[:2], trials[:2]):  # what the first run recorded is intact
        for attr in ("status", "rungs", "curve", "steps", "metrics"):
            assert after.user_attrs[attr] == before.user_attrs[attr]
    assert trials[2].user_attrs["steps"] == 2  # judged against the two rungs read back from the journal
    assert json_in(out)["counts"]["stopped"] == 2 and json_in(out)["counts"]["steps"] == 24
    front, _, _ = study_front(load_study(tmp_path / "out", "rungs"))
    assert [r.number for r in front.rows] == [0]  # only full-budget trials are on a front


# --- verification changes the front when the first values were noisy -------------------------------------
def test_a_noisy_first_latency_is_corrected_and_the_front_recomputed(tmp_path, write_spec, tiny_spec_text):
    loaded = load_spec(write_spec(tiny_spec_text.replace("name: tiny", "name: noisy").rstrip()
                                  + "\n    objectives: [{metric: accuracy}, {metric: latency_ms}]\n"), device="cpu")
    spec = loaded.spec
    objectives = objective_directions(spec)
    arch = sample_one(spec, seed=0).model_dump()
    store = StudyStore(spec, SearchPaths(tmp_path, "noisy"), objectives, lambda n: optuna.samplers.RandomSampler(0),
                       "")
    first = {  # accuracy, latency (median, CI low, CI high)
        "a": (0.90, 10.0, 9.0, 11.0),
        "b": (0.80, 5.0, 4.5, 5.5),
        "c": (0.85, 12.0, 3.0, 30.0),  # measured while another trial trained: wide, and slow by injection
        "d": (0.50, 50.0, 49.0, 51.0),  # far behind even at the low end of its interval
    }
    for acc, lat, low, high in first.values():
        trial = store.study.ask()
        trial.set_user_attr("architecture", arch)
        trial.set_user_attr("metrics", {"accuracy": acc, "latency_ms": lat, "latency_ci_low_ms": low,
                                        "latency_ci_high_ms": high})
        store.study.tell(trial, [acc, lat])
    before, _, _ = study_front(store.study)
    assert {r.number for r in before.pareto} == {0, 1}
    assert verification_candidates(before.rows, objectives) == [0, 1, 2]  # c overlaps the front; d does not

    true_latency = {0: 10.2, 1: 5.1, 2: 4.0}  # c is really the fastest but one, and more accurate than b
    submitted: list[int] = []

    class Executor:
        def submit(self, arch_: Any, verify_repeats: int | None = None) -> int:
            assert verify_repeats == spec.search.verify.repeats
            submitted.append(len(submitted))
            return len(submitted) - 1

        def output(self, ref: int, arch_: Any) -> Any:
            number = [0, 1, 2][ref]
            lat = true_latency[number]
            metrics = {"latency_ms": lat, "latency_p90_ms": lat * 1.1, "latency_ci_low_ms": lat * 0.95,
                       "latency_ci_high_ms": lat * 1.05}
            return SimpleNamespace(result=SimpleNamespace(status="ok", metrics=metrics, reason=None))

    logged: dict[int, dict[str, float]] = {}
    tracker = SimpleNamespace(log_verified=lambda n, m: logged.__setitem__(n, m))
    said: list[str] = []
    n = verify_front(spec, store, Executor(), tracker, objectives, wait=lambda ref: None, say=said.append)
    assert n == 3 and set(logged) == {0, 1, 2}
    after, _, _ = study_front(store.study)
    assert {r.number for r in after.pareto} == {0, 2}  # b is dominated by c's verified value
    assert all(r.verified for r in after.rows if r.number in (0, 1, 2)) and not after.rows[3].verified
    assert [r.values for r in after.rows][2] == [0.85, 4.0]
    assert store.study.trials[2].user_attrs["metrics"]["latency_ms"] == 12.0  # the first value is kept beside it
    # resumable: a second pass re-measures nothing
    assert verify_front(spec, store, Executor(), tracker, objectives, wait=lambda ref: None, say=said.append) == 0


def test_verification_is_skipped_without_a_latency_objective(tmp_path, write_spec, tiny_spec_text):
    text = tiny_spec_text.rstrip() + "\n    objectives: [{metric: accuracy}, {metric: params}]\n"
    loaded = load_spec(write_spec(text), device="cpu")
    spec = loaded.spec
    store = SimpleNamespace(study=None)
    assert verify_front(spec, store, None, None, objective_directions(spec), lambda r: None, print) == 0


def test_the_latency_interval_brackets_the_median(tiny):
    spec, arch = tiny
    spec = spec.model_copy(update={"measure": spec.measure.model_copy(update={"repeats": 20})})
    m = run_trial(spec, arch).metrics
    assert m["latency_ci_low_ms"] <= m["latency_ms"] <= m["latency_ci_high_ms"]
    assert m["latency_ci_low_ms"] < m["latency_ci_high_ms"]  # 20 distinct timings: a proper interval


def test_median_interval_matches_the_binomial_order_statistics():
    from nas.measure import median_interval

    # the textbook 95% intervals: n=20 -> (x6, x15), n=50 -> (x18, x33); below n=6 the full range
    assert median_interval(list(range(1, 21))) == (6, 15)
    assert median_interval(list(range(1, 51))) == (18, 33)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
