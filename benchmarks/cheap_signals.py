"""Which cheap signal ranks architectures like stand-alone training does, on the efficient-search benchmark's
two spaces (``quickstart`` and ``bytes`` of ``benchmarks/search_efficiency.py``).

Per space, ``--archs`` distinct architectures (default 40) are sampled with Optuna's RandomSampler (seed 0),
deduplicated by :func:`nas.search.policy.architecture_key`, those over a limit of ``constraints`` skipped
(sized on the meta device, never trained). Each is trained stand-alone at the space's full budget by
:func:`nas.trial.execute_trial` (the trial's seed, one torch thread), and its quality there, the space's first
objective (MQAR accuracy; bits per byte), is the truth every signal is compared with:

* ``params``, ``flops``: parameter count and forward FLOPs per token (meta device, the trial's own sizing);
* ``synflow``, ``grad_norm``: the zero-cost proxies of :mod:`nas.proxies` on the trial's initial weights;
* ``q10``, ``q30``: the quality after 10% and 30% of the budget's steps, taken at rungs of the same training
  run (its schedule stays the full budget's: what successive halving sees at those rungs);
* ``reseeded`` (``--reseed N``): the first N architectures trained again with ``training.seed + 1``, how
  noisy the truth itself is;
* ``inherited``: the quality with weights inherited from a supernet, ``nas.supernet.inherited_scores``, when
  that module exists (``not available`` otherwise; ``--add-inherited FILE`` fills it in later, no retraining).

Sign convention: every signal has a stated direction ("higher predicts better" for all of these; the qualities
follow their metric's direction) and both signal and quality are turned so that higher is better before the
Kendall tau-b and Spearman rho are taken: a positive value means "ranks like the true quality". The 95%
intervals are percentile bootstraps over architectures (2000 resamples, seed 0). Cost: training steps per
architecture (proxies: none, their forward/backward passes are given), and the measured seconds.

Results are written to the JSON file after every architecture; a killed run resumes where it stopped.

    python benchmarks/cheap_signals.py                                  # both spaces, 40 architectures each
    python benchmarks/cheap_signals.py --spaces quickstart --archs 5   # a quick look
    python benchmarks/cheap_signals.py --analyse out/cheap_signals/results.json
    python benchmarks/cheap_signals.py --add-inherited out/cheap_signals/results.json   # once nas.supernet exists
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency import SPACES  # noqa: E402

#: signal -> (what it is, higher predicts better?). The early and inherited qualities follow the metric.
SIGNALS = {
    "params": ("parameter count", True),
    "flops": ("forward FLOPs per token", True),
    "synflow": ("synflow (Tanaka et al. 2020)", True),
    "grad_norm": ("gradient norm at init", True),
    "q10": ("quality at 10% of the budget", None),
    "q30": ("quality at 30% of the budget", None),
    "inherited": ("inherited-weight quality (supernet)", None),
    "reseeded": ("full-budget quality with training.seed + 1", None),
}
FRACTIONS = {"q10": 0.1, "q30": 0.3}


def load_space(space: str, tmp: Path) -> Any:
    """The benchmark space as a loaded, checked spec (written to ``tmp`` as YAML, loaded like any space)."""
    from nas.spec import load_spec

    data = SPACES[space]()
    data["name"] = f"cheap-signals-{space}"
    path = tmp / f"{space}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path).spec


def quality_of(spec: Any) -> tuple[str, bool]:
    """The space's quality metric (its first objective) and whether higher is better."""
    from nas.model import build_task

    obj = spec.objectives[0]
    direction = obj.direction or type(build_task(spec)).metrics[obj.metric]
    return obj.metric, direction == "maximize"


def sample(spec: Any, n: int, seed: int) -> list[Any]:
    """``n`` distinct architectures within the space's limits, in the order a seeded RandomSampler gives them."""
    import optuna

    from nas.model import build_task, meta_costs
    from nas.search.policy import architecture_key
    from nas.space import sample_architecture
    from nas.trial import broken_limit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    task = build_task(spec)
    x, _ = task.example_batch(spec.measure.batch_size)
    archs, seen = [], set()
    for _ in range(50 * n):
        trial = study.ask()
        arch = sample_architecture(spec, trial)
        study.tell(trial, 0.0)
        key = architecture_key(arch)
        if key in seen:
            continue
        seen.add(key)
        if broken_limit(spec, meta_costs(arch, task, x)) is None:
            archs.append(arch)
        if len(archs) == n:
            return archs
    raise RuntimeError(f"only {len(archs)} distinct feasible architectures in {50 * n} samples")


