"""Plugins as an ecosystem: deterministic registration, broken plugins isolated, a kit that tests what a search
samples, `nas plugin new`, and the small gaps around them (`--space`, descriptions, the architecture summary).

Installed plugins are simulated the way Python finds real ones: a ``<name>-<version>.dist-info`` folder with
``METADATA`` and ``entry_points.txt`` on ``sys.path`` (``importlib.metadata`` discovers it like any installed
distribution), next to the plugin's module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from nas import BlockConfig, Capabilities, Dims, registry, testing
from nas.architecture import Architecture, LayerArch
from nas.cli import main

REPO = Path(__file__).resolve().parents[1]


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "1.0") -> None:
    """An 'installed' distribution under ``root``: its metadata, its ``nas.plugins`` entry points, its modules."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[nas.plugins]\n{eps}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def block_source(name: str, kind: str = "attention", before: str = "") -> str:
    """A module registering a minimal block ``name`` (identity attention, or a ffn), after the lines ``before``."""
    args = "config, dims, position=None" if kind == "attention" else "config, dims"
    return textwrap.dedent(f"""\
        {before}
        from typing import Literal
        from torch import nn
        from nas import BlockConfig, register


        @register("{kind}", "{name}")
        class Block(nn.Module):
            \"\"\"A test block.\"\"\"

            class Config(BlockConfig):
                type: Literal["{name}"] = "{name}"

            def __init__(self, {args}):
                super().__init__()

            def forward(self, x):
                return x
        """)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(cwd), **(env or {})})


# --- 1. deterministic registration -----------------------------------------------------------------------
REPORT = """\
import json, sys
from nas import registry
registry.load_plugins()
out = {"softmax": registry.get("attention", "softmax").provider,
       "talk": registry.get("attention", "talk").provider,
       "broken": {b.provider: b.error for b in registry.broken()}}
try:
    import early_by_hand
except registry.RegistryError as exc:
    out["by_hand"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize("spelling", [("aaa", "zz-talk", "aa-talk"), ("zzz", "aa-talk", "zz-talk")])
def test_builtins_load_first_and_clashes_name_both_packages_whatever_the_spelling(tmp_path, spelling):
    """A plugin whose entry point sorts before ``builtin-attention`` cannot take ``softmax``; of two plugins
    claiming one name, the same one wins and the error names both, however their entry points are spelled."""
    early, alpha_ep, zeta_ep = spelling
    fake_distribution(tmp_path, "aaa-early", {early: "early_softmax"}, {"early_softmax": block_source("softmax")})
    fake_distribution(tmp_path, "alpha-plugin", {alpha_ep: "alpha_talk"}, {"alpha_talk": block_source("talk")})
    fake_distribution(tmp_path, "zeta-plugin", {zeta_ep: "zeta_talk"}, {"zeta_talk": block_source("talk")})
    (tmp_path / "early_by_hand.py").write_text(block_source("softmax"))  # imported by hand, before nothing
    (tmp_path / "report.py").write_text(REPORT)
    proc = run([sys.executable, "report.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["softmax"] == "nas-transformers"  # the built-in kept its name
    assert "already registered by nas-transformers, as a built-in" in out["broken"]["aaa-early"]
    assert out["talk"] == "alpha-plugin"  # by distribution name, not by entry-point spelling
    clash = out["broken"]["zeta-plugin"]
    assert "claimed by two plugins" in clash and "alpha-plugin 1.0" in clash and "zeta-plugin 1.0" in clash
    assert "already registered by nas-transformers, as a built-in" in out["by_hand"]


@pytest.mark.parametrize("order", [("one", "two"), ("two", "one")])
def test_a_clash_between_two_plugins_names_both_in_either_load_order(tmp_path, monkeypatch, order):
    for module in order:
        (tmp_path / f"clash_{module}_{tmp_path.name}.py").write_text(block_source("clashing_block", "ffn"))
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = [f"clash_{m}_{tmp_path.name}" for m in order]
    with registry.REGISTRY.scratch():
        registry.load_plugins([modules[0]])
        with pytest.raises(registry.PluginError) as info:
            registry.load_plugins([modules[1]])
        assert "claimed by two plugins" in str(info.value)
        assert modules[0] in str(info.value) and modules[1] in str(info.value)
        assert registry.get("ffn", "clashing_block").provider == modules[0]
    for m in modules:
        sys.modules.pop(m, None)


# --- 2. isolation ----------------------------------------------------------------------------------------
BROKEN = """\
\"\"\"Talking-heads attention that needs a package nobody installed.\"\"\"
import math
import nas_missing_dependency_xyz  # line 3: the import that fails
"""


@pytest.fixture
def broken_installed(tmp_path, monkeypatch):
    """A distribution ``nas-talking`` whose plugin module fails to import (a missing dependency); it declares
    attention ``talking``. The registry rescans entry points, and forgets all of it afterwards."""
    fake_distribution(tmp_path, "nas-talking", {"talking": "nas_talking"},
                      {"nas_talking": BROKEN + block_source("talking")})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(registry.STRICT_ENV, "")  # restored afterwards, also when `--strict` sets it
    with registry.REGISTRY.scratch():
        registry.REGISTRY._loaded_entry_points = False
        yield tmp_path
    sys.modules.pop("nas_talking", None)


def _space(path: Path, attention: str) -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: uses
        task: {{type: mqar, vocab_size: 32, seq_len: 16}}
        model: {{d_model: 32, n_heads: 2}}
        space:
          attention: [{{type: {attention}}}]
        """))
    return path


