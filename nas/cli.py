"""The ``nas`` command. Exit codes: 0 success; 1 a trial or search failed (a search fails when it aborts or every
finished trial failed); 2 bad input (file, flag, plugin) or a refused search (locked, or resumed with another
space); 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import KINDS, STRICT_ENV

if TYPE_CHECKING:
    from .architecture import Architecture
    from .spec import Spec

EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """Bad input from the command line; printed as one line and exits 2."""


def _load(path: str, quiet: bool = False) -> Any:
    from .spec import load_spec

    loaded = load_spec(path)
    if not quiet:
        for w in loaded.warnings:
            print(f"warning: {w.format(path)}", file=sys.stderr)
    return loaded


# --- nas validate ----------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.files:
        _load(path)
        print(f"{path}: ok")
    return 0


# --- nas plugins -----------------------------------------------------------------------------------
def _space_plugins(path: str | None, required: bool) -> None:
    """Import the modules a space lists under ``plugins:``. ``required``: one that fails is an error (exit 2);
    otherwise it is only recorded as broken (``nas plugins`` lists it)."""
    from . import registry

    if path is None:
        return
    from .spec import space_plugins

    for module in space_plugins(path):
        try:
            registry.load_plugins([module])
        except registry.PluginError:
            if required or registry.strict():
                raise


def _plugin_rows(kind: str | None) -> list[dict[str, Any]]:
    from . import registry

    registry.load_plugins()
    rows = []
    for e in registry.entries(kind):
        params = {k: v for k, v in e.config.model_json_schema().get("properties", {}).items() if k != "type"}
        rows.append({
            "kind": e.kind, "name": e.name, "provider": e.provider, "version": e.version,
            "class": f"{e.cls.__module__}.{e.cls.__qualname__}", "summary": e.summary,
            "capabilities": e.capabilities.describe(e.kind), "parameters": params,
        })
    return rows


def cmd_plugins(args: argparse.Namespace) -> int:
    from . import registry

    if args.kind is not None and args.kind not in KINDS:
        raise UsageError(f"unknown kind '{args.kind}'{registry.did_you_mean(args.kind, KINDS)} "
                         f"valid: {', '.join(KINDS)}")
    _space_plugins(args.space, required=False)
    rows = _plugin_rows(args.kind)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        _warn_broken(args.verbose)
        return 0
    kw = max((len(r["kind"]) for r in rows), default=4)
    nw = max((len(r["name"]) for r in rows), default=4)
    pad = " " * kw
    for r in rows:
        params = ", ".join(f"{k}={p.get('default', '?')}" for k, p in r["parameters"].items()) or "-"
        caps = ", ".join(f"{k}={v}" for k, v in r["capabilities"].items())
        print(f"{r['kind']:<{kw}}  {r['name']:<{nw}}  {r['provider']} {r['version']}")
        for line in textwrap.wrap(r["summary"], 100):
            print(f"{pad}  {line}")
        print(f"{pad}  params: {params}")
        for k, p in r["parameters"].items():
            if p.get("description"):
                print(textwrap.fill(p["description"], 100, initial_indent=f"{pad}    {k}: ",
                                    subsequent_indent=f"{pad}      "))
        print(f"{pad}  capabilities: {caps}")
    broken = registry.broken()
    if broken:
        print(f"\nbroken plugins ({len(broken)}): not loaded, their blocks are unavailable")
        for b in broken:
            print(f"  {b.label}")
            print(f"    {b.error}")
            if b.location:
                print(f"    at {b.location}")
            if b.declares:
                print("    declares: " + ", ".join(f"{k} {n}" for k, n in b.declares))
            if args.verbose:
                print(textwrap.indent(b.traceback.rstrip(), "    | "))
        if not args.verbose:
            print("  (`nas plugins --verbose` shows each traceback)")
    return 0


def _warn_broken(verbose: bool) -> None:
    """One warning line per broken plugin on stderr (and its traceback with ``--verbose``)."""
    from . import registry

    for b in registry.broken():
        print(f"warning: {b.describe()}; skipped (`nas plugins` lists it"
              f"{'' if verbose else ', --verbose shows the traceback'})", file=sys.stderr)
        if verbose:
            print(textwrap.indent(b.traceback.rstrip(), "  | "), file=sys.stderr)


# --- nas schema ------------------------------------------------------------------------------------
def cmd_schema(args: argparse.Namespace) -> int:
    from . import registry
    from .spec import spec_model

    registry.load_plugins(args.plugin or ())
    _space_plugins(args.space, required=True)
    schema = spec_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "nas search space"
    print(json.dumps(schema, indent=2))
    return 0


# --- nas plugin new --------------------------------------------------------------------------------
def cmd_plugin_new(args: argparse.Namespace) -> int:
    from .scaffold import ScaffoldError, scaffold

    try:
        written = scaffold(args.kind, args.name, Path(args.dir) if args.dir else None)
    except ScaffoldError as exc:
        raise UsageError(str(exc)) from None
    root = written.root
    print(f"wrote {root}/ ({written.distribution}: {args.kind} '{args.name}', entry point {written.entry_point}):")
    for path in written.files:
        print(f"  {path.relative_to(root)}")
    print(f"next: pip install -e {root} && pytest {root}   (then `nas plugins --kind {args.kind}` lists it)")
    return 0


# --- nas trial -------------------------------------------------------------------------------------
def sample_one(spec: Spec, seed: int) -> Architecture:
    """Sample one architecture with a seeded random sampler (the same code path a search uses)."""
    import optuna

    from .space import sample_architecture

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return sample_architecture(spec, study.ask())


def cmd_trial(args: argparse.Namespace) -> int:
    import torch

    from .architecture import Architecture
    from .trial import run_trial, training_threads

    loaded = _load(args.space, quiet=args.json)
    spec = loaded.spec
    torch.set_num_threads(args.threads if args.threads is not None else training_threads(spec))
    if args.arch:
        from .spec import yamlio

        try:
            data, _ = yamlio.load(args.arch)
            arch = Architecture.model_validate(data)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--arch {args.arch}: {exc}") from None
    else:
        arch = sample_one(spec, spec.training.seed if args.seed is None else args.seed)
    if not args.json:
        print(f"architecture: {arch.summary()}")
    log = None if args.json else (lambda step, loss: print(f"  step {step:>5}  loss {loss:.4f}", flush=True))
    result = run_trial(spec, arch, on_log=log)
    if args.json:
        out = result.to_dict()
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"status: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        for k, v in result.metrics.items():
            print(f"  {k:<18} {v:.6g}")
        print(f"  device: {result.info['device']}; {result.info['seconds']:.1f} s")
        if result.status == "failed" and "traceback" in result.info:
            print(result.info["traceback"], file=sys.stderr)
    return 0 if result.status == "ok" else EXIT_FAILED


# --- nas search / show / ui ----------------------------------------------------------------------
def quiet_libraries(verbose: bool) -> None:
    """Hide MLflow's and Ray's chatter (database set-up lines, artifact progress bars, run URLs, Ray's start-up
    and token lines) unless ``verbose``; warnings and errors of nas itself still show.

    MLflow reads its level from ``MLFLOW_LOGGING_LEVEL`` when it is imported; Ray sets its logger to INFO when
    imported, and the search starts Ray at the level of that logger: so Ray is imported here, then quieted."""
    import logging
    import warnings

    import ray  # noqa: F401  (see the docstring)

    if verbose:
        logging.getLogger("ray").setLevel(logging.INFO)
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name, level in (("mlflow", logging.WARNING), ("alembic", logging.WARNING), ("ray", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?$")


def cmd_search(args: argparse.Namespace) -> int:
    quiet_libraries(args.verbose)
    from .search import SearchAborted, SearchPaths, SearchRefused, format_outcome, run_search

    loaded = _load(args.space)
    root = Path(args.dir or loaded.spec.search.dir)
    if args.resume and not SearchPaths(root, loaded.spec.name).journal.exists():
        raise UsageError(f"--resume: no search named '{loaded.spec.name}' under {root} to resume")
    try:
        outcome = run_search(loaded, root=root, address=args.address, live=not args.quiet and not args.json,
                             tracking_uri=args.tracking_uri)
    except SearchRefused as exc:  # another process holds the search, or its stored space differs
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SearchAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_outcome_json(outcome), indent=2))
    else:
        print(format_outcome(outcome))
        print(_next_steps(outcome.name, root, outcome.front.pareto))
    return outcome.exit_code


def _next_steps(name: str, root: Path, front: Sequence[Any]) -> str:
    """Where to look next, with the commands spelled out for this search."""
    at = "" if root == Path(".nas") else f" --dir {root}"
    example = front[0].number if front else "TRIAL"
    steps = [(f"nas ui{at}", "the MLflow UI, opened on this front (each trial, its model)"),
             (f"nas show {name} --all{at}", "every trial, with its parameters"),
             (f"nas export {name} {example} DIR{at}", "a front trial's model, for nas.load_model(DIR)")]
    width = max(len(c) for c, _ in steps)
    return "\n".join(["", "next:"] + [f"  {c:<{width}}  {what}" for c, what in steps])


def _outcome_json(outcome: Any) -> dict[str, Any]:
    import dataclasses

    return {
        "name": outcome.name, "counts": outcome.counts.as_dict(), "hypervolume": outcome.hypervolume,
        "reference_point": outcome.reference, "seconds": outcome.seconds, "aborted": outcome.aborted,
        "mlflow_parent_run_id": outcome.parent_run_id, "stopped_by": outcome.signal, "notes": list(outcome.notes),
        "objectives": [{"metric": m, "direction": d} for m, d in outcome.front.objectives],
        "front": [dataclasses.asdict(r) for r in outcome.front.pareto],
        "pair_fronts": outcome.front.pair_fronts,
    }


def cmd_show(args: argparse.Namespace) -> int:
    from .report import format_table
    from .search import SearchOutcome, SearchPaths, count_trials, load_study, study_front  # no Ray, MLflow, torch

    if args.name is None:
        return _list_searches(Path(args.dir), args.json)
    paths = SearchPaths(Path(args.dir), args.name)
    try:
        study = load_study(paths)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    front, hv, ref = study_front(study)
    outcome = SearchOutcome(args.name, front, hv, ref, count_trials(study), 0.0,
                            study.user_attrs.get("mlflow_parent_run_id", ""), paths)
    trials = study.get_trials(deepcopy=False)
    failures = [{"trial": t.number, "reason": t.user_attrs.get("reason")} for t in trials if t.user_attrs.get("reason")]
    params = {t.number: _trial_params(t) for t in trials}
    if args.json:
        out = _outcome_json(outcome)
        out.pop("seconds")
        for row in out["front"]:
            row["params"] = params[row["number"]]
        if args.all:
            out["trials"] = [{"number": r.number, "architecture": r.summary, "values": r.values,
                              "pareto_rank": k if k >= 0 else None, "feasible": r.feasible, "run_id": r.run_id,
                              "params": params[r.number], "metrics": r.metrics}
                             for r, k in zip(front.rows, front.ranks)]
        out["failures"] = failures
        print(json.dumps(out, indent=2))
        return 0
    c = outcome.counts
    print(f"search '{args.name}' ({paths.journal}): {c.complete} complete, {c.stopped} stopped early, "
          f"{c.failed} failed, {c.infeasible} infeasible, {c.repeats} repeats, {c.interrupted} interrupted; "
          f"{c.steps} training steps")
    print(f"hypervolume: {hv:.6g} (reference point {ref})" if hv is not None else "hypervolume: -")
    print("\nPareto front:\n" + format_table(front))
    shown = front.rows if args.all else front.pareto
    if args.all:
        print("\nAll complete trials:\n" + format_table(front, only_front=False))
    if shown:
        print("\nSearched parameters" + (":" if args.all else " of the front:"))
        for r in sorted(shown, key=lambda r: r.number):
            print(f"  {r.number:>4}  " + "  ".join(f"{k}={v}" for k, v in params[r.number].items()))
    for f in failures:
        print(f"trial {f['trial']}: {f['reason']}")
    return 0


def _trial_params(trial: Any) -> dict[str, Any]:
    """A trial's sampled parameters under their dotted names (as in the YAML, MLflow and the study)."""
    from .space import param_name

    return {param_name(k): v for k, v in sorted(trial.params.items())}