def save(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a run killed mid-write keeps the previous file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def measure_one(spec: Any, arch: Any, metric: str) -> dict[str, Any]:
    """One architecture: its proxies on the initial weights, then one full-budget training with rungs at 10%
    and 30% of the steps (every rung continues)."""
    from nas.model import build_task
    from nas.proxies import zero_cost_proxies
    from nas.search.policy import architecture_key
    from nas.trial import execute_trial

    t = spec.training
    rungs = {name: max(1, round(f * t.steps)) for name, f in FRACTIONS.items()}
    started = time.perf_counter()
    proxies = zero_cost_proxies(arch, build_task(spec), t.seed, t.batch_size)
    proxy_s = time.perf_counter() - started
    run = execute_trial(spec, arch, rungs=sorted(rungs.values()), at_rung=lambda steps, metrics: True)
    r = run.result
    at = {rung["step"]: rung["metrics"].get(metric) for rung in r.rungs}
    return {
        "key": architecture_key(arch), "summary": arch.summary(), "architecture": arch.model_dump(mode="json"),
        "status": r.status, "reason": r.reason, "quality": r.metrics.get(metric) if r.status == "ok" else None,
        "steps": r.steps, "train_seconds": r.info.get("train_seconds"), "trial_seconds": r.info.get("seconds"),
        "signals": {"params": r.metrics.get("params"), "flops": r.metrics.get("flops_per_token"),
                    "synflow": proxies.synflow, "grad_norm": proxies.grad_norm,
                    **{name: at.get(step) for name, step in rungs.items()}},
        "rung_steps": rungs, "proxy_seconds": proxy_s, "proxy_passes": proxies.passes,
        "metrics": r.metrics, "rungs": r.rungs,
    }


def supernet_available() -> bool:
    return importlib.util.find_spec("nas.supernet") is not None


def add_inherited(results: dict[str, Any], path: Path, tmp: Path) -> None:
    """Fill in the inherited-weight column of every space in ``results`` (the stand-alone trainings stay)."""
    from nas.architecture import Architecture
    from nas.model import build_task
    from nas.supernet import inherited_scores

    for space, block in results["spaces"].items():
        spec = load_space(space, tmp)
        rows = [row for row in block["archs"] if row["status"] == "ok"]
        archs = [Architecture.model_validate(row["architecture"]) for row in rows]
        started = time.perf_counter()
        primary = next(iter(type(build_task(spec)).metrics))
        if primary != block["metric"]:  # inherited_scores scores the task's primary metric
            print(f"warning: {space}: inherited scores are {primary}, the quality here is {block['metric']}")
        scores, steps = inherited_scores(spec, archs, seed=0)
        block["inherited"] = {"steps": int(steps), "seconds": time.perf_counter() - started}
        for row, score in zip(rows, scores):
            row["signals"]["inherited"] = float(score)
        save(path, results)
        print(f"{space}: inherited-weight scores of {len(rows)} architectures, supernet {steps} steps", flush=True)


def add_reseeded(results: dict[str, Any], path: Path, tmp: Path, n: int) -> None:
    """Train the first ``n`` architectures of each space again at the full budget with ``training.seed + 1``:
    how well the truth ranks itself. A measure of the truth's noise, not a hard ceiling: a signal that knew each
    architecture's seed-averaged quality would agree with one seed better than two seeds agree with each other."""
    from nas.architecture import Architecture
    from nas.trial import execute_trial

    for space, block in results["spaces"].items():
        spec = load_space(space, tmp)
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"seed": spec.training.seed + 1})})
        rows = [row for row in block["archs"] if row["status"] == "ok"][:n]
        for i, row in enumerate(rows):
            if row["signals"].get("reseeded") is not None:
                continue
            r = execute_trial(spec, Architecture.model_validate(row["architecture"])).result
            row["signals"]["reseeded"] = r.metrics.get(block["metric"]) if r.status == "ok" else None
            row["reseeded_seconds"] = r.info.get("train_seconds")
            save(path, results)
            print(f"[{space} reseeded {i + 1}/{len(rows)}] {row['summary']}: {row['signals']['reseeded']}", flush=True)


