"""nas.kernels: parity of every fast path with its plain PyTorch reference, the dispatch rules, and the record of
which kernel ran.

The Triton kernels are checked under Triton's interpreter (``TRITON_INTERPRET=1``) in a child process: Triton
reads that variable when a kernel is decorated, i.e. when ``nas.kernels._rmsnorm`` / ``_linear`` are first
imported, so setting it inside this process would depend on what other tests imported first. One child runs
every interpreter check once and prints JSON; the tests below assert on it.

Tolerances (fp32): elementwise ``|fast - ref| <= atol + rtol * max|ref|`` with ``atol = 1e-5, rtol = 1e-5``
for RMSNorm and normalised linear attention (forward and every gradient), ``rtol = 1e-5`` on the
unnormalised causal dot product (whose values grow with T). FlexAttention's eager CPU implementation against
the SDPA / blockwise references: ``atol = 1e-5``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nas import Dims, kernels, registry
from nas.kernels import _triton

ATOL, RTOL = 1e-5, 1e-5

INTERPRETER_CHECKS = textwrap.dedent(r"""
    import json, os
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    import triton, triton.language as tl
    from nas import Dims, kernels, registry

    out = {}
    torch.manual_seed(0)

    def err(a, b):
        return {"err": (a - b).abs().max().item(), "scale": b.abs().max().item()}

    @triton.jit
    def add(x_ptr, y_ptr, o_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(o_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)

    x, y = torch.randn(100), torch.randn(100)
    o = torch.empty(100)
    add[(4,)](x, y, o, 100, BLOCK=32)
    out["vector_add"] = err(o, x + y)

    from nas.kernels._rmsnorm import rms_norm_triton
    for name, shape in (("rms_2d", (5, 48)), ("rms_3d", (2, 7, 33)), ("rms_wide", (3, 300))):
        x = torch.randn(*shape, requires_grad=True)
        w = (torch.rand(shape[-1]) + 0.5).requires_grad_()
        y = rms_norm_triton(x, w, 1e-6)
        g = torch.randn_like(y)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        ref = torch.nn.functional.rms_norm(x, (shape[-1],), w, 1e-6)
        rdx, rdw = torch.autograd.grad(ref, (x, w), g)
        out[name] = {"y": err(y, ref), "dx": err(dx, rdx), "dw": err(dw, rdw)}

    from nas.kernels._linear import causal_dot_product, causal_linear_attention_triton
    from nas_plugins.linear_attention import causal_linear_attention, linear_attention_reference, EPS
    for name, (B, H, T, M, D) in (("lin_odd", (1, 2, 80, 24, 20)), ("lin_short", (2, 1, 9, 16, 8)),
                                  ("lin_chunks", (1, 2, 130, 32, 32))):
        q = torch.rand(B, H, T, M, requires_grad=True)
        k = torch.rand(B, H, T, M, requires_grad=True)
        v = torch.randn(B, H, T, D, requires_grad=True)
        with torch.no_grad():
            scores = q @ k.transpose(-1, -2)
            cdp = err(causal_dot_product(q, k, v), scores.tril() @ v)
            rcdp = err(causal_dot_product(q, k, v, reverse=True), scores.triu() @ v)
        y = causal_linear_attention_triton(q, k, v, EPS)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, (q, k, v), g)
        ref = linear_attention_reference(q, k, v, True)
        rgrads = torch.autograd.grad(ref, (q, k, v), g)
        chunked = causal_linear_attention(q, k, v)
        out[name] = {"cdp": cdp, "rcdp": rcdp, "y": err(y, ref), "y_chunked": err(y, chunked),
                     **{f"d{n}": err(a, b) for n, a, b in zip("qkv", grads, rgrads)}}

    # the dispatch takes the Triton paths under `emulate` when interpreting; parity with the reference policy
    registry.load_plugins()
    dims = Dims(d_model=32, n_heads=2, seq_len=40, causal=True)
    pos = registry.build("position", registry.get("position", "none").config(), dims)
    for kind, name in (("attention", "linear"), ("attention", "performer"), ("norm", "rmsnorm")):
        torch.manual_seed(0)
        extra = (pos,) if kind == "attention" else ()
        block = registry.build(kind, registry.get(kind, name).config(), dims, *extra)
        x = torch.randn(2, 40, 32, requires_grad=True)
        with kernels.policy("emulate"):
            fast = block(x)
            fast_kernel = block.kernel
            fast_grad, = torch.autograd.grad(fast.sum(), x)
        with kernels.policy("reference"):
            ref = block(x)
            ref_kernel = block.kernel
            ref_grad, = torch.autograd.grad(ref.sum(), x)
        out[f"dispatch_{name}"] = {"y": err(fast, ref), "dx": err(fast_grad, ref_grad),
                                   "kernel": fast_kernel, "reference_kernel": ref_kernel}
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Results of the interpreter checks, run once in a child process with ``TRITON_INTERPRET=1``."""
    if not _triton.triton_importable():
        pytest.skip(_triton.INSTALL_HINT)
    env = {**os.environ, "TRITON_INTERPRET": "1", "NAS_KERNELS": "auto"}
    proc = subprocess.run([sys.executable, "-c", INTERPRETER_CHECKS], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _close(e: dict, atol: float = ATOL, rtol: float = RTOL) -> bool:
    return e["err"] <= atol + rtol * e["scale"]


def test_triton_interpreter_runs_a_kernel(interpreted):
    assert interpreted["vector_add"]["err"] == 0.0


@pytest.mark.parametrize("case", ["rms_2d", "rms_3d", "rms_wide"])
def test_triton_rmsnorm_matches_torch_forward_and_backward(interpreted, case):
    result = interpreted[case]
    for part in ("y", "dx", "dw"):
        assert _close(result[part]), (case, part, result[part])


@pytest.mark.parametrize("case", ["lin_odd", "lin_short", "lin_chunks"])
def test_triton_causal_linear_attention_matches_reference(interpreted, case):
    result = interpreted[case]
    assert _close(result["cdp"], atol=0.0) and _close(result["rcdp"], atol=0.0), result
    for part in ("y", "y_chunked", "dq", "dk", "dv"):
        assert _close(result[part]), (case, part, result[part])


@pytest.mark.parametrize("block", ["linear", "performer", "rmsnorm"])
def test_dispatch_takes_triton_under_emulation_with_parity(interpreted, block):
    result = interpreted[f"dispatch_{block}"]
    expected = "triton:rms_norm" if block == "rmsnorm" else "triton:chunked_linear_attention"
    assert result["kernel"] == expected
    assert result["reference_kernel"] == ("torch:rms_norm" if block == "rmsnorm" else "torch:chunked")
    assert _close(result["y"]) and _close(result["dx"]), result


# -- dispatch on this CPU, in process -------------------------------------------------------------------------
def _attention(name: str, causal: bool = True, position: str = "none", T: int = 48, **fields) -> torch.nn.Module:
    dims = Dims(d_model=32, n_heads=4, seq_len=T, causal=causal)
    pos = registry.build("position", registry.get("position", position).config(), dims)
    return registry.build("attention", registry.get("attention", name).config(**fields), dims, pos)


@pytest.mark.parametrize("name, fields, position, causal, expected", [
    ("softmax", {}, "none", True, "sdpa:"),
    ("gqa", {"kv_heads": 2}, "none", True, "sdpa:"),
    ("softmax", {}, "alibi", True, "+mask"),
    ("softmax", {}, "relative", False, "+mask"),
    ("sliding_window", {"window": 8}, "none", True, "torch:blockwise"),
    ("block_sparse", {"block_size": 8}, "none", True, "+mask"),
    ("linear", {}, "none", True, "torch:chunked"),
    ("linear", {}, "none", False, "torch:bidirectional"),
    ("linformer", {}, "none", False, "sdpa:"),
])
def test_cpu_dispatch_records_a_kernel_with_a_backward(name, fields, position, causal, expected):
    block = _attention(name, causal, position, **fields).train()
    x = torch.randn(2, 48, 32, requires_grad=True)
    block(x).sum().backward()
    assert expected in block.kernel
    assert not block.kernel.startswith("flex") and not block.kernel.startswith("triton")
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_used_collects_the_kernels_of_a_model():
    block = _attention("sliding_window", window=8)
    model = torch.nn.Sequential(block, torch.nn.Linear(32, 32))
    model(torch.randn(1, 48, 32))
    assert kernels.used(model) == {"0": "torch:blockwise"}


@pytest.mark.parametrize("pattern, reference", [
    (lambda: kernels.sliding_window(5, True), lambda T: _sw_mask(T, 5, True)),
    (lambda: kernels.sliding_window(5, False), lambda T: _sw_mask(T, 5, False)),
    (lambda: kernels.block_sparse(4, 1, 1, True, True), lambda T: _bs_mask(T, 4, 1, 1, True, True)),
    (lambda: kernels.block_sparse(4, 0, 0, False, False), lambda T: _bs_mask(T, 4, 0, 0, False, False)),
    (lambda: kernels.block_sparse(3, 2, 2, True, False), lambda T: _bs_mask(T, 3, 2, 2, True, False)),
])
def test_flex_patterns_equal_the_plugins_dense_masks(pattern, reference):
    for T in (1, 7, 33):
        assert torch.equal(pattern().dense(T), reference(T))


def _sw_mask(T, window, causal):
    from nas_plugins.attention import sliding_window_mask

    return sliding_window_mask(T, window, causal)


def _bs_mask(T, block_size, local_blocks, global_tokens, strided, causal):
    from nas_plugins.attention import BlockSparseAttention, block_sparse_mask

    config = BlockSparseAttention.Config(block_size=block_size, local_blocks=local_blocks,
                                         global_tokens=global_tokens, strided=strided)
    return block_sparse_mask(T, config, causal)


@pytest.mark.parametrize("name, fields, position, causal, expected", [
    ("sliding_window", {"window": 8}, "alibi", True, "flex-eager+bias"),
    ("sliding_window", {"window": 8}, "none", False, "flex-eager"),
    ("block_sparse", {"block_size": 8}, "relative", True, "flex-eager+bias"),
    ("softmax", {}, "alibi", True, "flex-eager+bias"),
])
def test_flex_path_matches_the_reference_path(name, fields, position, causal, expected):
    """The GPU dispatch's FlexAttention calls (patterns, bias as score_mod), run eagerly on CPU without grad."""
    if not kernels.flex_available():
        pytest.skip("FlexAttention needs PyTorch 2.5+")
    block = _attention(name, causal, position, T=40, **fields).eval()
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        with kernels.policy("reference"):
            ref = block(x)
            ref_kernel = block.kernel
        with kernels.policy("emulate"):
            fast = block(x)
    assert block.kernel == expected and not ref_kernel.startswith("flex")
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


