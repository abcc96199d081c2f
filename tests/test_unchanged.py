"""The start-up and trial-path work (warm workers, a task built once per worker, MLflow written after the next
trial starts) changed how long a search takes and nothing else: under a fixed seed with concurrency 1 the
search trains the same architectures in the same order, each for the same steps, with the same metrics, and
finds the same front as the code before that work (revision abcc93c).

``tests/data/unchanged_search.json`` was written by that revision, with this file's own generator::

    git archive abcc93c | tar -x -C /tmp/before && ln -s /tmp/before/plugins /tmp/before/nas_plugins
    PYTHONPATH=/tmp/before python tests/test_unchanged.py tests/data/unchanged_search.json

Only what does not depend on timing is compared: the sampled architectures, statuses, training steps, the
rungs' and final accuracy (a count over 64 held-out examples), parameters and FLOPs; the objectives are
accuracy and parameters, so the front is deterministic too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "data" / "unchanged_search.json"
SPACE = """\
    name: unchanged
    task: {type: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2, test_examples: 64}
    model: {d_model: [16, 32], n_layers: 1, n_heads: 2, norm_placement: [pre, post]}
    space:
      attention: [{type: softmax}, {type: linear}]
      position: [{type: rope}, {type: learned}]
      ffn: [{type: mlp, expansion: [2, 4]}]
    training: {steps: 30, batch_size: 16, device: cpu, optimizer: {lr: 1e-2}, schedule: {warmup_steps: 2}}
    measure: {batch_size: 1, warmup: 1, repeats: 3, train_batch_size: 4}
    objectives: [{metric: accuracy}, {metric: params}]
    search:
      n_trials: 8
      concurrency: 1
      seed: 3
      early_stopping: {enabled: true, min_fraction: 0.3, reduction_factor: 2}
      dir: out
    """
COMPARED = ("accuracy", "params", "params_active", "flops_per_token")


def run_and_describe(cwd: Path) -> dict[str, Any]:
    """Run the search with ``nas search`` in a new process (the revision on PYTHONPATH); what it found."""
    (cwd / "space.yaml").write_text(textwrap.dedent(SPACE))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", "space.yaml", "--quiet", "--json"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = cwd / "out" / "studies" / "unchanged.journal"
    study = optuna.load_study(study_name="unchanged", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        trials.append({
            "number": t.number, "state": t.state.name, "status": a.get("status"), "steps": a.get("steps"),
            "architecture": a.get("summary"), "params": t.params, "repeat_of": a.get("repeat_of"),
            "metrics": {k: v for k, v in (a.get("metrics") or {}).items() if k in COMPARED},
            "rungs": [{"step": r["step"], "accuracy": r["metrics"].get("accuracy"), "continued": r["continued"]}
                      for r in a.get("rungs") or []],
        })
    front = json.loads(done.stdout[done.stdout.index("{"):])["front"]
    return {"trials": trials, "front": sorted(row["number"] for row in front)}


def test_a_seeded_search_finds_what_it_found_before_the_speed_work(tmp_path):
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; see this module's docstring")
    expected = json.loads(GOLDEN.read_text())
    found = run_and_describe(tmp_path)
    assert [t["architecture"] for t in found["trials"]] == [t["architecture"] for t in expected["trials"]]
    for got, want in zip(found["trials"], expected["trials"]):
        assert {k: v for k, v in got.items() if k != "metrics"} == {k: v for k, v in want.items() if k != "metrics"}
        assert got["metrics"].keys() == want["metrics"].keys()
        for k, v in want["metrics"].items():
            assert got["metrics"][k] == pytest.approx(v, rel=1e-9), (got["number"], k)
    assert found["front"] == expected["front"]
    # the space is small enough that the search runs into its stopping and its duplicates: both are compared
    statuses = {t["status"] for t in found["trials"]}
    assert "stopped" in statuses and "ok" in statuses


if __name__ == "__main__":  # write the golden file with the revision on PYTHONPATH (see the docstring)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        described = run_and_describe(Path(tmp))
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text(json.dumps(described, indent=1) + "\n")
    print(f"wrote {sys.argv[1]}: {len(described['trials'])} trials, front {described['front']}")