def run(spaces: list[str], n: int, path: Path, seed: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    results = json.loads(path.read_text()) if path.exists() else {"spaces": {}}
    results["machine"] = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": 1, "python": platform.python_version()}
    tmp = path.parent / "specs"
    for space in spaces:
        spec = load_space(space, tmp)
        metric, higher = quality_of(spec)
        block = results["spaces"].setdefault(space, {"archs": []})
        block.update(metric=metric, higher_is_better=higher, budget_steps=spec.training.steps, sample_seed=seed)
        done = {row["key"]: row for row in block["archs"]}
        archs = sample(spec, n, seed)
        from nas.search.policy import architecture_key

        for i, arch in enumerate(archs):
            key = architecture_key(arch)
            if key in done:
                continue
            row = measure_one(spec, arch, metric)
            block["archs"].append(row)
            done[key] = row
            save(path, results)
            q = row["quality"]
            print(f"[{space} {i + 1}/{len(archs)}] {row['summary']}: {metric} "
                  f"{'-' if q is None else f'{q:.4f}'} ({row['status']}, {row['trial_seconds']:.1f} s)", flush=True)
    if supernet_available():
        add_inherited(results, path, tmp)
    return results


def bootstrap(a: list[float], b: list[float], resamples: int, seed: int) -> dict[str, float]:
    """Kendall tau-b and Spearman rho of ``a`` against ``b`` and their 95% percentile-bootstrap intervals
    (architectures resampled with replacement; a resample with a constant column is left out)."""
    import numpy as np
    from scipy.stats import kendalltau, spearmanr

    x, y = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    taus, rhos, every = [], [], []
    for _ in range(resamples):
        i = rng.integers(0, len(x), len(x))  # the same draws for every signal of a space: paired resamples
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            every.append(math.nan)
            continue
        taus.append(kendalltau(x[i], y[i]).statistic)
        rhos.append(spearmanr(x[i], y[i]).statistic)
        every.append(taus[-1])
    tau = kendalltau(x, y).statistic if np.ptp(x) and np.ptp(y) else math.nan
    rho = spearmanr(x, y).statistic if np.ptp(x) and np.ptp(y) else math.nan
    lo_t, hi_t = np.percentile(taus, [2.5, 97.5]) if taus else (math.nan, math.nan)
    lo_r, hi_r = np.percentile(rhos, [2.5, 97.5]) if rhos else (math.nan, math.nan)
    return {"tau": float(tau), "tau_lo": float(lo_t), "tau_hi": float(hi_t),
            "rho": float(rho), "rho_lo": float(lo_r), "rho_hi": float(hi_r), "resamples": len(taus),
            "taus": every}


def paired_difference(s: dict[str, Any], base: dict[str, Any]) -> tuple[float, float, float]:
    """``tau(s) - tau(base)`` and its 95% interval over the paired resamples of :func:`bootstrap` (both computed
    over the same architectures with the same seed)."""
    import numpy as np

    d = np.asarray(s["taus"]) - np.asarray(base["taus"])
    d = d[np.isfinite(d)]
    lo, hi = np.percentile(d, [2.5, 97.5]) if len(d) else (math.nan, math.nan)
    return s["tau"] - base["tau"], float(lo), float(hi)


def cost(signal: str, block: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """What a signal costs per architecture (training steps; passes for the proxies)."""
    if signal in ("params", "flops"):
        return "0 steps (meta device, 1 forward of shapes)"
    if signal in ("synflow", "grad_norm"):
        passes = rows[0]["proxy_passes"][signal]
        secs = sum(r["proxy_seconds"] for r in rows) / len(rows)
        return f"0 steps ({passes}; both proxies {secs:.2f} s)"
    if signal in FRACTIONS:
        steps = rows[0]["rung_steps"][signal]
        secs = sum(r["train_seconds"] for r in rows) / len(rows) * steps / block["budget_steps"]
        return f"{steps} steps (~{secs:.1f} s)"
    if signal == "reseeded":
        n = sum(r["signals"].get("reseeded") is not None for r in rows)
        return f"{block['budget_steps']} steps (a second full training; over {n} of the architectures)"
    inherited = block.get("inherited", {})
    return f"{inherited.get('steps', '?')} steps in all (one supernet, {inherited.get('seconds', math.nan):.0f} s)"


def analyse(results: dict[str, Any], resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Print one table per space; returns ``{space: {signal: statistics}}``."""
    m = results.get("machine", {})
    print(f"\nmachine: {m.get('processor')}, {m.get('cpus')} CPUs, torch {m.get('torch')}, {m.get('threads')} "
          f"thread; Kendall tau-b and Spearman rho against the full-budget quality, 95% bootstrap intervals "
          f"({resamples} resamples of the architectures, seed {seed}).")
    print("Sign: signal and quality are both turned so that higher is better (signal by its stated direction), so "
          "a positive value means the signal ranks like the true quality.")
    out: dict[str, dict[str, Any]] = {}
    for space, block in results["spaces"].items():
        rows = [r for r in block["archs"] if r["status"] == "ok" and r["quality"] is not None]
        bad = len(block["archs"]) - len(rows)
        sign_q = 1.0 if block["higher_is_better"] else -1.0
        truth = [sign_q * r["quality"] for r in rows]
        steps_per = block["budget_steps"]
        secs = sum(r["train_seconds"] for r in rows) / max(len(rows), 1)
        print(f"\n== {space}: {len(rows)} architectures trained at the full budget ({steps_per} steps, {secs:.1f} s "
              f"each){f'; {bad} failed, left out' if bad else ''}; quality: {block['metric']} "
              f"({'higher' if block['higher_is_better'] else 'lower'} is better)")
        print(f"{'signal':<10} {'higher predicts better?':<24} {'Kendall tau [95% CI]':<25} "
              f"{'Spearman rho [95% CI]':<25} {'tau - tau(params) [95% CI]':<27} cost per architecture")
        stats: dict[str, Any] = {}
        for signal, (_, higher) in SIGNALS.items():
            values = [r["signals"].get(signal) for r in rows]
            truth_here = truth
            if signal == "reseeded":  # run on a subset: compared over the architectures that have it
                have = [i for i, v in enumerate(values) if v is not None]
                if len(have) < 3:
                    continue
                values, truth_here = [values[i] for i in have], [truth[i] for i in have]
            if signal == "inherited" and any(v is None for v in values):
                why = "nas.supernet missing" if not supernet_available() else "not computed: run --add-inherited"
                print(f"{signal:<10} {'':<24} not available ({why})")
                continue
            if any(v is None or not math.isfinite(v) for v in values):
                print(f"{signal:<10} {'':<24} missing values")
                continue
            up = higher if higher is not None else block["higher_is_better"]
            s = bootstrap([(1.0 if up else -1.0) * v for v in values], truth_here, resamples, seed)
            s["n"] = len(values)
            stats[signal] = s
            versus = ""
            if signal not in ("params", "reseeded") and "params" in stats:
                d, lo, hi = paired_difference(s, stats["params"])
                s["minus_params"] = {"tau": d, "lo": lo, "hi": hi}
                versus = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            print(f"{signal:<10} {'yes' if up else 'no (lower does)':<24} "
                  f"{s['tau']:+.3f} [{s['tau_lo']:+.3f}, {s['tau_hi']:+.3f}]  "
                  f"{s['rho']:+.3f} [{s['rho_lo']:+.3f}, {s['rho_hi']:+.3f}]  {versus:<27} "
                  f"{cost(signal, block, rows)}")
        ceiling = stats.pop("reseeded", None)
        if ceiling:
            print(f"(reseeded is the truth against itself, its noise, not a candidate: over {ceiling['n']} "
                  f"architectures a second seed ranks them with tau {ceiling['tau']:+.3f})")
        if stats:
            best = max(stats, key=lambda k: stats[k]["tau"])
            free = {k: v for k, v in stats.items() if k in ("params", "flops", "synflow", "grad_norm")}
            best_free = max(free, key=lambda k: free[k]["tau"]) if free else None
            # not told apart from the best: the paired interval of tau(best) - tau(k) reaches 0
            close = [k for k in stats if k != best and paired_difference(stats[best], stats[k])[1] <= 0]
            print(f"best on {space}: {best} (tau {stats[best]['tau']:+.3f}); not told apart from it (paired "
                  f"95% interval of the difference reaching 0): {', '.join(close) or 'none'}")
            if best_free:
                print(f"best without training on {space}: {best_free} (tau {free[best_free]['tau']:+.3f})")
        out[space] = {**stats, **({"reseeded": ceiling} if ceiling else {})}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    p.add_argument("--archs", type=int, default=40, help="distinct architectures per space")
    p.add_argument("--out", type=Path, default=Path("out/cheap_signals/results.json"))
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--analyse", type=Path, metavar="FILE", help="print the tables of a results file and stop")
    p.add_argument("--reseed", type=int, default=0, metavar="N",
                   help="also train the first N architectures of each space with training.seed + 1 (the truth's noise)")
    p.add_argument("--add-inherited", type=Path, metavar="FILE",
                   help="fill in the inherited-weight column of a results file (needs nas.supernet)")
    args = p.parse_args()
    if args.analyse:
        analyse(json.loads(args.analyse.read_text()), args.resamples)
        return
    if args.add_inherited:
        if not supernet_available():
            sys.exit("--add-inherited needs nas.supernet (issue 17, part A), which is not installed here")
        results = json.loads(args.add_inherited.read_text())
        add_inherited(results, args.add_inherited, args.add_inherited.parent / "specs")
        analyse(results, args.resamples)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = run(args.spaces, args.archs, args.out, args.seed)
    if args.reseed:
        add_reseeded(results, args.out, args.out.parent / "specs", args.reseed)
    analyse(results, args.resamples)


if __name__ == "__main__":
    main()
