"""Built-in tasks: MQAR (synthetic recall), byte-level language modelling on local files, 8x8 digits.

None downloads anything: MQAR is generated, text is read from the user's files, digits ship with
scikit-learn.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from nas import Batch, BlockConfig, Task, register


# --- MQAR --------------------------------------------------------------------------------------------
def distinct_ints(n: int, low: int, high: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n, k) integers from ``low..high-1``, distinct within each row, every ordered choice equally likely."""
    m = high - low
    if k > m:
        raise ValueError(f"cannot draw {k} distinct values from {m}")
    if 8 * k > m:  # dense: the first k of a random permutation (a row of random keys, sorted)
        return torch.rand(n, m, generator=generator).argsort(dim=1)[:, :k] + low
    out = torch.randint(low, high, (n, k), generator=generator)  # sparse: redraw the rows that repeat a value
    while True:
        ordered = out.sort(dim=1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero().flatten()
        if repeats.numel() == 0:
            return out
        out[repeats] = torch.randint(low, high, (len(repeats), k), generator=generator)


def mqar_examples(n: int, vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float,
                  generator: torch.Generator) -> Batch:
    """Multi-query associative recall as Zoology defines it (Arora et al. 2023, arXiv 2312.04927, Sec. 3).

    Each sequence starts with ``K = num_kv_pairs`` key-value pairs ``k0 v0 k1 v1 ...``: keys drawn without
    replacement from ids 1..V/2-1, values without replacement from V/2..V-1. The remaining ``T - 2K``
    positions are ``(T - 2K) // 2`` two-position slots; each key is queried once, in a slot drawn (without
    replacement) from a power law ``p(s) ~ s^(power_a - 1)`` (short gaps likelier), at the slot's first
    position. Every other position holds filler: a token drawn uniformly from the whole vocabulary. The target
    at a query position is the value paired with its key; every other target is -100 (ignored). The value
    is never written after its query: the model must answer at the query, from the context alone.
    """
    K, T = num_kv_pairs, seq_len
    ctx, half = 2 * K, vocab_size // 2
    if T < 4 * K:
        raise ValueError(f"seq_len {T} is too short for {K} pairs and their queries (need {4 * K})")
    keys = distinct_ints(n, 1, half, K, generator)  # (N, K)
    values = distinct_ints(n, half, vocab_size, K, generator)  # (N, K)
    slots = (T - ctx) // 2
    p = power_a * torch.arange(1, slots + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).float().expand(n, slots), K, replacement=False,
                             generator=generator)  # (N, K) slot of each key's query
    inputs = torch.randint(0, vocab_size, (n, T), generator=generator)  # filler everywhere, then overwritten
    inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values
    queries = ctx + 2 * gaps  # (N, K) positions
    inputs.scatter_(1, queries, keys)
    targets = torch.full_like(inputs, -100)
    targets.scatter_(1, queries, values)  # the answer, at the query position
    return inputs, targets