def _list_searches(root: Path, as_json: bool) -> int:
    """``nas show`` without a name: every search stored under ``root``."""
    import time

    from .search import SearchPaths, count_trials, load_study, study_front

    journals = sorted((root / "studies").glob("*.journal"), key=lambda p: p.stat().st_mtime, reverse=True)
    rows = []
    for journal in journals:
        study = load_study(SearchPaths(root, journal.stem))
        front, hv, _ = study_front(study)
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(journal.stat().st_mtime))
        rows.append({"name": journal.stem, "counts": count_trials(study).as_dict(), "front": len(front.pareto),
                     "hypervolume": hv, "modified": modified,
                     "mlflow_parent_run_id": study.user_attrs.get("mlflow_parent_run_id", "")})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no searches under {root} yet; run `nas search SPACE.yaml` (or pass --dir)")
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"searches under {root} (newest first):")
    for r in rows:
        c, hv = r["counts"], r["hypervolume"]
        print(f"  {r['name']:<{width}}  {c['complete']} complete, {c['failed']} failed; front {r['front']}; "
              f"hypervolume {'-' if hv is None else f'{hv:.4g}'}; {r['modified']}")
    print("`nas show NAME` for one of them")
    return 0


def ui_command(root: Path, port: int) -> list[str]:
    """The MLflow server ``nas ui`` starts: one worker (a local viewer needs no more; each is ~0.9 GB), bound to
    127.0.0.1, answering only requests addressed to it (Host header) and scripts from its own pages (CORS)."""
    import shutil

    from .tracking import tracking_uri

    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow") or "mlflow"
    here = [f"127.0.0.1:{port}", f"localhost:{port}"]
    return [mlflow_bin, "ui", "--backend-store-uri", tracking_uri(root), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--allowed-hosts", ",".join(here),
            "--cors-allowed-origins", ",".join(f"http://{h}" for h in here)]