def test_a_broken_plugin_is_listed_and_every_command_goes_on_without_it(broken_installed, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "attention" in out and "softmax" in out  # everything else is listed
    broken = out[out.index("broken plugins (1)"):]
    assert "plugin 'talking' of nas-talking 1.0 (module nas_talking)" in broken
    assert "ModuleNotFoundError: No module named 'nas_missing_dependency_xyz'" in broken
    assert "at nas_talking.py:3" in broken
    assert "declares: attention talking" in broken
    assert "Traceback" not in broken

    other = _space(broken_installed / "other.yaml", "softmax")
    assert main(["validate", str(other)]) == 0
    err = capsys.readouterr().err
    assert "warning: plugin 'talking' of nas-talking 1.0" in err and "skipped" in err


def test_a_space_that_uses_a_broken_plugins_block_exits_2_naming_the_plugin_and_its_error(broken_installed, capsys):
    uses = _space(broken_installed / "uses.yaml", "talking")
    assert main(["validate", str(uses)]) == 2
    err = capsys.readouterr().err
    assert ("unknown attention 'talking': it is provided by plugin 'talking' of nas-talking 1.0 (module nas_talking), "
            "which failed to import: ModuleNotFoundError: No module named 'nas_missing_dependency_xyz' at "
            "nas_talking.py:3") in err


@pytest.mark.parametrize("how", ["--strict first", "--strict after", "environment"])
def test_strict_turns_any_broken_plugin_into_an_error(broken_installed, capsys, monkeypatch, how):
    other = str(_space(broken_installed / "other.yaml", "softmax"))
    argv = {"--strict first": ["--strict", "validate", other], "--strict after": ["validate", other, "--strict"],
            "environment": ["validate", other]}[how]
    if how == "environment":
        monkeypatch.setenv(registry.STRICT_ENV, "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 plugin(s) failed to import (NAS_STRICT_PLUGINS is set)" in err and "nas_missing_dependency_xyz" in err


def test_verbose_shows_the_traceback(broken_installed, capsys):
    assert main(["plugins", "--verbose", "--kind", "norm"]) == 0
    out = capsys.readouterr().out
    assert "| Traceback (most recent call last):" in out and "nas_talking.py\", line 3" in out
    assert main(["validate", str(_space(broken_installed / "u.yaml", "talking")), "--verbose"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_what_a_broken_plugin_registered_before_failing_is_taken_out_again(tmp_path, monkeypatch):
    module = f"half_{tmp_path.name}"
    source = block_source("half_registered", "ffn") + "\nraise RuntimeError('late')\n"
    (tmp_path / f"{module}.py").write_text(source)
    line = source.splitlines().index("raise RuntimeError('late')") + 1
    monkeypatch.syspath_prepend(str(tmp_path))
    with registry.REGISTRY.scratch():
        with pytest.raises(registry.PluginError, match="RuntimeError: late"):
            registry.load_plugins([module])
        assert "half_registered" not in registry.names("ffn")
        (b,) = [b for b in registry.broken() if b.module == module]
        assert b.declares == (("ffn", "half_registered"),) and b.location == f"{tmp_path}/{module}.py:{line}"
    sys.modules.pop(module, None)


WORKER_ONLY_BROKEN = """\
import os
_pid = os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.pid")
if not os.path.exists(_pid):  # the first process to import it (the search driver) has everything installed
    with open(_pid, "w") as f:
        f.write(str(os.getpid()))
elif open(_pid).read() != str(os.getpid()):
    import nas_missing_on_this_worker  # line 7
"""


def test_a_plugin_broken_on_a_ray_worker_fails_the_trial_with_its_error(tmp_path):
    """Installed where the search runs but broken on the workers: each trial fails naming the plugin, the
    error and its line, as reported by the worker."""
    fake_distribution(tmp_path, "nas-worker-only", {"worker-only": "worker_only"},
                      {"worker_only": WORKER_ONLY_BROKEN + block_source("worker_only_attention")})
    (tmp_path / "space.yaml").write_text(textwrap.dedent("""\
        name: workers
        task: {type: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2, test_examples: 64}
        model: {d_model: 16, n_layers: 1, n_heads: 2}
        space:
          attention: [{type: worker_only_attention}]
          position: [{type: sinusoidal}]
        training: {steps: 2, batch_size: 4, device: cpu}
        measure: {batch_size: 1, warmup: 0, repeats: 1, train_batch_size: 2}
        search: {n_trials: 1, concurrency: 1, retries: 0, sampler: {type: random}, dir: out}
        """))
    proc = run([sys.executable, "-m", "nas.cli", "search", "space.yaml", "--quiet", "--json"], tmp_path,
               env={"RAY_DEDUP_LOGS": "0"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    show = run([sys.executable, "-m", "nas.cli", "show", "workers", "--json", "--dir", "out"], tmp_path)
    (failure,) = json.loads(show.stdout)["failures"]
    reason = failure["reason"]
    assert reason.startswith("error in the Ray worker: PluginError: the space does not validate in this process")
    assert ("unknown attention 'worker_only_attention': it is provided by plugin 'worker-only' of nas-worker-only "
            "1.0 (module worker_only), which failed to import: ModuleNotFoundError: No module named "
            "'nas_missing_on_this_worker' at worker_only.py:7") in reason


# --- 3. the kit tests what a search samples ----------------------------------------------------------------
class TalkingHeads(nn.Module):
    """Talking-heads attention (Shazeer et al. 2020) with the causal mask applied only when the probabilities
    are mixed: ``post_mix: false`` sees the future."""

    class Config(BlockConfig):
        type: Literal["leaky_talking_heads"] = "leaky_talking_heads"
        post_mix: bool = True

    capabilities = Capabilities(causal=True, bidirectional=True, positions=frozenset({"none", "embedding"}))

    def __init__(self, config: Config, dims: Dims, position: nn.Module):
        super().__init__()
        self.h, self.causal, self.post_mix = dims.n_heads, dims.causal, config.post_mix
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model)
        self.out = nn.Linear(dims.d_model, dims.d_model)
        self.pre = nn.Parameter(torch.eye(dims.n_heads) + 0.1 * torch.randn(dims.n_heads, dims.n_heads))
        self.post = nn.Parameter(torch.eye(dims.n_heads) + 0.1 * torch.randn(dims.n_heads, dims.n_heads))
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        scores = torch.einsum("bhqk,hg->bgqk", q @ k.transpose(-1, -2) / (C // self.h) ** 0.5, self.pre)
        if self.post_mix:
            if self.causal:
                future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            p = torch.einsum("bhqk,hg->bgqk", scores.softmax(-1), self.post)
        else:
            p = scores.softmax(-1)  # the bug: the mask lives in the other branch
        return self.out((p @ v).transpose(1, 2).reshape(B, T, C))


def test_a_leak_only_in_a_non_default_config_fails_the_kit_naming_that_config():
    with registry.REGISTRY.scratch():
        registry.register("attention", "leaky_talking_heads")(TalkingHeads)

        class Kit(testing.AttentionConformance):
            names = ["leaky_talking_heads"]

        failures, passed = [], []
        for case in Kit.cases():
            if not case.causal:
                continue
            try:
                Kit().test_no_causal_leakage(case)
                passed.append(case.id)
            except AssertionError as exc:
                failures.append(str(exc))
    assert any("post_mix" not in p for p in passed)  # the default config is causal
    assert failures and all("post_mix=False" in f and "changed earlier outputs" in f for f in failures), failures


def test_sampled_configs_cover_every_listed_value_with_fixed_seeds():
    class Many(nn.Module):
        """Many choices."""

        class Config(BlockConfig):
            type: Literal["many_choices"] = "many_choices"
            mode: Literal["a", "b", "c", "d", "e"] = "a"
            flag: bool = False
            width: int = 4

        def __init__(self, config: BlockConfig, dims: Dims):
            super().__init__()

    with registry.REGISTRY.scratch():
        registry.register("ffn", "many_choices")(Many)
        entry = registry.get("ffn", "many_choices")
        first = testing.sampled_configs(entry, {"width": [2, 8]})
        again = testing.sampled_configs(entry, {"width": [2, 8]})
    assert first == again and 5 <= len(first) <= testing.MAX_SAMPLED_CONFIGS
    every = [Many.Config(), *first]
    assert {c.mode for c in every} == set("abcde") and {c.flag for c in every} == {False, True}
    assert {c.width for c in every} >= {2, 8}
    assert Many.Config() not in first and len({c.model_dump_json() for c in first}) == len(first)


def test_the_kit_loads_the_plugins_itself(tmp_path):
    """A plugin imported by hand in a fresh process: its checks run without calling load_plugins() first."""
    code = ("import nas_example_plugin\nfrom nas import registry\nfrom nas.testing import Case, check_causal\n"
            "check_causal(Case(registry.get('attention', 'cosine'), True))\n"
            "check_causal(Case.of('attention', 'cosine', config={'init_scale': 2.0}))\nprint('ok')\n")
    proc = run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# --- 4. small gaps -----------------------------------------------------------------------------------------
LOCAL = block_source("space_local_ffn", "ffn")


def test_plugins_and_schema_see_the_modules_a_space_lists(tmp_path, monkeypatch, capsys):
    module = f"space_local_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(LOCAL)
    (tmp_path / "space.yaml").write_text(f"plugins: [{module}]\ntask: {{type: mqar}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with registry.REGISTRY.scratch():
        assert main(["plugins", "--kind", "ffn", "--space", "space.yaml"]) == 0
        assert "space_local_ffn" in capsys.readouterr().out
    sys.modules.pop(module, None)  # imported afresh: the registry forgot its block
    with registry.REGISTRY.scratch():
        assert main(["schema", "--space", "space.yaml"]) == 0
        assert "ffn_space_local_ffn" in json.loads(capsys.readouterr().out)["$defs"]
    sys.modules.pop(module, None)


def test_field_descriptions_show_in_the_plain_listing(capsys):
    assert main(["plugins", "--kind", "attention"]) == 0
    out = capsys.readouterr().out
    assert "init_scale: initial temperature g of the cosine scores" in out  # the example plugin's field


def test_the_plugin_page_gives_every_kinds_constructor_and_how_to_debug():
    page = (REPO / "docs" / "writing-a-plugin.md").read_text()
    for kind, signature in [("attention", "cls(config, dims, position)"), ("position", "cls(config, dims)"),
                            ("norm", "cls(config, dims)"), ("ffn", "cls(config, dims)"),
                            ("compression", "cls(config)"), ("task", "cls(config)")]:
        assert f"| {kind} | `{signature}`" in page, kind
    assert "nas plugins --verbose" in page and "NAS_STRICT_PLUGINS" in page and "nas plugin new" in page


def test_the_summary_names_every_chosen_block_and_compresses_repeated_layers():
    a = LayerArch(attention={"type": "gqa", "kv_heads": 2}, norm={"type": "rmsnorm", "eps": 1e-6},
                  ffn={"type": "swiglu", "expansion": 8 / 3})
    b = LayerArch(attention={"type": "softmax", "dropout": 0.0}, norm={"type": "layernorm"}, ffn={"type": "moe"})
    arch = Architecture(d_model=64, n_heads=4, n_layers=4, norm_placement="post", position={"type": "alibi"},
                        layers=[a, a, a, b], compression={"type": "quantize", "qat_steps": 2})
    assert arch.summary() == ("alibi d64 L4 H4: 3x[gqa(kv_heads=2) post-rmsnorm swiglu] "
                              "[softmax post-layernorm moe] | quantize(qat_steps=2)")
    same = Architecture(d_model=32, n_heads=2, n_layers=2, norm_placement="pre", position={"type": "rope"},
                        layers=[b, b])
    assert same.summary() == "rope d32 L2 H2: softmax pre-layernorm moe"


def test_the_front_table_wraps_long_summaries_between_blocks():
    from nas.report import SUMMARY_WIDTH, TrialRow, compute_front, format_table

    long = "alibi d64 L4 H4: 3x[gqa(kv_heads=2) post-rmsnorm swiglu] [softmax post-layernorm moe] | quantize"
    front = compute_front([("accuracy", "maximize")], [TrialRow(0, long, [0.5]), TrialRow(1, "short", [0.4])])
    lines = format_table(front, only_front=False).splitlines()
    assert len(lines) == 2 + 2 + 1  # header, rule, trial 0 on two lines, trial 1
    assert all(len(line) <= SUMMARY_WIDTH + 40 for line in lines)
    assert " ".join(line[7:].split("  ")[0] for line in lines[2:4]) == long


# --- nas plugin new ----------------------------------------------------------------------------------------
def _child_venv(root: Path) -> Path:
    """A virtual environment that sees this one's packages (nas, torch, pytest, setuptools) and installs into
    its own: what `pip install -e DIR` does in a user's environment, without touching the test environment."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    parent = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def test_plugin_new_installs_and_passes_pytest_as_generated(tmp_path):
    python = _child_venv(tmp_path / "venv")
    dirs = [f"p_{kind}" for kind in registry.KINDS]
    for kind, folder in zip(registry.KINDS, dirs):
        assert main(["plugin", "new", kind, f"my_{kind}", "--dir", str(tmp_path / folder)]) == 0
    assert 'my-attention = "nas_my_attention"' in (tmp_path / "p_attention" / "pyproject.toml").read_text()
    pip = run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               *[a for d in dirs for a in ("-e", d)]], tmp_path)
    assert pip.returncode == 0, pip.stderr[-3000:]
    # Each generated test names its block (`names = ["my_<kind>"]`): it runs only if the entry point registered it.
    tests = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *dirs], tmp_path)
    assert tests.returncode == 0, tests.stdout[-5000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_plugin_new_refuses_a_taken_name_and_a_used_folder(tmp_path, capsys):
    assert main(["plugin", "new", "attention", registry.default("attention"), "--dir", str(tmp_path / "a")]) == 2
    assert "already registered by nas-transformers" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["plugin", "new", "ffn", "fresh_ffn", "--dir", str(tmp_path / "full")]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert main(["plugin", "new", "ffn", "Bad-Name", "--dir", str(tmp_path / "b")]) == 2
