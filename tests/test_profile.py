"""nas.profile and ``nas profile``: the exponent fit, the activation-memory formulas, the measured sweep and its
outputs (CSV, JSON, PNG, MLflow). Tiny shapes: sequences of 32-128, so the whole file runs in seconds."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from nas import registry
from nas.cli import main
from nas.profile import (ProfileSettings, activation_formula, expected_exponents, fit_power_law, format_report,
                         korthikanti_bytes, run_profile, write_outputs)

TINY = dict(seq_lens=[32, 64, 128], warmup=1, repeats=2, layer_seq_lens=[64, 128])


# -- analysis ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slope, scale", [(1.0, 0.5), (1.83, 3.7), (2.0, 1e-6), (-0.5, 10.0)])
def test_fit_recovers_an_exact_power_law(slope, scale):
    x = [64, 128, 256, 512, 1024]
    fitted, intercept, r2 = fit_power_law(x, [scale * t**slope for t in x])
    assert fitted == pytest.approx(slope, abs=1e-12)
    assert intercept == pytest.approx(math.log(scale), abs=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_quality_drops_for_data_off_a_power_law():
    x = [64, 128, 256, 512]
    slope, _, r2 = fit_power_law(x, [1.0, 4.0, 2.0, 8.0])
    assert 0 < r2 < 0.9 and 0 < slope < 2


def test_fit_needs_two_distinct_points():
    with pytest.raises(ValueError, match="two points"):
        fit_power_law([64], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([64, 64], [1.0, 2.0])


def test_korthikanti_formula_and_its_fp32_adaptation():
    s, b, h, a = 2048, 1, 128, 4
    assert korthikanti_bytes(s, b, h, a) == s * b * h * 34 + 5 * a * s * s * b
    mat = activation_formula(s, b, h, a, "materialised")
    assert mat["linear"] == 64 * s * b * h and mat["attention_matrix"] == 4 * a * s * s * b
    assert mat["total"] == s * b * h * (64 + 4 * a * s / h)
    assert activation_formula(s, b, h, a, "flash")["total"] == 64 * s * b * h
    assert activation_formula(s, b, h, a, "checkpointed")["total"] == 4 * s * b * h
    with pytest.raises(ValueError, match="materialised, flash, checkpointed"):
        activation_formula(s, b, h, a, "offloaded")


def test_memory_expectation_follows_the_kernel_that_ran():
    registry.load_plugins()
    softmax = registry.get("attention", "softmax").cls
    assert expected_exponents("softmax", softmax, "sdpa:math")["memory"] == 2
    assert expected_exponents("softmax", softmax, "sdpa:flash")["memory"] == 1
    assert expected_exponents("softmax", softmax, "sdpa:flash")["time"] == 2
    linear = registry.get("attention", "linear").cls
    assert expected_exponents("linear", linear, "torch:chunked") == {
        "time": 1, "time_why": "D x D state per head", "memory": 1, "memory_why": "D x D state per head"}
    unknown = expected_exponents("mystery", object, None)
    assert unknown["time"] is None and unknown["memory"] is None


# -- the measured sweep -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """softmax, linear and linformer (causal requested) at T = 32..128, with the layer comparison."""
    settings = ProfileSettings(attention=["softmax", "linear", "linformer"], **TINY)
    rep = run_profile(settings)
    out = tmp_path_factory.mktemp("profile")
    write_outputs(rep, out)
    return rep, out


def test_profile_measures_every_point_with_positive_figures(report):
    rep, _ = report
    ok = [r for r in rep.rows if r["status"] == "ok"]
    assert {(r["attention"], r["seq_len"]) for r in ok} == {(n, T) for n in ("softmax", "linear", "linformer")
                                                            for T in (32, 64, 128)}
    assert all(r["time_ms"] > 0 and r["peak_mb"] > 0 and r["time_p90_ms"] >= r["time_ms"] for r in ok)
    assert all(r["repeats"] >= 2 for r in ok)
    kernels_by_type = {r["attention"]: r["kernel"] for r in ok}
    assert kernels_by_type["softmax"].startswith("sdpa:") and kernels_by_type["linear"] == "torch:chunked"


def test_profile_fits_exponents_beside_expectations(report):
    rep, _ = report
    fits = {f["attention"]: f for f in rep.fits}
    assert fits["softmax"]["expected_time"] == 2 and fits["linear"]["expected_time"] == 1
    for f in fits.values():
        assert math.isfinite(f["time_exponent"]) and math.isfinite(f["memory_exponent"])
        assert 0 <= f["memory_r2"] <= 1 and f["fit_range"] == [32, 128] and f["points"] == 3
    # Memory is exact on CPU (allocator events): linear attention's working memory grows linearly.
    assert fits["linear"]["memory_exponent"] == pytest.approx(1.0, abs=0.15)
    # FLOPs are counted, not timed: linear attention's are about linear in T (its intra-chunk products grow
    # until T reaches the chunk of 64); full attention's lie between T and T^2 (projections + scores)
    assert fits["linear"]["flops_exponent"] == pytest.approx(1.0, abs=0.1)
    assert 1.1 < fits["softmax"]["flops_exponent"] < 2.0
    assert fits["softmax"]["time_agrees"] in (True, False) and fits["softmax"]["memory_agrees"] in (True, False)


def test_encoder_only_type_is_profiled_bidirectionally_with_a_note(report):
    rep, _ = report
    assert {r["direction"] for r in rep.rows if r["attention"] == "linformer"} == {"bidirectional"}
    assert {r["direction"] for r in rep.rows if r["attention"] == "softmax"} == {"causal"}
    assert any("linformer: cannot run causally" in n for n in rep.notes)


def test_layer_activation_memory_matches_the_adapted_formula(report):
    rep, _ = report
    rows = {(r["variant"], r["seq_len"]): r for r in rep.layer}
    for T in (64, 128):
        flash, mat, ckpt = rows["flash", T], rows["materialised", T], rows["checkpointed", T]
        assert mat["kernel"] == "sdpa:math" and not flash["kernel"].startswith("sdpa:math")
        assert ckpt["stored_mb"] < flash["stored_mb"] < mat["stored_mb"]
        for r in (flash, mat, ckpt):
            assert 0.9 < r["ratio"] < 1.25, r
    # the stored attention matrix grows with s^2: 4x from 64 to 128, the rest 2x
    grown = (rows["materialised", 128]["stored_mb"] - rows["flash", 128]["stored_mb"]) / (
        rows["materialised", 64]["stored_mb"] - rows["flash", 64]["stored_mb"])
    assert 3.0 < grown < 4.5


def test_profile_writes_csv_json_and_pngs(report):
    rep, out = report
    with (out / "profile.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and all(float(r["time_ms"]) > 0 and float(r["peak_mb"]) > 0 and float(r["flops"]) > 0
                                  for r in rows)
    data = json.loads((out / "profile.json").read_text())
    assert {f["attention"] for f in data["fits"]} == {"softmax", "linear", "linformer"}
    assert all("time_exponent" in f and "memory_exponent" in f and "time_r2" in f for f in data["fits"])
    assert data["layer"] and data["device"].startswith("cpu")
    for name in ("time.png", "memory.png", "activation_memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "activation_memory.csv").exists()
    text = format_report(rep)
    assert "time p" in text and "Korthikanti" in text and "linformer" in text


def test_points_over_the_budget_are_skipped_with_the_reason():
    rep = run_profile(ProfileSettings(attention=["softmax"], seq_lens=[32, 64, 128], warmup=0, repeats=1,
                                      budget_s=0.0, layer=False))
    statuses = [r["status"] for r in rep.rows]
    assert statuses == ["ok", "skipped", "skipped"]
    assert "exceeds --budget" in rep.rows[1]["reason"]
    assert any("skipped" in n for n in rep.notes)


def test_train_mode_measures_forward_and_backward():
    rep = run_profile(ProfileSettings(attention=["sliding_window"], seq_lens=[64, 128], warmup=0, repeats=1,
                                      mode="train", layer=False))
    assert [r["status"] for r in rep.rows] == ["ok", "ok"]
    # window 64: full attention at T = 64 (the window covers it), the blockwise kernel beyond
    assert rep.rows[0]["kernel"].startswith("sdpa:") and rep.rows[1]["kernel"] == "torch:blockwise"


# -- the command ------------------------------------------------------------------------------------------------
def test_cli_profile_prints_the_table_and_writes_files(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["profile", "--attention", "softmax", "--attention", "sliding_window", "--seq-lens", "32", "64",
               "--warmup", "0", "--repeats", "1", "--no-layer", "--quiet", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "softmax" in text and "sliding_window" in text and "time p" in text
    assert (out / "profile.json").exists() and (out / "time.png").exists()


def test_cli_profile_unknown_attention_exits_2(capsys):
    assert main(["profile", "--attention", "sofmax", "--seq-lens", "32", "--no-layer"]) == 2
    assert "did you mean 'softmax'" in capsys.readouterr().err


def test_cli_profile_logs_an_mlflow_run(tmp_path, capsys):
    from mlflow import MlflowClient

    from nas.tracking import tracking_uri

    rc = main(["profile", "--attention", "linear", "--seq-lens", "32", "64", "--warmup", "0", "--repeats", "1",
               "--no-layer", "--quiet", "--out", str(tmp_path / "p"), "--dir", str(tmp_path), "--track"])
    assert rc == 0
    client = MlflowClient(tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("nas-profile")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["nas.kind"] == "profile"
    assert "linear.time_exponent" in run.data.metrics and run.data.params["mode"] == "forward"
    assert json.loads(run.data.tags["kernels"]) == {"linear": "torch:chunked"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"profile.csv", "profile.json", "time.png", "memory.png"} <= artifacts
    history = client.get_metric_history(run.info.run_id, "linear.time_ms")
    assert sorted(m.step for m in history) == [32, 64]


def test_profile_keeps_the_thread_setting(tmp_path):
    before = torch.get_num_threads()
    run_profile(ProfileSettings(attention=["softmax"], seq_lens=[32], warmup=0, repeats=1, layer=False, threads=1))
    assert torch.get_num_threads() == before
