"""``nas plugin new KIND NAME``: a new plugin package that installs, registers and passes the kit as written.

What it writes, for a block ``talking_heads`` of kind attention::

    nas-talking-heads/
    ├── pyproject.toml                          # the `nas.plugins` entry point: talking-heads = nas_talking_heads
    ├── README.md
    ├── nas_talking_heads/__init__.py           # the block: Config, capabilities, the kind's constructor
    └── tests/test_nas_talking_heads.py         # the conformance kit over this block

Each kind's skeleton is a small working block of that kind (an attention, a learned absolute position, a norm
with a scalar gain, a two-layer feed-forward block, a compression that zeroes small weights, a toy task), so
``pip install -e DIR && pytest DIR`` passes before the author changes anything; the docstrings say what to
replace. The constructor signatures are the ones :mod:`nas.blocks` documents.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from . import registry
from .registry import KINDS

__all__ = ["Scaffold", "ScaffoldError", "scaffold", "package_names"]


class ScaffoldError(ValueError):
    """A name or folder the scaffold cannot use."""


@dataclass(frozen=True)
class Scaffold:
    """What :func:`scaffold` wrote."""

    root: Path
    distribution: str  # nas-talking-heads
    package: str  # nas_talking_heads
    entry_point: str  # talking-heads
    files: list[Path]


#: The class-name suffix and the conformance class of each kind.
_KIND = {
    "attention": ("Attention", "AttentionConformance"),
    "position": ("Position", "PositionConformance"),
    "norm": ("Norm", "NormConformance"),
    "ffn": ("FFN", "FFNConformance"),
    "compression": ("Compression", "CompressionConformance"),
    "task": ("Task", "TaskConformance"),
}


def package_names(name: str) -> tuple[str, str, str]:
    """(distribution, import package, entry-point name) for a block ``name``: ``talking_heads`` ->
    ``nas-talking-heads``, ``nas_talking_heads``, ``talking-heads``."""
    dashed = name.replace("_", "-")
    return f"nas-{dashed}", f"nas_{name}", dashed


def scaffold(kind: str, name: str, directory: Path | None = None) -> Scaffold:
    """Write a plugin package for one block of ``kind`` registered as ``name`` into ``directory`` (default
    ``./nas-<name>``), which must not exist or be empty. Refuses a name that is already registered."""
    if kind not in KINDS:
        raise ScaffoldError(f"unknown kind '{kind}'{registry.did_you_mean(kind, KINDS)} kinds: {', '.join(KINDS)}")
    if not name.isidentifier() or not name.isascii() or name != name.lower():
        raise ScaffoldError(f"block name '{name}' must be a lower-case Python identifier (letters, digits, _), "
                            "e.g. talking_heads")
    registry.load_plugins()
    if name in registry.names(kind):
        entry = registry.get(kind, name)
        raise ScaffoldError(f"{kind} '{name}' is already registered by {entry.provider} {entry.version}; "
                            "pick another name")
    distribution, package, entry_point = package_names(name)
    root = (directory or Path(distribution)).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ScaffoldError(f"{root} exists and is not an empty folder; pass --dir for another one")
    suffix, kit = _KIND[kind]
    words = {
        "kind": kind, "name": name, "Class": "".join(w.capitalize() for w in name.split("_")) + suffix,
        "distribution": distribution, "package": package, "entry_point": entry_point, "kit": kit,
        "title": name.replace("_", " "),
    }
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{package}/__init__.py": _MODULE_HEAD + _BLOCKS[kind],
        f"tests/test_{package}.py": _TEST,
    }
    written = []
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(template).substitute(words, example=_EXAMPLE_SPACE[kind]), encoding="utf-8")
        written.append(path)
    return Scaffold(root, distribution, package, entry_point, written)


_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "A nas plugin: the $kind block '$name'"
requires-python = ">=3.10"
dependencies = ["nas-transformers"]  # the distribution of `nas`; add your block's own dependencies here

[project.optional-dependencies]
test = ["pytest>=8"]

# This table is what makes `nas` find the plugin: importing the module registers its blocks.
[project.entry-points."nas.plugins"]
$entry_point = "$package"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_README = '''\
# $distribution

A nas plugin: the $kind block `$name`, written by `nas plugin new $kind $name`.

```bash
pip install -e .                 # registers it through the `nas.plugins` entry point
nas plugins --kind $kind         # lists `$name`, its parameters and capabilities
pytest                           # the nas conformance kit over this block
```

Use it in a search space:

```yaml
space:
  $kind:
    - type: $name
```

The block lives in `$package/__init__.py`; its `Config` fields are its hyper-parameters (each becomes a
searchable entry), and `tests/test_$package.py` runs the conformance kit on its default config and on configs
drawn from its search space. `docs/writing-a-plugin.md` in the nas repository explains every part.
'''

_MODULE_HEAD = '''\
"""The $kind block `$name` for nas.

