"""The benchmark scripts run in the test environment (their figures are not checked here: timings belong in
``benchmarks/``, never in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_overhead_benchmark_runs_and_accounts_for_the_wall_time(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--baseline", "none",
                           "--skip-long", "--repeats", "1", "--trials", "2", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for row in ("nas --help", "nas validate quickstart", "nas show quickstart", "overhead (1 - ideal / wall)"):
        assert row in done.stdout
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    run = results["quick"]["new"][0]
    assert len(run["trials"]) == 2 and all(t["train"] > 0 for t in run["trials"])
    # the parts it splits the wall time into lie inside the command's own span
    first = min(t["busy"][0] for t in run["trials"])
    last = max(t["busy"][1] for t in run["trials"])
    assert run["started"] < first <= last < run["ended"]