@register("task", "mqar", default=True)
class MQAR(Task):
    """Multi-query associative recall (Zoology, arXiv 2312.04927); metric: accuracy at the query positions.

    Attention solves it at small width; gated convolutions and small-state linear attention need more width
    as the sequence and the number of pairs grow, which makes it a sharp test of sequence mixers. As in
    Zoology, training draws from one fixed set of ``train_examples`` sequences (seeded by ``train_seed``,
    reshuffled every epoch with the trial's ``training.seed``) and the score is taken on a separate test set
    (``test_examples``, seeded by ``test_seed``). ``train_examples: null`` draws fresh sequences for every
    batch instead (an endless stream, seeded by ``training.seed``).
    """

    class Config(BlockConfig):
        type: Literal["mqar"] = "mqar"
        # Defaults: the sizes of Zoology's basic example (vocabulary 256, 64 positions, 4 pairs), which CPU trials
        # of a few thousand steps learn (docs/benchmarks.md, "MQAR"). Zoology's Figure 2 uses vocabulary 8192
        # with 64 epochs of 100,000 sequences; at CPU budgets a 2-layer model memorises a fixed set of that
        # vocabulary (train loss 0.7, test accuracy 0.23 after 1,500 steps) instead of learning to recall.
        vocab_size: int = Field(256, ge=8, description="keys use ids 1..V/2-1, values V/2..V-1; filler any id "
                                "(Zoology: 256 in its basic example, 8192 in Figure 2)")
        seq_len: int = Field(64, ge=4)
        num_kv_pairs: int = Field(4, ge=1, description="key-value pairs per sequence, each queried once")
        power_a: float = Field(0.01, gt=0, le=1, description="power-law exponent of the query gaps")
        train_examples: int | None = Field(20_000, ge=1, description="the fixed training set (Zoology: 10,000 in "
                                           "its basic example, 100,000 in Figure 2); null: fresh sequences "
                                           "for every batch")
        train_seed: int = Field(0, description="seed of the fixed training set (training.seed orders it)")
        test_examples: int = Field(1000, ge=1)
        test_seed: int = Field(1234, description="seed of the held-out set")

        @model_validator(mode="after")
        def _fits(self) -> "MQAR.Config":
            if self.num_kv_pairs > self.vocab_size // 2 - 1:
                raise ValueError(f"num_kv_pairs ({self.num_kv_pairs}) exceeds the {self.vocab_size // 2 - 1} "
                                 f"distinct keys of vocab_size {self.vocab_size}")
            if 4 * self.num_kv_pairs > self.seq_len:
                raise ValueError(f"seq_len {self.seq_len} is too short for {self.num_kv_pairs} pairs and their "
                                 f"queries; need seq_len >= {4 * self.num_kv_pairs}")
            if self.train_examples is not None and self.train_seed == self.test_seed:
                raise ValueError(f"train_seed and test_seed are both {self.test_seed}: the test set would be "
                                 f"the first {self.test_examples} training examples")
            return self

    causal = True
    metrics = {"accuracy": "maximize"}

    @classmethod
    def tiny_config(cls, seq_len: int) -> Config:
        return cls.Config(vocab_size=16, seq_len=seq_len, num_kv_pairs=2, train_examples=256, test_examples=8)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def num_outputs(self) -> int:
        return self.config.vocab_size

    def embedding(self, d_model: int) -> nn.Module:
        return nn.Embedding(self.config.vocab_size, d_model)

    def _make(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        return mqar_examples(n, c.vocab_size, c.seq_len, c.num_kv_pairs, c.power_a, generator)

    @cached_property
    def _train(self) -> Batch:
        """The fixed training set, stored as int32 (half the memory; batches are handed out as int64)."""
        assert self.config.train_examples is not None
        x, y = self._make(self.config.train_examples, torch.Generator().manual_seed(self.config.train_seed))
        return x.int(), y.int()

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(seed)
        if self.config.train_examples is None:
            while True:
                yield self._make(batch_size, g)
        x, y = self._train
        if batch_size > len(x):
            raise ValueError(f"mqar: batch size {batch_size} exceeds the {len(x)} training examples")
        while True:  # epochs of full batches, each in a new order
            for idx in torch.randperm(len(x), generator=g).split(batch_size):
                if len(idx) == batch_size:
                    yield x[idx].long(), y[idx].long()

    @cached_property
    def _test(self) -> Batch:
        return self._make(self.config.test_examples, torch.Generator().manual_seed(self.config.test_seed))

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        x, y = self._test
        for i in range(0, len(x), batch_size):  # copies: the set is shared by every trial of the process
            yield x[i: i + batch_size].clone(), y[i: i + batch_size].clone()


# --- byte-level language modelling ------------------------------------------------------------------
@register("task", "text")
class ByteText(Task):
    """Byte-level language modelling on local text files; metrics: bits per byte and next-byte accuracy.

    The files are concatenated; the last ``valid_fraction`` of the bytes is held out. Paths and globs are
    resolved against the current directory.
    """

    class Config(BlockConfig):
        type: Literal["text"] = "text"
        paths: list[str] = Field(min_length=1, description="files or glob patterns of UTF-8 or binary text")
        seq_len: int = Field(128, ge=2)
        valid_fraction: float = Field(0.1, gt=0, lt=1)
        max_eval_windows: int = Field(256, ge=1)

        @field_validator("paths")
        @classmethod
        def _exist(cls, paths: list[str]) -> list[str]:
            missing = [p for p in paths if not glob.glob(p)]
            if missing:
                raise ValueError(f"no file matches {', '.join(repr(m) for m in missing)} "
                                 f"(relative to {Path.cwd()})")
            return paths

    causal = True
    metrics = {"bits_per_byte": "minimize", "accuracy": "maximize"}

    @cached_property
    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        files = sorted({f for p in self.config.paths for f in glob.glob(p)})
        data = torch.frombuffer(bytearray(b"".join(Path(f).read_bytes() for f in files)), dtype=torch.uint8).long()
        split = int(len(data) * (1 - self.config.valid_fraction))
        train, valid = data[:split], data[split:]
        need = self.config.seq_len + 1
        if len(train) < need or len(valid) < need:
            raise ValueError(f"text task: {len(data)} bytes is too little for seq_len {self.config.seq_len} "
                             f"with valid_fraction {self.config.valid_fraction}")
        return train, valid

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def num_outputs(self) -> int:
        return 256

    def embedding(self, d_model: int) -> nn.Module:
        return nn.Embedding(256, d_model)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        train, T = self._data[0], self.config.seq_len
        g = torch.Generator().manual_seed(seed)
        while True:
            starts = torch.randint(0, len(train) - T - 1 + 1, (batch_size,), generator=g)
            window = torch.stack([train[s: s + T + 1] for s in starts.tolist()])
            yield window[:, :-1], window[:, 1:]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        valid, T = self._data[1], self.config.seq_len
        n = min((len(valid) - 1) // T, self.config.max_eval_windows)
        windows = torch.stack([valid[i * T: i * T + T + 1] for i in range(n)])
        for i in range(0, n, batch_size):
            w = windows[i: i + batch_size]
            yield w[:, :-1], w[:, 1:]

    def evaluate(self, model: nn.Module, batch_size: int, device: torch.device) -> dict[str, float]:
        nats = correct = total = 0.0
        with torch.inference_mode():
            for x, y in self.eval_batches(batch_size):
                x, y = x.to(device), y.to(device)
                logits = model(x).float()
                nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
                correct += (logits.argmax(-1) == y).sum().item()
                total += y.numel()
        return {"bits_per_byte": nats / total / math.log(2), "accuracy": correct / total}


# --- digits -------------------------------------------------------------------------------------------
class PatchEmbedding(nn.Module):
    """Linear patch embedding of (B, T, P) pixel patches, ViT-style (Dosovitskiy et al. 2020)."""

    def __init__(self, patch_dim: int, d_model: int):
        super().__init__()
        self.proj = nn.Linear(patch_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, P) -> (B, T, C)
        return self.proj(x)


@register("task", "digits")
class Digits(Task):
    """Classify the 1,797 real 8x8 handwritten digits bundled with scikit-learn (UCI optdigits test set) from
    a sequence of pixel patches, ViT-style; metric: test accuracy."""

    class Config(BlockConfig):
        type: Literal["digits"] = "digits"
        patch_size: Literal[1, 2, 4] = Field(2, description="patch side in pixels; T = (8 / patch_size)^2")
        test_fraction: float = Field(0.2, gt=0, lt=1)
        split_seed: int = 0

    causal = False
    metrics = {"accuracy": "maximize"}

    @cached_property
    def _data(self) -> tuple[Batch, Batch]:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
            raise ImportError("the digits task needs scikit-learn: pip install scikit-learn") from exc
        d = load_digits()
        p = self.config.patch_size
        images = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
        patches = images.unfold(1, p, p).unfold(2, p, p).reshape(len(images), -1, p * p)  # (N, T, P)
        labels = torch.tensor(d.target, dtype=torch.long)
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.config.split_seed))
        n_test = int(len(images) * self.config.test_fraction)
        test, train = perm[:n_test], perm[n_test:]
        return (patches[train], labels[train]), (patches[test], labels[test])

    @property
    def seq_len(self) -> int:
        return (8 // self.config.patch_size) ** 2

    @property
    def num_outputs(self) -> int:
        return 10

    def embedding(self, d_model: int) -> nn.Module:
        return PatchEmbedding(self.config.patch_size ** 2, d_model)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        x, y = self._data[0]
        if batch_size > len(x):  # only full batches are yielded: the loop below would never yield one
            raise ValueError(f"digits task: batch size {batch_size} exceeds the {len(x)} training images")
        g = torch.Generator().manual_seed(seed)
        while True:
            for idx in torch.randperm(len(x), generator=g).split(batch_size):
                if len(idx) == batch_size:
                    yield x[idx], y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        x, y = self._data[1]
        for i in range(0, len(x), batch_size):  # copies: the set is shared by every trial of the process
            yield x[i: i + batch_size].clone(), y[i: i + batch_size].clone()