def _front_urls(root: Path, port: int, name: str | None) -> list[tuple[str, str]]:
    """(search, URL opening its experiment on the saved view of its front), newest search first."""
    import sqlite3

    from .tracking import FRONT_VIEW

    # read-only, straight from the store: importing MLflow here would cost seconds before the URL shows
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT e.experiment_id, e.name FROM experiments e JOIN experiment_tags t ON t.experiment_id = "
            "e.experiment_id WHERE t.key = ? AND e.lifecycle_stage = 'active' ORDER BY e.last_update_time DESC",
            (f"mlflow.sharedViewState.{FRONT_VIEW}",)).fetchall()
    # the runs tab itself (the experiment's root redirects there and drops the view key), in the training view
    urls = [(n, f"http://127.0.0.1:{port}/#/experiments/{i}/runs?viewStateShareKey={FRONT_VIEW}"
                "&workflowType=machine_learning") for i, n in found]
    if name is not None:
        urls = [u for u in urls if u[0] == name]
        if not urls:
            raise UsageError(f"no search named '{name}' in {root / 'mlflow.db'}; known: "
                             f"{', '.join(n for _, n in found) or 'none'}")
    return urls


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import sqlite3
    import subprocess
    import time
    import urllib.request

    root = Path(args.dir)
    if not (root / "mlflow.db").exists():
        raise UsageError(f"no MLflow store at {root / 'mlflow.db'}; run `nas search SPACE.yaml` first "
                         "(or pass --dir)")
    cmd = ui_command(root, args.port)
    try:
        urls = _front_urls(root, args.port, args.name)
    except sqlite3.Error:  # a store of another MLflow version: the UI still opens, at its start page
        urls = []
    if args.dry_run:
        for search, url in urls:
            print(f"{search}: {url}")
        print(" ".join(cmd))
        return 0
    started = time.perf_counter()
    log = None if args.verbose else (root / "ui.log").open("ab")
    # No job runner (MLflow's background jobs serve GenAI evaluation): three fewer processes to start
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                            "false")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None, env=env)
    health = f"http://127.0.0.1:{args.port}/health"
    try:
        while True:
            if proc.poll() is not None:
                print(f"error: the MLflow server exited ({proc.returncode})"
                      + ("" if args.verbose else f"; its output is in {root / 'ui.log'}"), file=sys.stderr)
                return EXIT_FAILED
            try:
                with urllib.request.urlopen(health, timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        print(f"MLflow UI ready in {time.perf_counter() - started:.1f} s (1 worker, 127.0.0.1 only; Ctrl-C to stop)")
        if urls:
            print("the front of each search (its front trials, objectives as columns, best first):")
            for search, url in urls:
                print(f"  {search}: {url}")
        else:
            print(f"  http://127.0.0.1:{args.port}/")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        return 0 if proc.wait() in (0, -signal.SIGTERM, -signal.SIGINT) else EXIT_FAILED
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if log is not None:
            log.close()


# --- nas export ----------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from .saved import ARCHITECTURE, SPACE, TASK, WEIGHTS, check_safetensors, write_saved
    from .search import SearchPaths, load_study

    paths = SearchPaths(Path(args.dir), args.name)
    try:
        study = load_study(paths)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if args.trial not in trials:
        raise UsageError(f"search '{args.name}' has no trial {args.trial} (trials 0..{len(trials) - 1})")
    weights = paths.weights / f"trial_{args.trial}.safetensors"
    if not weights.is_file():
        raise UsageError(f"trial {args.trial} of '{args.name}' has no saved weights ({weights}): weights are kept "
                         f"for trials that finished ok, with search.save_weights: true")
    try:
        check_safetensors(weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; export into a new folder")
    text = study.user_attrs.get("spec_text", "")
    task = _stored_task(text)
    arch_json = weights.with_suffix(".json").read_text()
    write_saved(out, weights.read_bytes(), arch_json, task, text)
    t = trials[args.trial]
    values = ", ".join(f"{m}={v:.4g}" for (m, _), v in zip(study.user_attrs["objectives"], t.values or []))
    (out / "README.md").write_text(_export_readme(args.name, args.trial, t.user_attrs.get("summary", ""), values,
                                                  out))
    print(f"exported trial {args.trial} of '{args.name}' ({t.user_attrs.get('summary', '')}) to {out}: "
          f"{WEIGHTS}, {ARCHITECTURE}, {TASK}, {SPACE}, README.md")
    print(f'load it: python -c "import nas; print(nas.load_model(\'{out}\'))"')
    return 0


def cmd_supernet_export(args: argparse.Namespace) -> int:
    from .search.one_shot import export_subnet

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; export into a new folder")
    try:
        number, arch = export_subnet(Path(args.dir), args.name, out, args.candidate)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"exported candidate {number} of '{args.name}' ({arch.summary()}) with its supernet weights to {out}")
    print(f'load it: python -c "import nas; print(nas.load_model(\'{out}\'))"')
    return 0


def _stored_task(spec_text: str) -> dict[str, Any]:
    """The task config of a stored search, defaults filled in, from the YAML the study keeps."""
    from . import registry
    import yaml

    registry.load_plugins()
    data = yaml.safe_load(spec_text) or {}  # already checked (and bounded) when the search started
    task = data.get("task", {"type": registry.default("task")})
    entry = registry.get("task", task["type"])
    try:
        return entry.config.model_validate(task).model_dump(mode="json")
    except ValueError:  # e.g. a text task's files are not here: the shapes are all a model needs
        return entry.config.model_construct(**task).model_dump(mode="json")


def _export_readme(name: str, trial: int, summary: str, values: str, out: Path) -> str:
    return textwrap.dedent(f"""\
        # Trial {trial} of the search `{name}`

        {summary}: {values}

        - `weights.safetensors`: the trained weights (safetensors; no pickle)
        - `architecture.json`: the resolved architecture (every block's config)
        - `task.json`: the task it reads and predicts (vocabulary, sequence length)
        - `space.yaml`: the search space it came from

        Load it where `nas-transformers` is installed (its compression, if any, is re-applied):

        ```python
        import torch
        import nas

        model = nas.load_model("{out}")          # a torch.nn.Module in eval mode, on the CPU
        x = torch.zeros(1, 16, dtype=torch.long)  # (batch, sequence) token ids; task.json has the sizes
        logits = model(x)
        ```
        """)


# --- nas profile -----------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import ProfileSettings, format_report, log_to_mlflow, run_profile, write_outputs

    names = [n.strip() for group in (args.attention or []) for n in group.split(",") if n.strip()] or None
    settings = ProfileSettings(attention=names, batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                               device=args.device, mode=args.mode, causal=args.direction == "causal",
                               warmup=args.warmup, repeats=args.repeats, threads=args.threads, budget_s=args.budget,
                               fit_from=args.fit_from, layer=not args.no_layer, seed=args.seed)
    if args.seq_lens:
        settings.seq_lens = sorted(set(args.seq_lens))
    if args.layer_seq_lens:
        settings.layer_seq_lens = sorted(set(args.layer_seq_lens))
    out = Path(args.out) if args.out else Path(args.dir) / "profile"
    log = None if args.json or args.quiet else (lambda line: print(line, flush=True))
    report = run_profile(settings, log=log or (lambda line: None))
    write_outputs(report, out)
    if args.track:
        run_id = log_to_mlflow(report, out, Path(args.dir))
        report.notes.append(f"logged to MLflow run {run_id} (`nas ui --dir {args.dir}`)")
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else format_report(report))
    return 0


