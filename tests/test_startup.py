"""Start-up stays light: what importing nas, loading the plugins and the quick commands pull in.

Each check runs in a fresh interpreter (this process has long imported everything) and reads ``sys.modules``
there. Heavy modules: ``torch._dynamo`` (about a second with sympy), Ray and MLflow (a second or more each).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch._dynamo", "ray", "mlflow", "sympy")


def loaded_after(code: str, cwd: str | None = None) -> dict[str, bool]:
    """Which of ``torch`` and the heavy modules are imported after running ``code`` in a new interpreter."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print("\\n@@" + json.dumps({{m: m in sys.modules for m in {("torch", *HEAVY)!r}}}))
        """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded: dict[str, bool] = json.loads(done.stdout.rpartition("\n@@")[2])
    return loaded


def test_importing_nas_imports_no_torch():
    assert loaded_after("import nas; nas.BlockConfig; nas.Dims; nas.register") == dict.fromkeys(("torch", *HEAVY),
                                                                                                  False)


def test_nas_and_every_installed_plugin_import_without_dynamo_ray_or_mlflow():
    loaded = loaded_after("""
        import nas
        from nas import registry
        registry.load_plugins()
        assert not registry.broken(), registry.broken()
        assert "softmax" in registry.names("attention") and "mqar" in registry.names("task")
        import nas.kernels, nas.model, nas.trial, nas.space, nas.spec
        """)
    assert loaded["torch"]  # the blocks are nn.Modules
    assert not any(loaded[m] for m in HEAVY), loaded


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["validate", "--help"], ["search", "--help"]])
def test_help_and_version_import_no_torch(argv):
    loaded = loaded_after(f"""
        from nas.cli import main
        try:
            main({argv!r})
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        """)
    assert not any(loaded.values()), loaded


def test_validate_and_schema_import_torch_for_the_blocks_and_nothing_heavy(tmp_path):
    from pathlib import Path

    space = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    loaded = loaded_after(f"""
        import contextlib, io
        from nas.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["validate", {str(space)!r}]) == 0
            assert main(["schema"]) == 0
        """, cwd=str(tmp_path))
    assert loaded["torch"]  # the block configs are defined next to their modules, in modules that import torch
    assert not any(loaded[m] for m in HEAVY), loaded


def test_a_trial_imports_no_ray_or_mlflow(tmp_path, write_spec, tiny_spec_text):
    """torch itself imports ``torch._dynamo`` in a trial: its optimizers' ``step`` and the meta-device kernels
    (sizing) are wrapped in ``torch._disable_dynamo``, which imports it on first call. Ray workers stay warm, so
    that is paid once per worker, not once per trial."""
    spec = write_spec(tiny_spec_text)
    loaded = loaded_after(f"""
        import contextlib, io
        from nas.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["trial", {str(spec)!r}, "--json"]) == 0
        """, cwd=str(tmp_path))
    assert loaded["torch"] and not loaded["ray"] and not loaded["mlflow"], loaded
