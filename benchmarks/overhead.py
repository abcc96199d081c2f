"""Where the time of a short search goes that is not training, side by side with an earlier revision.

Three figures, each for this checkout and (``--baseline REV``, default ``abcc93c``: the code before the
start-up and trial-path work) that revision, extracted with ``git archive`` and run in the same environment
(``PYTHONPATH`` puts its ``nas`` and ``nas_plugins`` first, Ray workers inherit it):

1. **Start-up** of the quick commands (``nas --help``, ``--version``, ``validate``, ``schema``, ``show``) and of
   ``import torch`` alone as the floor: whole-process wall time, ``--repeats`` runs interleaved new / baseline,
   median and range, and the median of the pairwise ratios new / baseline.
2. **The quickstart search** (``search_spaces/quickstart.yaml`` as shipped: 30 architectures, concurrency 2,
   early stopping, verification) run as ``nas search`` by each revision, once each (``--search-repeats``).
   *Ideal* wall time = the trials' training seconds summed (``info.train_seconds`` of every trained trial)
   over the concurrency, as the issue defines it; *overhead* = 1 - ideal / wall, the wall time measured
   around the whole command. It is split by the trials' own busy spans (``busy``: measuring, training,
   evaluating, in the worker): start-up (command start to the first trial's start), the trials' span, and
   the end (the last trial's end to the command's exit: verification, front, models, Ray shut-down); inside
   the span, the slots' idle seconds (scheduling, and a slot with nothing to run while another trains), and
   per trial the non-training seconds inside the worker (hardware measurement, evaluation).
3. **Trials of about a minute**: the quickstart space with ``--long-steps`` training steps (3600: about a
   minute per trial on this machine's cores at one thread), ``--long-trials`` of them, early stopping off;
   the same figures.

Training itself is not what is measured here (the trainer runs at 0.97x a hand-written loop); what is, is
everything around it. Timings are whole processes on a shared machine: compare the ratios in one run.

    python benchmarks/overhead.py                       # everything: about 15 minutes on 2 cores
    python benchmarks/overhead.py --skip-long --repeats 3
    python benchmarks/overhead.py --baseline none       # this checkout only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


# --- the two trees ------------------------------------------------------------------------------------------
def extract(rev: str, into: Path) -> Path:
    """The tree of ``rev`` under ``into``, importable as ``nas`` and ``nas_plugins`` through PYTHONPATH."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "nas_plugins").symlink_to(into / "plugins")  # installed as nas_plugins (see pyproject.toml)
    return into


def env_for(tree: Path | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 3600) -> tuple[float, str]:
    """Wall seconds of one whole process, and its stdout; fails loudly when it fails."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds, done.stdout


NAS = [sys.executable, "-m", "nas.cli"]


# --- 1. start-up --------------------------------------------------------------------------------------------
def startup(trees: dict[str, Path | None], work: Path, search_dir: Path, name: str, repeats: int
            ) -> dict[str, dict[str, list[float]]]:
    space = str(ROOT / "search_spaces" / "quickstart.yaml")
    commands = {
        "import torch (floor)": [sys.executable, "-c", "import torch"],
        "nas --help": [*NAS, "--help"],
        "nas --version": [*NAS, "--version"],
        "nas validate quickstart": [*NAS, "validate", space],
        "nas schema": [*NAS, "schema"],
        "nas show quickstart": [*NAS, "show", name, "--dir", str(search_dir)],
    }
    out: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in commands}
    for command, argv in commands.items():
        for path in trees.values():  # one untimed run each: the page cache, .pyc files
            timed(argv, env_for(path), work)
        for _ in range(repeats):
            for tree, path in trees.items():
                out[command][tree].append(timed(argv, env_for(path), work)[0])
    return out


# --- 2, 3. searches -----------------------------------------------------------------------------------------
def search(tree: Path | None, work: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run ``nas search`` on the quickstart space with ``overrides``; returns the wall time and every trial."""
    data = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    data["name"] = name
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    folder = work / name
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    started = time.time()
    wall, stdout = timed([*NAS, "search", "space.yaml", "--quiet", "--json", "--dir", "out"], env_for(tree), folder)
    ended = time.time()
    from nas.search import SearchPaths, load_study  # the journal's format is the same in both revisions

    study = load_study(SearchPaths(folder / "out", name))
    trials = []
    for t in study.get_trials(deepcopy=False):
        info, busy = t.user_attrs.get("info") or {}, t.user_attrs.get("busy")
        if busy and "train_seconds" in info and "repeat_of" not in t.user_attrs:
            trials.append({"number": t.number, "status": t.user_attrs.get("status"), "busy": busy,
                           "train": info["train_seconds"], "seconds": info.get("seconds", busy[1] - busy[0]),
                           "summary": t.user_attrs.get("summary"), "steps": t.user_attrs.get("steps")})
    return {"wall": wall, "started": started, "ended": ended, "trials": trials, "root": str(folder / "out"),
            "concurrency": data["search"].get("concurrency", 1), "summary": json.loads(stdout)["counts"]}


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where a search's wall time went (see the module docstring)."""
    trials, c = run["trials"], run["concurrency"]
    train = sum(t["train"] for t in trials)
    busy = sum(t["busy"][1] - t["busy"][0] for t in trials)
    first, last = min(t["busy"][0] for t in trials), max(t["busy"][1] for t in trials)
    span = last - first
    ideal = train / c
    return {
        "trials": len(trials), "wall": run["wall"], "ideal": ideal, "overhead": 1 - ideal / run["wall"],
        "startup": first - run["started"], "span": span, "end": run["ended"] - last,
        "idle_per_trial": (c * span - busy) / len(trials),
        "worker_non_training_per_trial": statistics.median(t["seconds"] - t["train"] for t in trials),
        "train_per_trial": train / len(trials),
    }


