"""The house rules, checked on the source: no import cycles in ``nas/`` (imports inside functions included),
the core names no built-in block, and every module the docs cite exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "nas"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the ``nas`` modules it imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                # `from . import registry` imports the module nas.registry; `from .x import y` imports nas.x
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for name in names:
                while name and name not in modules:  # a.b.c -> the deepest module of ours it names
                    name = name.rpartition(".")[0]
                if name and name != module and not module.startswith(name + "."):
                    graph[module].add(name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    """The check itself can fail: a two-module circle and a three-module one are found, a chain is not."""
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_sees_imports_inside_functions(tmp_path):
    graph = import_graph()
    # nas.search.executor imports nas.trial at the top; nas.cli imports nas.search only inside functions
    assert "nas.trial" in graph["nas.search.executor"]
    assert "nas.search" in graph["nas.cli"]


def test_no_import_cycles_in_nas():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_spec_and_space_know_nothing_of_search_trials_or_models():
    graph = import_graph()
    low = [m for m in graph if m.startswith("nas.spec") or m == "nas.space"]
    for module in low:
        bad = {t for t in graph[module] if t.split(".")[:2] in (["nas", "search"], ["nas", "trial"], ["nas", "model"],
                                                                ["nas", "cli"], ["nas", "train"])}
        assert not bad, f"{module} imports {sorted(bad)}"


# --- the core names no built-in block -------------------------------------------------------------------
#: Words the core uses in their own sense that a built-in block happens to be named too: "none" is a position
#: mode (``nas.blocks.POSITION_MODES``) and the value of an unranked trial's tag; "linear" is the linear layers'
#: share of Korthikanti et al.'s activation count (``nas.profile.activation_formula``).
CORE_WORDS = {"none", "linear"}


def _builtin_names() -> set[str]:
    names = set()
    for path in (REPO / "plugins").glob("*.py"):
        names |= set(re.findall(r'@register\("\w+", "(\w+)"', path.read_text()))
    return names


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    exported = {id(elt) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                for elt in getattr(node.value, "elts", [])}  # the module's own function names
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and id(node) not in exported}


def test_the_core_contains_no_builtin_block_name():
    builtins = _builtin_names() - CORE_WORDS
    assert {"softmax", "rope", "mqar", "mlp", "layernorm"} <= builtins  # the scan reads the registrations
    found = {f"{path.relative_to(REPO)}: '{s}'" for path in CORE.rglob("*.py") for s in _string_constants(path)
             if s in builtins}
    assert not found, "the core names built-in blocks (use registry defaults or capabilities): " + ", ".join(
        sorted(found))


# --- docs match the code ---------------------------------------------------------------------------------
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _exists(dotted: str) -> bool:
    """``nas.a.b.c`` is a module, or an attribute (chain) of the deepest module it names."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_exists_tells_real_names_from_made_up_ones():
    assert _exists("nas.search.controller.run_search") and _exists("nas.spec.load_spec")
    assert not _exists("nas.search.tracking.SearchTracker.reconcile") and not _exists("nas.nowhere")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_dotted_name_the_docs_cite_exists(doc):
    """``nas.x.y`` in backticks names a module, or an attribute of one, that exists."""
    from nas.registry import ENTRY_POINT_GROUP

    cited = set(re.findall(r"`(nas(?:\.\w+)+)", doc.read_text())) - {ENTRY_POINT_GROUP}
    missing = sorted(dotted for dotted in cited if not _exists(dotted))
    assert not missing, f"{doc.name} cites names that do not exist: {', '.join(missing)}"


def test_the_docstrings_of_nas_cite_only_names_that_exist():
    """``:func:`nas.x.y``` and friends in the core's docstrings resolve: absolute names as they are, relative ones
    (``:meth:`Tracker.reconcile```, which was cited once and did not exist) in the module they are written in,
    its package, or one of its classes."""
    role = re.compile(r":(?:func|class|meth|mod|attr|data):`~?([\w.]+)`")
    missing = []
    for path in CORE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        classes = [n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]
        for ref in set(role.findall(path.read_text())):
            candidates = [ref] if ref.startswith("nas.") else [
                f"{module}.{ref}", f"{package}.{ref}", *(f"{module}.{c}.{ref}" for c in classes)]
            if not any(_exists(c) for c in candidates):
                missing.append(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, "docstrings cite names that do not exist: " + ", ".join(sorted(missing))


def test_the_core_uses_no_private_optuna_attribute():
    """``study._storage`` and ``trial._trial_id`` change between Optuna releases; the search reaches the journal
    through the storage it opened itself (:class:`nas.search.store.StudyStore`) and its public methods."""
    private = {"_storage", "_trial_id", "_study_id", "_cached_frozen_trial"}
    found = [f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}"
             for path in CORE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr in private
             and not (isinstance(node.value, ast.Name) and node.value.id == "self")]
    assert not found, "private Optuna attributes: " + ", ".join(found)


def test_every_package_of_the_core_is_in_the_distribution():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p.parent) for p in CORE.rglob("__init__.py")}
    assert on_disk | {"nas_plugins"} == listed


def test_the_built_wheel_imports_outside_the_checkout(tmp_path):
    """A plain (non-editable) install works: the wheel holds every subpackage and the plugins."""
    import subprocess
    import sys
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("nas_transformers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("nas/spec/load.py", "nas/search/controller.py", "nas/profile/sweep.py", "nas/kernels/_flex.py",
                   "nas_plugins/attention.py"):
        assert module in names, module
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "import nas, nas.search, nas.profile, nas.cli, nas_plugins.attention; print(nas.__file__)"
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip().startswith(str(target))
