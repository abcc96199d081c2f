"""What a user reads of a search, without running one: the terminal's plain and live output, the metrics a
trial's journal entry becomes, the parent run's description, and the public loader's lightness."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from nas.report import TrialRow, compute_front
from nas.search.live import LiveView, format_duration
from nas.search.policy import Progress, Told
from nas.search.tracking import run_name, trial_metrics
from nas.trial import TrialResult

OBJECTIVES = [("accuracy", "maximize"), ("latency_ms", "minimize")]


def test_plain_output_is_one_line_per_trial_with_the_counts_and_no_repeats(capsys):
    view = LiveView(OBJECTIVES, n_trials=4, live=True, tty=False)
    progress = Progress()
    view.progress(progress, [(0, 0.0), (1, 0.0)], None)  # started: nothing to say yet
    view.progress(progress, [(0, 0.0), (1, 0.0)], None)
    progress.done = 1
    result = TrialResult("ok", {}, {"accuracy": 0.5, "latency_ms": 0.25})
    view.trial(0, "softmax+rope d32 L1 H2", Told("ok", None), result)
    view.front([TrialRow(0, "softmax+rope d32 L1 H2", [0.5, 0.25])])
    view.progress(progress, [(1, 0.0), (2, 0.0)], 0.1)
    view.progress(progress, [(1, 0.0), (2, 0.0)], 0.1)  # nothing new: nothing printed
    view.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("trial   0 ok") and "accuracy=0.5 latency_ms=0.25" in lines[0]
    assert ("[1/4 done, 2 running, 0 failed, 0 infeasible, 0 stopped, 0 repeats, 0 steps; hypervolume 0.1; about"
            in lines[0])
    assert lines[1].startswith("  front now: #0")


def test_the_counts_shown_are_whatever_progress_holds():
    @dataclass
    class More(Progress):  # a later Progress with more counts shows them without changes here
        verified: int = 2

    view = LiveView(OBJECTIVES, n_trials=10, live=True, tty=False)
    view.progress(More(done=3, failed=1), [], 0.5)
    line = view.status_line()
    assert line.startswith("3/10 done, 0 running, 1 failed, 0 infeasible, 0 stopped, 0 repeats, 0 steps, "
                           "2 verified; hypervolume 0.5")
    assert "consecutive" not in line


def test_durations_and_run_names_read_well():
    assert [format_duration(s) for s in (4.4, 185, 4800)] == ["4s", "3m05s", "1h20m"]
    assert run_name(7, "softmax+rope d64 L2 H4") == "t007 softmax+rope d64 L2 H4"
    assert run_name(7, "softmax+rope d64 L2 H4", pareto=True) == "★ t007 softmax+rope d64 L2 H4"


def test_every_number_a_trial_records_becomes_a_metric_under_its_name():
    attrs = {"metrics": {"accuracy": 0.5, "latency_ms": 1.0}, "summary": "x", "attempts": 2, "retry_of": 1,
             "info": {"seconds": 3.0}, "verified": {"latency_ms": 1.1, "infer_memory_mb": 2}, "latency_ci": 0.05,
             "constraints": [-1.0], "curve": [[0, 1.0]], "interrupted": False, "note": "text"}
    assert trial_metrics(attrs) == {"accuracy": 0.5, "latency_ms": 1.0, "verified.latency_ms": 1.1,
                                    "verified.infer_memory_mb": 2.0, "latency_ci": 0.05}


def test_the_description_is_a_markdown_table_linking_each_front_trial(tiny_spec_text, write_spec):
    from nas.search.tracking import front_markdown
    from nas.spec import load_spec

    spec = load_spec(write_spec(tiny_spec_text)).spec
    rows = [TrialRow(0, "a|b", [0.5, 0.2, 1.0]), TrialRow(1, "c", [0.4, 0.3, 2.0])]
    front = compute_front([("accuracy", "maximize"), ("latency_ms", "minimize"), ("train_memory_mb", "minimize")],
                          rows)
    text = front_markdown(spec, front, 0.25, [0.0, 1.0, 4.0], "3", {0: "r0", 1: "r1"})
    assert "| [t000](#/experiments/3/runs/r0) | a/b | 0.5 | 0.2 | 1 |" in text
    assert "[t001]" not in text  # dominated
    assert "**Hypervolume** 0.25" in text and "`nas show tiny`" in text and "task mqar" in text


def test_import_nas_does_not_import_mlflow_for_load_model():
    ran = subprocess.run([sys.executable, "-c", "import sys, nas; nas.load_model; print('mlflow' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert ran.stdout.strip() == "False", ran.stderr[-2000:]