# --- printing -----------------------------------------------------------------------------------------------
def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def print_startup(table: dict[str, dict[str, list[float]]], trees: list[str]) -> None:
    print(f"\nStart-up, whole-process wall seconds, median [range] of {len(next(iter(table.values()))[trees[0]])}")
    head = f"{'command':<26}" + "".join(f"{t:>22}" for t in trees) + ("   new/baseline" if len(trees) == 2 else "")
    print(head)
    for command, by_tree in table.items():
        line = f"{command:<26}" + "".join(f"{med(by_tree[t]):>22}" for t in trees)
        if len(trees) == 2:
            ratios = [a / b for a, b in zip(by_tree[trees[0]], by_tree[trees[1]])]
            line += f"   {statistics.median(ratios):.2f}"
        print(line)


def print_searches(title: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n{title}")
    rows = [("trials trained", "trials", "{:.0f}"), ("wall s", "wall", "{:.1f}"),
            ("ideal s (train / concurrency)", "ideal", "{:.1f}"), ("overhead (1 - ideal / wall)", "overhead", "{:.1%}"),
            ("  start-up s (to first trial)", "startup", "{:.1f}"), ("  trials' span s", "span", "{:.1f}"),
            ("  end s (after the last trial)", "end", "{:.1f}"),
            ("  slot idle s per trial", "idle_per_trial", "{:.2f}"),
            ("  worker non-training s / trial", "worker_non_training_per_trial", "{:.2f}"),
            ("training s per trial", "train_per_trial", "{:.2f}")]
    names = list(runs)
    print(f"{'':<34}" + "".join(f"{n:>16}" for n in names))
    figures = {n: [breakdown(r) for r in rs] for n, rs in runs.items()}
    for label, key, form in rows:
        print(f"{label:<34}" + "".join(f"{form.format(statistics.median(f[key] for f in figures[n])):>16}"
                                       for n in names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="abcc93c", help="git revision to compare with, or 'none'")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each start-up command")
    parser.add_argument("--search-repeats", type=int, default=1)
    parser.add_argument("--skip-long", action="store_true", help="skip the trials of about a minute")
    parser.add_argument("--skip-startup", action="store_true", help="skip the start-up timings")
    parser.add_argument("--long-steps", type=int, default=3600)
    parser.add_argument("--long-trials", type=int, default=4)
    parser.add_argument("--trials", type=int, help="n_trials of the quickstart search (default: the file's, 30)")
    parser.add_argument("--out", type=Path, help="keep the searches and write results.json here")
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="nas-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    trees: dict[str, Path | None] = {"new": None}
    if args.baseline != "none":
        trees[f"baseline {args.baseline}"] = extract(args.baseline, work / "baseline-tree")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}")
    print(f"work folder: {work}")

    quick: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
    long: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
    for i in range(args.search_repeats):
        for k, (tree, path) in enumerate(trees.items()):
            quick[tree].append(search(path, work, f"quick{k}-{i}", {"search": {"n_trials": args.trials}}
                                      if args.trials else {}))
    if not args.skip_long:
        overrides = {"training": {"steps": args.long_steps},
                     "search": {"n_trials": args.long_trials, "early_stopping": {"enabled": False}}}
        for i in range(args.search_repeats):
            for k, (tree, path) in enumerate(trees.items()):
                long[tree].append(search(path, work, f"long{k}-{i}", overrides))
    table = {} if args.skip_startup else startup(trees, work, Path(quick["new"][0]["root"]), "quick0-0", args.repeats)

    if table:
        print_startup(table, list(trees))
    print_searches(f"The quickstart search ({args.trials or 30} architectures, concurrency 2), median over "
                   f"{args.search_repeats} run(s)", quick)
    if not args.skip_long:
        print_searches(f"Trials of about a minute ({args.long_trials} x {args.long_steps} steps, concurrency 2)", long)
    (work / "results.json").write_text(json.dumps({"startup": table, "quick": quick, "long": long}, indent=1))
    print(f"\nraw figures: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
