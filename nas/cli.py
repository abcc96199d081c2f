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

from . import registry
from .registry import KINDS

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
    for b in registry.broken():
        print(f"warning: {b.describe()}; skipped (`nas plugins` lists it"
              f"{'' if verbose else ', --verbose shows the traceback'})", file=sys.stderr)
        if verbose:
            print(textwrap.indent(b.traceback.rstrip(), "  | "), file=sys.stderr)


# --- nas schema ------------------------------------------------------------------------------------
def cmd_schema(args: argparse.Namespace) -> int:
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
    from .architecture import Architecture
    from .trial import run_trial

    loaded = _load(args.space, quiet=args.json)
    spec = loaded.spec
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
def cmd_search(args: argparse.Namespace) -> int:
    from .search import SearchAborted, SearchPaths, SearchRefused, format_outcome, run_search

    loaded = _load(args.space)
    root = Path(args.dir or loaded.spec.search.dir)
    if args.resume and not SearchPaths(root, loaded.spec.name).journal.exists():
        raise UsageError(f"--resume: no search named '{loaded.spec.name}' under {root} to resume")
    try:
        outcome = run_search(loaded, root=root, address=args.address, live=not args.quiet,
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
    return outcome.exit_code


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
    from .search import SearchOutcome, SearchPaths, count_trials, load_study, study_front

    paths = SearchPaths(Path(args.dir), args.name)
    try:
        study = load_study(paths)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    front, hv, ref = study_front(study)
    outcome = SearchOutcome(args.name, front, hv, ref, count_trials(study), 0.0,
                            study.user_attrs.get("mlflow_parent_run_id", ""), paths)
    failures = [{"trial": t.number, "reason": t.user_attrs.get("reason")} for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("reason")]
    if args.json:
        out = _outcome_json(outcome)
        out.pop("seconds")
        out["failures"] = failures
        print(json.dumps(out, indent=2))
        return 0
    c = outcome.counts
    print(f"search '{args.name}' ({paths.journal}): {c.complete} complete, {c.stopped} stopped early, "
          f"{c.failed} failed, {c.infeasible} infeasible, {c.repeats} repeats, {c.interrupted} interrupted; "
          f"{c.steps} training steps")
    print(f"hypervolume: {hv:.6g} (reference point {ref})" if hv is not None else "hypervolume: -")
    print("\nPareto front:\n" + format_table(front))
    if args.all:
        print("\nAll complete trials:\n" + format_table(front, only_front=False))
    for f in failures:
        print(f"trial {f['trial']}: {f['reason']}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os
    import shutil

    from .tracking import tracking_uri

    root = Path(args.dir)
    if not (root / "mlflow.db").exists():
        raise UsageError(f"no MLflow store at {root / 'mlflow.db'}; run `nas search SPACE.yaml` first "
                         "(or pass --dir)")
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow_bin, "ui", "--backend-store-uri", tracking_uri(root), "--host", "127.0.0.1",
           "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execv(cmd[0], cmd)
    return 0  # not reached


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
    from .registry import ENTRY_POINT_GROUP

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
                        help=f"any plugin that fails to import is an error, exit 2 (also: {registry.STRICT_ENV}=1)")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show the traceback of each plugin that failed to import")


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

    p = sub.add_parser("show", help="print a search's front and summary from its stored study")
    p.add_argument("name")
    p.add_argument("--dir", default=".nas", help="root the search wrote to (default .nas)")
    p.add_argument("--all", action="store_true", help="also list every complete trial with its rank")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show, needs_plugins=False)

    p = sub.add_parser("ui", help="open the MLflow UI (127.0.0.1) on the searches' tracking store")
    p.add_argument("--dir", default=".nas", help="root the searches wrote to (default .nas)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the command instead of starting the UI")
    p.set_defaults(fn=cmd_ui, needs_plugins=False)

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
    from .registry import PluginError, RegistryError
    from .spec import SpecError

    args = build_parser().parse_args(argv)
    # `plugins: [my_module]` (and `--plugin`) name modules importable from the directory `nas` runs in, as under
    # `python -m nas.cli`; the `nas` console script does not put that directory on sys.path by itself.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.strict:  # in the environment, so that Ray workers started from here are strict too
        os.environ[registry.STRICT_ENV] = "1"
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
    for b in registry.broken() if verbose else ():
        print(f"traceback of {b.label}:\n" + textwrap.indent(b.traceback.rstrip(), "  | "), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