Written by `nas plugin new $kind $name`: a small working $kind to start from. Replace the block's docstring
(its first paragraph is what `nas plugins` prints: name the paper), its Config fields and its forward.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F  # noqa: F401  (most blocks need it)
from pydantic import Field
from torch import nn

import nas
from nas import BlockConfig, Capabilities, Dims, register  # noqa: F401

'''

_BLOCKS = {
    "attention": '''\

@register("attention", "$name")
class $Class(nn.Module):
    """$title: multi-head scaled dot-product attention, to be turned into your own attention.

    Built as ``cls(config, dims, position)``: the validated config, the model's sizes and the model's one
    shared position scheme. Maps (B, T, C) to (B, T, C); causal when ``dims.causal``.
    """

    class Config(BlockConfig):
        type: Literal["$name"] = "$name"
        bias: bool = Field(False, description="learned biases in the query/key/value and output projections")
        dropout: float = Field(0.0, ge=0.0, lt=1.0, description="attention-probability dropout in training")

    # Read before anything is built: the directions it runs in, and the position modes whose hooks it calls
    # (rotary: position.rotate(q, k); add "bias" only if forward adds position.score_bias(T, T) to the scores).
    capabilities = Capabilities(causal=True, bidirectional=True, positions=frozenset({"none", "embedding", "rotary"}))

    # Explicit cases for the conformance kit besides the default and the configs it samples, e.g.
    # conformance_configs = [{"bias": True, "dropout": 0.1}]

    def __init__(self, config: Config, dims: Dims, position: nas.PositionScheme):
        super().__init__()
        self.n_heads, self.causal, self.dropout = dims.n_heads, dims.causal, config.dropout
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=config.bias)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=config.bias)
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        q, k = self.position.rotate(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, C))
''',
    "position": '''\

@register("position", "$name")
class $Class(nas.PositionScheme):
    """$title: learned absolute position embeddings added to the token embeddings, to be turned into your own.

    Built as ``cls(config, dims)``. A scheme acts in one mode (``capabilities.position_mode``) and overrides
    that mode's hook: ``embed(x)`` (embedding), ``rotate(q, k)`` (rotary) or ``score_bias(t_q, t_k)`` (bias).
    """

    class Config(BlockConfig):
        type: Literal["$name"] = "$name"
        init_std: float = Field(0.02, gt=0, description="standard deviation of the initial embeddings")

    capabilities = Capabilities(position_mode="embedding")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.table = nn.Parameter(torch.randn(dims.seq_len, dims.d_model) * config.init_std)  # (T, C)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return x + self.table[: x.shape[1]]
''',
    "norm": '''\

@register("norm", "$name")
class $Class(nn.Module):
    """$title: each vector scaled to length g (ScaleNorm-like), to be turned into your own norm.

    Built as ``cls(config, dims)``; maps (B, T, C) to (B, T, C), each position on its own (no batch
    statistics). Where it sits (pre, post, sandwich) is the model's ``norm_placement``.
    """

    class Config(BlockConfig):
        type: Literal["$name"] = "$name"
        eps: float = Field(1e-5, gt=0, description="lower bound of the length divided by")
        learn_scale: bool = Field(True, description="learn the gain g (else it stays sqrt(d_model))")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        self.eps = config.eps
        gain = torch.full((), dims.d_model ** 0.5)
        if config.learn_scale:
            self.gain = nn.Parameter(gain)
        else:
            self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return x * (self.gain / x.norm(dim=-1, keepdim=True).clamp_min(self.eps))
''',
    "ffn": '''\

