"""Does a supernet rank architectures as stand-alone training does? Kendall tau of inherited-weight quality
against the stand-alone, full-budget quality of the same architectures.

The stand-alone results are the completed trials of stored searches (``benchmarks/search_efficiency.py``'s
random-search runs: every sampled architecture trained for the full budget); architectures trained more than
once are averaged. One supernet is trained over the space (``nas.supernet``, the sandwich rule) for each budget
asked for, and each architecture is scored with inherited weights. The parameter count is ranked beside it, as
the baseline any cheap signal has to beat.

    python benchmarks/supernet_ranking.py --runs /work/bench/search_efficiency/runs --space quickstart \\
        --steps 300 900 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def stand_alone(runs: Path, space: str, metric: str) -> tuple[dict[str, dict], dict[str, list[float]], dict]:
    """Per architecture (its JSON): the architecture, the stand-alone metric values, and the parameter count."""
    from nas.search import SearchPaths, load_study

    archs: dict[str, dict] = {}
    values: dict[str, list[float]] = {}
    params: dict[str, float] = {}
    for journal in sorted((runs / "studies").glob(f"{space}-random-*.journal")):
        study = load_study(SearchPaths(runs, journal.stem))
        for t in study.get_trials(deepcopy=False):
            m = t.user_attrs.get("metrics") or {}
            if t.state.name != "COMPLETE" or "architecture" not in t.user_attrs or metric not in m:
                continue
            key = json.dumps(t.user_attrs["architecture"], sort_keys=True)
            archs[key] = t.user_attrs["architecture"]
            values.setdefault(key, []).append(float(m[metric]))
            params[key] = float(m["params"])
    return archs, values, params


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("out/search_efficiency/runs"))
    p.add_argument("--space", default="quickstart")
    p.add_argument("--steps", type=int, nargs="+", default=[300], help="supernet optimizer steps (3 paths each)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path("out/supernet_ranking.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    from scipy.stats import kendalltau

    from nas.architecture import Architecture
    from nas.spec import load_spec
    from nas.supernet import Supernet, inherited_metrics, train_supernet

    spec_file = next((args.runs.parent / "specs").glob(f"{args.space}-random-*.yaml"))
    spec = load_spec(spec_file).spec
    net0 = Supernet(spec)
    metric = next(iter(net0.task.metrics))
    archs, values, params = stand_alone(args.runs, args.space, metric)
    keys = sorted(archs)
    truth = [statistics.mean(values[k]) for k in keys]
    tau_params = kendalltau([params[k] for k in keys], truth).statistic
    print(f"{args.space}: {len(keys)} distinct architectures from the random searches; metric {metric}; "
          f"Kendall tau of #params vs stand-alone: {tau_params:.3f}")
    rows = []
    for steps in args.steps:
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = Supernet(spec, seed=seed)
            t0 = time.perf_counter()
            trained = train_supernet(net, steps, seed)
            scores = [inherited_metrics(net, Architecture.model_validate(archs[k]))[metric] for k in keys]
            tau = kendalltau(scores, truth).statistic
            rows.append({"steps": steps, "seed": seed, "passes": trained.passes, "tau": tau,
                         "seconds": time.perf_counter() - t0, "scores": scores})
            print(f"  supernet {steps} steps ({trained.passes} path passes) seed {seed}: Kendall tau {tau:.3f}; "
                  f"inherited {metric} median {statistics.median(scores):.3f} (stand-alone "
                  f"{statistics.median(truth):.3f}); {time.perf_counter() - t0:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"space": args.space, "keys": keys, "truth": truth, "tau_params": tau_params,
                                    "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
