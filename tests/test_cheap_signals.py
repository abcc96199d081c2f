"""benchmarks/cheap_signals.py's statistics: the sign convention and the bootstrap, on made-up results (no
training here; the benchmark itself trains)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cheap_signals  # noqa: E402


def _results(quality: list[float], higher_is_better: bool, **signals: list[float]) -> dict:
    rows = []
    for i, q in enumerate(quality):
        rows.append({"status": "ok", "quality": q, "train_seconds": 1.0, "proxy_seconds": 0.1,
                     "rung_steps": {"q10": 2, "q30": 6}, "proxy_passes": {"synflow": "-", "grad_norm": "-"},
                     "signals": {name: values[i] for name, values in signals.items()}})
    return {"machine": {}, "spaces": {"s": {"archs": rows, "metric": "m", "higher_is_better": higher_is_better,
                                            "budget_steps": 20}}}


def test_a_signal_that_predicts_a_minimised_quality_gets_a_positive_tau():
    bpb = [3.0, 2.5, 2.0, 1.5, 1.0]  # lower is better
    stats = cheap_signals.analyse(_results(
        bpb, False,
        params=[10.0, 20.0, 30.0, 40.0, 50.0],  # bigger is better here: ranks exactly like the quality
        flops=[50.0, 40.0, 30.0, 20.0, 10.0],  # the reverse
        q10=[3.5, 3.0, 2.9, 2.8, 2.0],  # the early bits per byte, same direction as the quality
    ), resamples=200)["s"]
    assert stats["params"]["tau"] == pytest.approx(1.0)
    assert stats["flops"]["tau"] == pytest.approx(-1.0)
    assert stats["q10"]["tau"] == pytest.approx(1.0) and stats["q10"]["rho"] == pytest.approx(1.0)
    assert "inherited" not in stats  # no column, no figure


def test_bootstrap_matches_scipy_and_brackets_it():
    a = [0.3, 0.1, 0.4, 0.15, 0.9, 0.26, 0.5, 0.35, 0.8, 0.97]
    b = [0.2, 0.3, 0.1, 0.4, 0.8, 0.5, 0.45, 0.6, 0.7, 0.9]
    s = cheap_signals.bootstrap(a, b, resamples=500, seed=0)
    assert s["tau"] == pytest.approx(kendalltau(a, b).statistic)
    assert s["rho"] == pytest.approx(spearmanr(a, b).statistic)
    assert -1 <= s["tau_lo"] < s["tau"] < s["tau_hi"] <= 1
    assert -1 <= s["rho_lo"] < s["rho"] < s["rho_hi"] <= 1
    assert cheap_signals.bootstrap(a, b, resamples=500, seed=0) == s  # seeded
    # paired: the same resamples for every signal, so a signal against itself differs by exactly 0
    assert cheap_signals.paired_difference(s, s) == (0.0, 0.0, 0.0)
    reversed_b = cheap_signals.bootstrap([-v for v in a], b, resamples=500, seed=0)
    d, lo, hi = cheap_signals.paired_difference(reversed_b, s)
    assert d == pytest.approx(-2 * s["tau"]) and lo <= d <= hi


def test_the_reseeded_row_is_taken_over_its_subset_and_is_no_candidate(capsys):
    acc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # higher is better
    stats = cheap_signals.analyse(_results(
        acc, True, params=[1.0, 3.0, 2.0, 4.0, 6.0, 5.0],
        reseeded=[None, None, 0.33, 0.41, 0.52, 0.61],  # a second seed of the last four: the same order
    ), resamples=200)["s"]
    assert stats["reseeded"]["n"] == 4 and stats["reseeded"]["tau"] == pytest.approx(1.0)
    assert "best on s: params" in capsys.readouterr().out