def test_cpu_training_never_takes_flex_even_when_emulating():
    block = _attention("sliding_window", True, "alibi", window=8).train()
    x = torch.randn(2, 48, 32, requires_grad=True)
    with kernels.policy("emulate"):
        block(x).sum().backward()
    assert block.kernel == "torch:blockwise"
    assert x.grad is not None


def test_fast_paths_are_off_on_cpu_by_default():
    x = torch.randn(2, 5, 16)
    w = torch.ones(16)
    assert kernels.current_policy() in ("auto", "reference")
    assert kernels.rms_norm(None, x, w, 1e-6) is None
    assert kernels.linear_attention(None, x.abs(), x.abs(), x, 1e-6) is None
    assert kernels.flex(None, x[None], x[None], x[None], kernels.causal()) is None


def test_rmsnorm_plugin_falls_back_to_torch_on_cpu():
    dims = Dims(d_model=16, n_heads=2, seq_len=8, causal=True)
    norm = registry.build("norm", registry.get("norm", "rmsnorm").config(eps=1e-6), dims)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 8, 16)
    torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (16,), norm.weight, 1e-6), atol=0, rtol=0)
    assert norm.kernel == "torch:rms_norm"


def test_missing_triton_falls_back_cleanly(monkeypatch):
    """Without Triton even the interpreter-backed emulation falls back to the PyTorch reference."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _triton.reset_probe()
    try:
        assert not _triton.triton_importable()
        block = _attention("linear")
        x = torch.randn(1, 48, 32)
        with kernels.policy("emulate"):
            y = block(x)
        assert block.kernel == "torch:chunked" and torch.isfinite(y).all()
        assert kernels.rms_norm(None, x, torch.ones(32), 1e-6) is None
    finally:
        monkeypatch.undo()
        _triton.reset_probe()


def test_unknown_policy_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="auto, reference, emulate"):
        with kernels.policy("fastest"):
            pass


def test_materialises_scores_names_the_quadratic_kernels():
    assert kernels.materialises_scores("sdpa:math")
    assert kernels.materialises_scores("sdpa:flash+mask")
    assert kernels.materialises_scores("flex+bias")
    assert not kernels.materialises_scores("sdpa:flash")
    assert not kernels.materialises_scores("flex")
    assert not kernels.materialises_scores("torch:blockwise")


def test_trial_records_the_kernels_it_measured(write_spec, tiny_spec_text):
    from nas.cli import sample_one
    from nas.spec import load_spec
    from nas.trial import run_trial

    spec = load_spec(write_spec(tiny_spec_text), device="cpu").spec
    result = run_trial(spec, sample_one(spec, seed=0))
    assert result.status == "ok", result.reason
    recorded = result.info["kernels"]
    assert recorded and all(isinstance(v, str) for v in recorded.values())
    assert any(path.endswith("attention") for path in recorded)


# -- CUDA: skipped without a GPU; `bash benchmarks/gpu.sh` runs them ------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA_TOL = 1e-4  # fp32 on the GPU: other reduction orders than the reference (TF32 off, PyTorch's default)
FLEX_TOL = 2e-3  # FlexAttention's fp32 dots may run in TF32


@cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, CUDA_TOL), (torch.bfloat16, 2e-2)])
def test_cuda_triton_rmsnorm_matches_torch(dtype, tol):
    from nas.kernels._rmsnorm import rms_norm_triton

    x = torch.randn(4, 37, 200, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.rand(200, device="cuda") + 0.5).requires_grad_()
    y = rms_norm_triton(x, w, 1e-6)
    g = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), g)
    ref = torch.nn.functional.rms_norm(x.float(), (200,), w, 1e-6)  # computed in fp32, as the kernel does
    rdx, rdw = torch.autograd.grad(ref, (x, w), g.float())
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(dx.float(), rdx.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(dw, rdw, atol=tol * 10, rtol=tol)  # summed over 148 rows


@cuda
def test_cuda_triton_linear_attention_matches_reference():
    from nas.kernels._linear import causal_linear_attention_triton
    from nas_plugins.linear_attention import EPS, causal_linear_attention

    q, k = (torch.rand(2, 4, 1000, 64, device="cuda", requires_grad=True) for _ in range(2))
    v = torch.randn(2, 4, 1000, 32, device="cuda", requires_grad=True)
    y = causal_linear_attention_triton(q, k, v, EPS)
    ref = causal_linear_attention(q, k, v)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=CUDA_TOL, rtol=CUDA_TOL)
    torch.testing.assert_close(y, ref, atol=CUDA_TOL, rtol=CUDA_TOL)


@cuda
@pytest.mark.parametrize("name, fields, position, causal, expected", [
    ("softmax", {}, "none", True, "sdpa:"),
    ("softmax", {}, "alibi", True, "flex+bias"),
    ("sliding_window", {"window": 16}, "none", True, "flex"),
    ("sliding_window", {"window": 16}, "relative", False, "flex+bias"),
    ("block_sparse", {"block_size": 16}, "none", True, "flex"),
    ("linear", {}, "none", True, "triton:chunked_linear_attention"),
])
def test_cuda_dispatch_matches_reference_forward_and_backward(name, fields, position, causal, expected):
    block = _attention(name, causal, position, T=256, **fields).cuda().train()
    x = torch.randn(2, 256, 32, device="cuda", requires_grad=True)
    with kernels.policy("reference"):
        ref = block(x)
        ref_grad, = torch.autograd.grad(ref.square().sum(), x)
    fast = block(x)
    fast_grad, = torch.autograd.grad(fast.square().sum(), x)
    assert block.kernel.startswith(expected) and "math" not in block.kernel, block.kernel
    torch.testing.assert_close(fast, ref, atol=FLEX_TOL, rtol=FLEX_TOL)
    torch.testing.assert_close(fast_grad, ref_grad, atol=FLEX_TOL * 10, rtol=FLEX_TOL)


@pytest.mark.parametrize("name, fields, position", [
    ("softmax", {}, "alibi"), ("sliding_window", {"window": 8}, "none"), ("linear", {}, "none")])
def test_dispatch_traces_into_one_graph_under_torch_compile(name, fields, position):
    """The dispatch decisions read plain globals, so torch.compile (here its tracer alone) needs no graph break."""
    block = _attention(name, True, position, **fields)
    x = torch.randn(2, 48, 32)
    expected = block(x)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, atol=1e-6, rtol=0)
