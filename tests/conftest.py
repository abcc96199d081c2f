"""Shared fixtures: spec files written into tmp_path, tiny tasks and architectures.

Everything here is sized for a 2-core CPU: d_model 16-32, 1-2 layers, sequences of 16.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from nas import registry
from nas.architecture import Architecture, LayerArch

# Discovery once at import, so tests can parametrize over the registry at collection time.
registry.load_plugins()

# One intra-op thread: the models here are too small to gain from more, and on a busy 2-core machine
# two OpenMP threads spin against each other (measured: ~10x slower under load). Results stay deterministic.
torch.set_num_threads(1)

#: A complete, valid, tiny space on MQAR: one trial trains in about a second.
TINY_SPEC = """\
    name: tiny
    task: {type: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2, test_examples: 64}
    model: {d_model: 32, n_layers: 1, n_heads: 2}
    space:
      position: [{type: rope}]
      ffn: [{type: mlp, expansion: 2}]
    training:
      steps: 20
      batch_size: 16
      log_every: 5
      device: cpu
      optimizer: {lr: 1e-2}
      schedule: {warmup_steps: 2}
    measure: {batch_size: 1, warmup: 1, repeats: 3, train_batch_size: 4}
    """


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """``write_spec(text, name="space.yaml")``: dedent ``text`` into a file under tmp_path; returns its path."""

    def write(text: str, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def tiny_spec_text() -> str:
    return TINY_SPEC


def _make_task(type_: str = "mqar", **fields: Any):
    if type_ == "mqar":
        fields = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "test_examples": 64, **fields}
    return registry.build("task", registry.get("task", type_).config(**fields))


def _make_arch(*, d_model: int = 32, n_heads: int = 2, n_layers: int = 2, placement: str = "pre",
               position: str = "rope", attention: str = "softmax", norm: str = "layernorm",
               expansion: int = 2) -> Architecture:
    layer = LayerArch(attention={"type": attention}, norm={"type": norm},
                      ffn={"type": "mlp", "expansion": expansion})
    return Architecture(d_model=d_model, n_heads=n_heads, n_layers=n_layers, norm_placement=placement,
                        position={"type": position}, layers=[layer] * n_layers)


@pytest.fixture
def make_task() -> Callable[..., Any]:
    """``make_task("mqar", **config)``: a built task; MQAR defaults to vocab 32, seq_len 16, 2 pairs."""
    return _make_task


@pytest.fixture
def make_arch() -> Callable[..., Architecture]:
    """``make_arch(d_model=32, n_heads=2, n_layers=2, placement="pre", position="rope", ...)``."""
    return _make_arch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