@register("ffn", "$name")
class $Class(nn.Module):
    """$title: two linear layers around a nonlinearity, to be turned into your own feed-forward block.

    Built as ``cls(config, dims)``; maps (B, T, C) to (B, T, C), each position on its own.
    """

    class Config(BlockConfig):
        type: Literal["$name"] = "$name"
        expansion: int = Field(4, ge=1, description="hidden width as a multiple of d_model")
        activation: Literal["gelu", "relu", "silu"] = Field("gelu", description="the nonlinearity between them")

    def __init__(self, config: Config, dims: Dims):
        super().__init__()
        hidden = config.expansion * dims.d_model
        self.up = nn.Linear(dims.d_model, hidden)
        self.down = nn.Linear(hidden, dims.d_model)
        self.act = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}[config.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(self.act(self.up(x)))
''',
    "compression": '''\

@register("compression", "$name")
class $Class(nas.Compression):
    """$title: zeroes the smallest weights of every linear layer, to be turned into your own compression.

    Built as ``cls(config)``; ``apply(model, finetune)`` runs after training and before evaluation and
    measurement, and returns the model that is evaluated (``finetune(model, steps)`` trains it further).
    """

    class Config(BlockConfig):
        type: Literal["$name"] = "$name"
        fraction: float = Field(0.5, ge=0.0, lt=1.0, description="share of each linear layer's weights set to "
                                "zero, smallest magnitudes first")
        finetune_steps: int = Field(0, ge=0, description="training steps after zeroing (zeroed weights may move)")

    def apply(self, model: nn.Module, finetune: nas.Finetune) -> nn.Module:
        zeroed = 0
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    w = module.weight
                    k = int(self.config.fraction * w.numel())
                    if k:
                        small = w.abs() <= w.abs().flatten().kthvalue(k).values
                        w[small] = 0.0
                        zeroed += int(small.sum())
        steps = self.config.finetune_steps
        if steps:
            finetune(model, steps)
            model.eval()
        self.info = {"zeroed": zeroed}
        return model
''',
    "task": '''\

@register("task", "$name")
class $Class(nas.Task):
    """$title: predict the previous token of a random sequence, to be turned into your own task.

    Built as ``cls(config)``. A causal task predicts a target per position (-100: no loss there); its data is
    generated here (nothing is downloaded), seeded, and the held-out set is the same on every call.
    """

    class Config(BlockConfig):
        type: Literal["$name"] = "$name"
        vocab_size: int = Field(16, ge=2, description="number of token ids")
        seq_len: int = Field(16, ge=2, description="positions per sequence")
        test_examples: int = Field(64, ge=1, description="size of the held-out set")

    metrics = {"accuracy": "maximize"}  # the first one is the headline metric
    causal = True

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def num_outputs(self) -> int:
        return self.config.vocab_size

    def embedding(self, d_model: int) -> nn.Module:
        return nn.Embedding(self.num_outputs, d_model)

    def _batch(self, n: int, generator: torch.Generator) -> nas.Batch:
        x = torch.randint(0, self.num_outputs, (n, self.seq_len), generator=generator)  # (B, T)
        y = torch.full_like(x, -100)
        y[:, 1:] = x[:, :-1]  # the token one position back
        return x, y

    def train_batches(self, batch_size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield self._batch(batch_size, generator)

    def eval_batches(self, batch_size: int):
        x, y = self._batch(self.config.test_examples, torch.Generator().manual_seed(12345))
        for i in range(0, len(x), batch_size):
            yield x[i: i + batch_size], y[i: i + batch_size]

    @classmethod
    def tiny_config(cls, seq_len: int) -> BlockConfig:
        return cls.Config(seq_len=seq_len, test_examples=8)
''',
}

#: What each skeleton's test samples besides every Literal/bool value and the defaults.
_EXAMPLE_SPACE = {
    "attention": '{"dropout": [0.0, 0.1]}',
    "position": '{"init_std": {"low": 0.001, "high": 0.1, "log": True}}',
    "norm": '{"eps": [1e-6, 1e-3]}',
    "ffn": '{"expansion": {"low": 1, "high": 4}}',
    "compression": '{"fraction": [0.0, 0.5], "finetune_steps": [0, 2]}',
    "task": "{}",
}

_TEST = '''\
"""The nas conformance kit over this package's block. Run `pytest` here once the package is installed.

The kit checks the block on its default config and on several configs drawn from its search space (every
value of a Literal or bool field at least once, plus `example_spaces` below); a failure names the config.
Explicit cases go in the block's `conformance_configs` class attribute.
"""

from nas.testing import $kit


class Test$Class($kit):
    names = ["$name"]  # only this package's block (default: every registered $kind block)
    # Choices the kit samples besides every Literal/bool value and the defaults: a list or a range per field.
    example_spaces = {"$name": $example}
'''
