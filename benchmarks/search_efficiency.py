"""How much compute our search needs to find the front that brute force finds, on two spaces.

Methods, each over the same seeds, each a real ``nas search`` (Ray, the journal, MLflow) run by this script:

* ``random``: Optuna's RandomSampler, every sampled architecture trained for the full budget, duplicates too
  (``early_stopping.enabled: false``, ``deduplicate: false``): brute force;
* ``tpe``: Optuna's TPESampler (multi-objective), the same full-fidelity training;
* ``ours``: TPE with multi-objective asynchronous successive halving (``nas.search.stopping``), no duplicate
  training, limits checked on the untrained model (the default search, ``early_stopping.enabled: true``);
* ``one_shot`` / ``one_shot_lean``: ``search.strategy: one_shot`` (``nas.search.one_shot``): one supernet, TPE
  over subnets scored with inherited weights, the top 4 (lean: a third of the supernet training, the top 2)
  retrained from scratch; its compute counts the supernet's path passes first, then the retrained trials.

Spaces: the quickstart's (``search_spaces/quickstart.yaml``: MQAR, 300 steps) and a byte-level language model on
the Python standard library's own top-level ``*.py`` files (about 4.7 MB of real text, read from the running
interpreter's ``stdlib``; the last 10% held out), bits per byte against latency and training memory.

Accounting:

* compute = training steps actually run (a stopped trial counts the steps up to its rung, a repeat none), and
  also wall time;
* hypervolume only from full-fidelity (complete) trials, objectives normalised to [0, 1] by the best and worst
  value any method reached on that space (pooled over all runs), reference point 1.1 in each;
* per seed, random search's final hypervolume is the target; for each method, the compute at which its
  hypervolume first reaches it, as a ratio to random's total compute (``n/r``: not reached, censored). The
  one-sided paired test is the exact sign test (``scipy.stats.binomtest``): on how many seeds the method needed
  fewer steps than random itself needed to reach its final hypervolume (a censored run counts as a loss, which
  a rank test such as Wilcoxon's cannot take); 5 seeds: the smallest possible p is 1/32 = 0.031;
* controller overhead: the share of the search's wall time in which no trial was training or being measured
  (the union of the trials' own busy spans against the search's span, Ray start-up excluded).

    python benchmarks/search_efficiency.py                       # both spaces, 5 seeds: about an hour here
    python benchmarks/search_efficiency.py --spaces quickstart --seeds 2 --trials 8   # a quick look
    python benchmarks/search_efficiency.py --analyse out/search_efficiency/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "random": {"sampler": {"type": "random"}, "early_stopping": {"enabled": False}, "deduplicate": False},
    "tpe": {"sampler": {"type": "tpe", "options": {"n_startup_trials": 8}}, "early_stopping": {"enabled": False},
            "deduplicate": False},
    "ours": {"sampler": {"type": "tpe", "options": {"n_startup_trials": 8}}, "early_stopping": {"enabled": True},
             "deduplicate": True},
    # one supernet at the trials' budget (three path passes a step), 64 candidates screened by TPE with inherited
    # weights, the best 4 retrained from scratch; compute = the supernet's passes + the retrained trials' steps
    "one_shot": {"strategy": "one_shot", "one_shot": {"candidates": 64, "top_k": 4},
                 "sampler": {"type": "tpe", "options": {"n_startup_trials": 8}}, "early_stopping": {"enabled": False},
                 "deduplicate": True},
    # the same with a third of the supernet training and 2 retrained: aimed at 10% of random's compute
    "one_shot_lean": {"strategy": "one_shot", "one_shot": {"candidates": 64, "top_k": 2, "supernet_steps": 100},
                      "sampler": {"type": "tpe", "options": {"n_startup_trials": 8}},
                      "early_stopping": {"enabled": False}, "deduplicate": True},
}


def quickstart_space() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())


def bytes_space() -> dict[str, Any]:
    stdlib = sysconfig.get_paths()["stdlib"]
    return {
        "name": "bytes",
        "task": {"type": "text", "paths": [os.path.join(stdlib, "*.py")], "seq_len": 64, "max_eval_windows": 256},
        "model": {"d_model": [32, 64], "n_layers": [1, 2], "n_heads": [2, 4], "norm_placement": "pre"},
        "space": {
            "attention": [{"type": "softmax"}, {"type": "sliding_window", "window": [8, 16]}, {"type": "linear"}],
            "position": [{"type": "rope"}, {"type": "none"}],
            "norm": [{"type": "layernorm"}, {"type": "rmsnorm"}],
            "ffn": [{"type": "mlp", "expansion": [2, 4]}],
        },
        "training": {"steps": 200, "batch_size": 32, "optimizer": {"lr": 3e-3, "weight_decay": 0.01},
                     "schedule": {"type": "cosine", "warmup_steps": 20}, "precision": "fp32", "seed": 0},
        "measure": {"batch_size": 1, "repeats": 20, "threads": 1},
        "objectives": [{"metric": "bits_per_byte"}, {"metric": "latency_ms"}, {"metric": "train_memory_mb"}],
        "constraints": {"max_params": 200000},
    }


SPACES = {"quickstart": quickstart_space, "bytes": bytes_space}


def run_one(space: str, method: str, seed: int, trials: int, concurrency: int, out: Path) -> dict[str, Any]:
    """One search; returns its trials as plain data (in the order they finished) and its wall time."""
    from nas.search import run_search
    from nas.spec import load_spec

    data = SPACES[space]()
    name = f"{space}-{method}-{seed}"
    data["name"] = name
    data["search"] = {"n_trials": trials, "concurrency": concurrency, "seed": seed, "dir": str(out / "runs"),
                      "save_weights": False, "verify": {"enabled": False}, **METHODS[method]}
    path = out / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    started = time.time()
    outcome = run_search(load_spec(path), live=False)
    ended = time.time()
    from nas.search import SearchPaths, load_study

    study = load_study(SearchPaths(out / "runs", name))
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: (t.datetime_complete or t.datetime_start)):
        if t.datetime_complete is None:
            continue
        rows.append({"number": t.number, "state": t.state.name, "status": t.user_attrs.get("status"),
                     "repeat": "repeat_of" in t.user_attrs, "steps": int(t.user_attrs.get("steps", 0)),
                     "values": list(t.values) if t.values else None,
                     "feasible": all(v <= 0 for v in t.constraints.values()),
                     "done_at": t.datetime_complete.timestamp(),
                     "busy": t.user_attrs.get("busy")})
    one_shot = study.user_attrs.get("one_shot")
    if one_shot:  # the supernet's training counts first, as one block of steps (path passes) before any trial
        rows.insert(0, {"number": -1, "state": "SUPERNET", "status": "supernet", "repeat": False,
                        "steps": int(one_shot["supernet_passes"]), "values": None, "feasible": False,
                        "done_at": started + float(one_shot.get("supernet_seconds") or 0.0), "busy": None})
    return {"space": space, "method": method, "seed": seed, "trials": rows, "started": started, "ended": ended,
            "concurrency": concurrency,
            "seconds": outcome.seconds, "objectives": [list(o) for o in outcome.front.objectives],
            "counts": outcome.counts.as_dict()}


def hv_curve(run: dict[str, Any], lo: list[float], hi: list[float]) -> list[tuple[int, float, float]]:
    """(cumulative steps, seconds since the first trial started, hypervolume) after each finished trial."""
    from nas.pareto import hypervolume, to_minimize

    directions = [d for _, d in run["objectives"]]
    pts: list[list[float]] = []
    steps, out = 0, []
    t0 = min([r["busy"][0] for r in run["trials"] if r["busy"]] or [run["started"]])
    for r in run["trials"]:
        steps += r["steps"]
        if r["state"] == "COMPLETE" and not r["repeat"] and r["feasible"]:
            pts.append(normalise(r["values"], directions, lo, hi))
        hv = hypervolume(to_minimize(pts, ["minimize"] * len(directions)), [1.1] * len(directions)) if pts else 0.0
        out.append((steps, r["done_at"] - t0, hv))
    return out


def normalise(values: list[float], directions: list[str], lo: list[float], hi: list[float]) -> list[float]:
    """To [0, 1] with 0 the best value seen on the space, for every objective (maximised ones flipped)."""
    out = []
    for v, d, a, b in zip(values, directions, lo, hi):
        x = (v - a) / (b - a) if b > a else 0.0
        out.append(1 - x if d == "maximize" else x)
    return out


def bounds(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    vals = [r["values"] for run in runs for r in run["trials"] if r["state"] == "COMPLETE" and r["values"]]
    cols = list(zip(*vals))
    return [min(c) for c in cols], [max(c) for c in cols]


def overhead(run: dict[str, Any], concurrency: int) -> dict[str, float] | None:
    """Where the wall time of one search went, from the trials' own busy spans (worker side: measuring,
    training, evaluating) against the driver's clock:

    * ``none_busy``: the share of the span from the first trial's start to the last one's end in which no
      trial was busy (the issue's definition of controller overhead);
    * ``slots_idle``: the share of ``concurrency`` x that span in which a slot held no busy trial (a free slot
      while another trial runs counts too: scheduling gaps and the tail);
    * ``command``: the share of the whole search call (Ray start, MLflow, the journal, the tail) beyond the
      ideal wall time, the busy time over the concurrency;
    * ``idle_per_trial``: the slots' idle seconds per trial."""
    spans = sorted(tuple(r["busy"]) for r in run["trials"] if r["busy"])
    if not spans:
        return None
    start, end = spans[0][0], max(e for _, e in spans)
    covered, cur_s, cur_e = 0.0, *spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            covered += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    covered += cur_e - cur_s
    busy = sum(e - s for s, e in spans)
    span = end - start
    whole = run["ended"] - run["started"]
    return {"none_busy": 1 - covered / span, "slots_idle": 1 - busy / (concurrency * span),
            "command": 1 - busy / concurrency / whole, "idle_per_trial": (concurrency * span - busy) / len(spans),
            "busy_per_trial": busy / len(spans)}


def fmt(ratios: list[float]) -> str:
    """Median [min-max]; a censored run (never reached the target) is 'n/r'."""
    def one(x: float) -> str:
        return f"{x:.3f}" if math.isfinite(x) else "n/r"

    return f"{one(statistics.median(ratios))} [{one(min(ratios))}-{one(max(ratios))}]"


def analyse(runs: list[dict[str, Any]], out: Path) -> None:
    from scipy.stats import binomtest

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; compute = training steps actually run")
    for space in dict.fromkeys(r["space"] for r in runs):
        mine = [r for r in runs if r["space"] == space]
        lo, hi = bounds(mine)
        curves = {(r["method"], r["seed"]): hv_curve(r, lo, hi) for r in mine}
        seeds = sorted({r["seed"] for r in mine if r["method"] == "random"})
        target = {s: curves[("random", s)][-1][2] for s in seeds}
        total = {s: curves[("random", s)][-1][0] for s in seeds}
        total_wall = {s: curves[("random", s)][-1][1] for s in seeds}
        print(f"\n== {space}: {len(seeds)} seeds; the target is random search's final hypervolume per seed "
              f"(median {statistics.median(target.values()):.4f})")
        print(f"{'method':<13} {'final HV (median)':>18} {'steps to target / random total':>32} "
              f"{'wall to target / random':>24} {'reached':>8} {'p (one-sided)':>14} {'spent / random':>15} "
              f"{'final HV / target':>18}")
        own = {s: next(st for st, _, hv in curves[("random", s)] if hv >= target[s] - 1e-12) for s in seeds}
        for method in METHODS:
            ratios, walls, finals, wins, spent, relative = [], [], [], 0, [], []
            for s in seeds:
                c = curves.get((method, s))
                if c is None:
                    continue
                finals.append(c[-1][2])
                spent.append(c[-1][0] / total[s])  # all the compute the run used, over random's
                relative.append(c[-1][2] / target[s])
                hit = next(((st, w) for st, w, hv in c if hv >= target[s] - 1e-12), None)
                # a run that never reaches the target is censored: it needs more than it ran (inf here)
                ratios.append(hit[0] / total[s] if hit else math.inf)
                walls.append(hit[1] / total_wall[s] if hit else math.inf)
                wins += hit is not None and hit[0] < own[s]
            if not ratios:
                continue
            p = "-"
            if method != "random":  # exact one-sided sign test: fewer steps than random needed, seed by seed
                p = f"{binomtest(wins, len(ratios), 0.5, alternative='greater').pvalue:.3f}"
            reached = sum(math.isfinite(r) for r in ratios)
            print(f"{method:<13} {statistics.median(finals):>18.4f} {fmt(ratios):>32} {fmt(walls):>24} "
                  f"{reached}/{len(ratios):<6} {p:>14} {fmt(spent):>15} {fmt(relative):>18}")
        shares = [o for o in (overhead(r, r.get("concurrency", 2)) for r in mine) if o is not None]
        if shares:
            def med(key: str) -> str:
                xs = [o[key] for o in shares]
                return f"{100 * statistics.median(xs):.1f}% [{100 * min(xs):.1f}-{100 * max(xs):.1f}%]"

            idle = statistics.median(o["idle_per_trial"] for o in shares)
            busy = statistics.median(o["busy_per_trial"] for o in shares)
            print(f"overhead over {len(shares)} searches (median [range]): no trial busy {med('none_busy')}; a slot "
                  f"idle {med('slots_idle')}; the whole command beyond busy/concurrency {med('command')}")
            print(f"  trials busy {busy:.1f} s each, slots idle {idle:.2f} s per trial: for trials of a minute that "
                  f"is {100 * idle / (60 + idle):.1f}% of a slot's time")
        plot(space, curves, seeds, out)


def plot(space: str, curves: dict[tuple[str, int], list[tuple[int, float, float]]], seeds: list[int],
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, colour in zip(METHODS, ("tab:gray", "tab:blue", "tab:red", "tab:green", "tab:olive")):
        for s in seeds:
            c = curves.get((method, s))
            if c:
                kw = {"label": method} if s == seeds[0] else {}
                axes[0].step([x for x, _, _ in c], [h for _, _, h in c], where="post", color=colour, alpha=0.7, **kw)
                axes[1].step([w for _, w, _ in c], [h for _, _, h in c], where="post", color=colour, alpha=0.7)
    axes[0].set_xlabel("training steps run")
    axes[1].set_xlabel("wall seconds")
    for ax in axes:
        ax.set_ylabel("hypervolume (normalised, full-fidelity trials)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{space}: hypervolume against compute, one line per seed")
    fig.tight_layout()
    path = out / f"hypervolume_{space}.png"
    fig.savefig(path, dpi=110)
    print(f"  plot: {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=20, help="architectures trained per full-fidelity search")
    p.add_argument("--ours-trials", type=int, default=60,
                   help="n_trials of ours: early stopping spends fewer steps per architecture, so it may train more "
                        "of them; compute to the target is read off its curve either way")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/search_efficiency"))
    p.add_argument("--analyse", type=Path, help="only analyse a results.json written before")
    args = p.parse_args()
    if args.analyse:
        analyse(json.loads(args.analyse.read_text()), args.analyse.parent)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    runs: list[dict[str, Any]] = json.loads(results.read_text()) if results.exists() else []
    done = {(r["space"], r["method"], r["seed"]) for r in runs}
    for seed in range(args.seeds):  # seed by seed: an interrupted benchmark has every space and method so far
        for space in args.spaces:
            for method in args.methods:
                if (space, method, seed) in done:
                    continue
                t0 = time.time()
                trials = args.ours_trials if method == "ours" else args.trials
                run = run_one(space, method, seed, trials, args.concurrency, args.out)
                runs.append(run)
                results.write_text(json.dumps(runs))  # after each search: an interrupted benchmark resumes
                c = run["counts"]
                print(f"{space:<10} {method:<7} seed {seed}: {c['steps']:>6} steps, {c['complete']} complete, "
                      f"{c['stopped']} stopped, {c['repeats']} repeats, {time.time() - t0:.0f} s", flush=True)
    analyse(runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