# --- nas --version ---------------------------------------------------------------------------------
DISTRIBUTION = "nas-transformers"
_DEPENDENCIES = ("torch", "optuna", "ray", "mlflow", "pydantic", "triton")


def version_report() -> str:
    """The versions of nas, its main dependencies and every installed plugin package (read from the installed
    metadata, without importing any of them)."""
    from importlib import metadata

    from . import __version__
    from .names import ENTRY_POINT_GROUP

    def installed(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    lines = [f"nas {__version__} (distribution {DISTRIBUTION})"]
    lines += [f"{dist} {installed(dist)}" for dist in _DEPENDENCIES]
    providers: dict[str, list[str]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value.split(".")[0]
        providers.setdefault(dist, []).append(ep.name)
    lines.append("plugins:" if providers else "plugins: none installed")
    lines += [f"  {dist}: {', '.join(sorted(names))}" for dist, names in sorted(providers.items())]
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, help="print the versions of nas, its dependencies and the "
                         "installed plugins, and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_report())
        parser.exit()


# --- entry point -----------------------------------------------------------------------------------
def _plugin_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--strict`` and ``--verbose``, accepted before the command and after it."""
    parser.add_argument("--strict", action="store_true", default=default,
                        help=f"any plugin that fails to import is an error, exit 2 (also: {STRICT_ENV}=1)")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show the traceback of each plugin that failed to import, and the libraries' own "
                             "output (MLflow's and Ray's log lines; the MLflow server's under `nas ui`)")


class _Subparsers:
    """``add_parser`` with the options every command takes."""

    def __init__(self, action: Any, common: argparse.ArgumentParser):
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(name, parents=[self.common], **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas", description="Neural architecture search for efficient Transformers")
    parser.add_argument("--version", action=_VersionAction)
    _plugin_options(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    _plugin_options(common, default=argparse.SUPPRESS)
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    p = sub.add_parser("validate", help="check search-space files; list every problem with its line")
    p.add_argument("files", nargs="+", metavar="SPACE.yaml")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("plugins", help="list registered blocks, their parameters and capabilities, and the "
                       "plugins that failed to import")
    p.add_argument("--kind", help=f"only this kind ({', '.join(KINDS)})")
    p.add_argument("--space", metavar="SPACE.yaml", help="also import the modules this space lists under `plugins:`")
    p.add_argument("--json", action="store_true", help="machine-readable, with each block's JSON Schema")
    p.set_defaults(fn=cmd_plugins)

    p = sub.add_parser("schema", help="print the JSON Schema of search-space files (for editor completion)")
    p.add_argument("--plugin", action="append", metavar="MODULE", help="also import this plugin module")
    p.add_argument("--space", metavar="SPACE.yaml", help="also import the modules this space lists under `plugins:`")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("plugin", help="work on a plugin package: `nas plugin new KIND NAME` writes a new one")
    plugin_sub = _Subparsers(p.add_subparsers(dest="plugin_command", required=True, metavar="ACTION"), common)
    q = plugin_sub.add_parser("new", help="write a plugin package (pyproject with the entry point, a block "
                              "skeleton, a conformance-kit test, a README) that installs and passes as written")
    q.add_argument("kind", choices=KINDS)
    q.add_argument("name", help="the block's registered name (a Python identifier, e.g. talking_heads)")
    q.add_argument("--dir", help="where to write it (default: ./nas-NAME, with - for _); must not exist or be empty")
    q.set_defaults(fn=cmd_plugin_new, needs_plugins=False)

    p = sub.add_parser("trial", help="sample (or take) one architecture, train it, measure it")
    p.add_argument("space", metavar="SPACE.yaml")
    p.add_argument("--seed", type=int, help="sampling seed (default: training.seed)")
    p.add_argument("--arch", metavar="FILE", help="a fixed architecture (JSON or YAML) instead of sampling")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--threads", type=_positive_int, help="torch threads for training (default: as a search "
                   "trial, search.resources.cpus, which defaults to 1; latency is measured with measure.threads)")
    p.set_defaults(fn=cmd_trial)

    p = sub.add_parser("search", help="run (or resume) a multi-objective search on Ray, logged to MLflow")
    p.add_argument("space", metavar="SPACE.yaml")
    p.add_argument("--resume", action="store_true", help="require an existing search of this name (a plain "
                   "run resumes one anyway)")
    p.add_argument("--address", help="Ray cluster address (overrides search.address); default: local Ray")
    p.add_argument("--dir", help="root of the study, MLflow store and artifacts (overrides search.dir)")
    p.add_argument("--tracking-uri", help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else "
                   "DIR/mlflow.db); the search goes on when it is unreachable and fills it in when it is back")
    p.add_argument("--quiet", action="store_true", help="no live progress, only the final front")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("show", help="print a search's front and summary from its stored study (no name: list "
                       "the searches)")
    p.add_argument("name", nargs="?")
    p.add_argument("--dir", default=".nas", help="root the search wrote to (default .nas)")
    p.add_argument("--all", action="store_true", help="also list every complete trial with its rank and parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show, needs_plugins=False)

    p = sub.add_parser("ui", help="start the MLflow UI (127.0.0.1) on the searches' store; prints the URL of each "
                       "search's front")
    p.add_argument("name", nargs="?", help="only this search's URL (default: every search, newest first)")
    p.add_argument("--dir", default=".nas", help="root the searches wrote to (default .nas)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the URLs and the command instead of starting it")
    p.set_defaults(fn=cmd_ui, needs_plugins=False)

    p = sub.add_parser("export", help="write a trial's model (safetensors weights, architecture, task, README) "
                       "to a folder that nas.load_model reads")
    p.add_argument("name", help="the search")
    p.add_argument("trial", type=int, help="the trial number (a front trial: see `nas show NAME`)")
    p.add_argument("out", metavar="DIR", help="a new (or empty) folder")
    p.add_argument("--dir", default=".nas", help="root the search wrote to (default .nas)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("supernet", help="a one-shot search's supernet: `nas supernet export NAME PATH` writes a "
                       "subnet with its inherited weights as a model that nas.load_model reads")
    supernet_sub = _Subparsers(p.add_subparsers(dest="supernet_command", required=True, metavar="ACTION"), common)
    q = supernet_sub.add_parser("export", help="extract a screened candidate (default: the best by non-dominated "
                                "rank) from the supernet, with its inherited weights, into a new folder")
    q.add_argument("name", help="the one-shot search")
    q.add_argument("out", metavar="PATH", help="a new (or empty) folder")
    q.add_argument("--candidate", type=int, help="the candidate number (see `nas show NAME.oneshot --all`)")
    q.add_argument("--dir", default=".nas", help="root the search wrote to (default .nas)")
    q.set_defaults(fn=cmd_supernet_export)

    p = sub.add_parser("profile", help="measure each attention type's time and memory against sequence length; "
                       "fit scaling exponents; compare a layer's activation memory with Korthikanti et al.")
    p.add_argument("--attention", action="append", metavar="NAMES",
                   help="comma-separated attention types (repeatable; default: every registered one)")
    p.add_argument("--seq-lens", type=_positive_int, nargs="+", metavar="T",
                   help="sequence lengths (default: 256 512 1024 2048 4096)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--heads", type=_positive_int, default=4)
    p.add_argument("--head-dim", type=_positive_int, default=32)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--mode", choices=("forward", "train"), default="forward",
                   help="forward: inference; train: forward + backward (default forward)")
    p.add_argument("--direction", choices=("causal", "bidirectional"), default="causal",
                   help="types that cannot run this way run the other way, with a note (default causal)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--repeats", type=_positive_int, default=5,
                   help="timed calls at least; short calls are repeated more (default 5)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default 1, as nas.measure)")
    p.add_argument("--budget", type=float, default=30.0, metavar="SECONDS",
                   help="skip a point predicted to take longer than this in all (default 30)")
    p.add_argument("--fit-from", type=_positive_int, metavar="T",
                   help="fit exponents over lengths >= T (default: the upper half of the sweep)")
    p.add_argument("--no-layer", action="store_true", help="skip the layer activation-memory comparison")
    p.add_argument("--layer-seq-lens", type=_positive_int, nargs="+", metavar="T",
                   help="sequence lengths of the layer comparison (default: 256 512 1024 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for the CSV, JSON and PNG files (default: DIR/profile)")
    p.add_argument("--dir", default=".nas", help="root of the MLflow store (default .nas)")
    p.add_argument("--track", action="store_true", help="log the profile to MLflow as a run under --dir")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the final tables")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and --version exit here, having imported nothing else
    from . import registry
    from .registry import PluginError, RegistryError
    from .spec import SpecError

    # `plugins: [my_module]` (and `--plugin`) name modules importable from the directory `nas` runs in, as under
    # `python -m nas.cli`; the `nas` console script does not put that directory on sys.path by itself.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.strict:  # in the environment, so that Ray workers started from here are strict too
        os.environ[STRICT_ENV] = "1"
    try:
        if getattr(args, "needs_plugins", True):
            registry.load_plugins()  # a broken plugin is recorded and skipped (an error when strict)
            if args.fn is not cmd_plugins:
                _warn_broken(args.verbose)
        return args.fn(args)
    except SpecError as exc:
        print(f"{len(exc.problems)} problem(s) in {exc.source}:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p.format(exc.source)}", file=sys.stderr)
        _tracebacks(args.verbose)
        return EXIT_USAGE
    except (UsageError, PluginError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        _tracebacks(args.verbose)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def _tracebacks(verbose: bool) -> None:
    """With ``--verbose``, after an error: the traceback of every plugin that failed to import."""
    from . import registry

    for b in registry.broken() if verbose else ():
        print(f"traceback of {b.label}:\n" + textwrap.indent(b.traceback.rstrip(), "  | "), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
