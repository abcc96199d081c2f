"""Built-in softmax-attention blocks: full, grouped-query, sliding-window and block-sparse.

They share :class:`HeadAttention`: one fused query/key/value projection, position hooks (rotary, score bias),
SDPA, an output projection, and structured head pruning. Sub-classes differ only in which keys a query may
see. Linear-complexity mixers live in ``linear_attention.py`` and the state-space mixer in ``ssm.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, kernels, register, suggest_among
from nas.blocks import Sharing

ALL_POSITIONS = frozenset({"none", "embedding", "rotary", "bias"})
#: Every :class:`HeadAttention` shares its query/key/value and output projections in a one-shot supernet: the
#: widest copy holds as many key/value heads as query heads, grouped-query attention takes the first G of them.
HEAD_SHARING = Sharing("heads", (("qkv.weight", ("qkv", "front")), ("out.weight", ("front", "heads"))))
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa argument


class HeadAttention(nn.Module):
    """The parts every multi-head softmax attention shares; sub-classes override :meth:`attend`.

    Holds ``n_heads`` query heads and ``kv_heads`` key/value heads (equal for multi-head attention) of width
    ``head_dim``, packed into one ``qkv`` projection laid out as ``[q (H*D) | k (G*D) | v (G*D)]``.
    """

    def __init__(self, dims: Dims, position: PositionScheme, kv_heads: int | None = None):
        super().__init__()
        self.n_heads, self.head_dim, self.causal = dims.n_heads, dims.head_dim, dims.causal
        self.kv_heads = kv_heads or dims.n_heads
        if self.n_heads % self.kv_heads:
            raise ValueError(f"kv_heads ({self.kv_heads}) must divide n_heads ({self.n_heads})")
        D = self.head_dim
        self.qkv = nn.Linear(dims.d_model, (self.n_heads + 2 * self.kv_heads) * D, bias=False)
        self.out = nn.Linear(self.n_heads * D, dims.d_model, bias=False)
        self.position = position
        self.dropout = 0.0  # attention-probability dropout in training (full attention only)
        self.heads: list[int] | None = None  # original indices of the query heads left after pruning (None: all)

    # -- pieces ---------------------------------------------------------------------------------------
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, D) and keys, values (B, G, T, D), with the rotary position applied."""
        B, T, _ = x.shape
        H, G, D = self.n_heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * D, G * D, G * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        v = v.view(B, T, G, D).transpose(1, 2)
        q, k = self.position.rotate(q, k)
        return q, k, v

    def score_bias(self, T: int) -> torch.Tensor | None:
        """The position scheme's additive score bias for the heads this module still has: (H, T, T) or None."""
        bias = self.position.score_bias(T, T)
        if bias is not None and self.heads is not None:
            bias = bias[self.heads]
        return bias

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Repeat each key/value head for the query heads of its group: (B, G, T, D) -> (B, H, T, D)."""
        r = self.n_heads // self.kv_heads
        if r == 1:
            return k, v
        return k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, _ = x.shape
        q, k, v = self.project(x)
        y = self.attend(q, k, v)  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, C)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of queries (B, H, T, D) over keys and values (B, G, T, D) -> (B, H, T, D). Here: full softmax
        attention (causal if the model is), with the position's score bias if it has one. Sub-classes that
        need as many key/value heads as query heads call :meth:`expand_kv` first."""
        T = q.shape[-2]
        bias = self.score_bias(T)  # (H, T, T) or None
        dropout = self.dropout if self.training else 0.0
        if bias is None:
            if self.kv_heads < self.n_heads and _SDPA_GQA:  # the fused kernels read shared heads in place
                return kernels.sdpa(self, q, k, v, dropout_p=dropout, is_causal=self.causal, enable_gqa=True)
            k, v = self.expand_kv(k, v)
            return kernels.sdpa(self, q, k, v, dropout_p=dropout, is_causal=self.causal)
        k, v = self.expand_kv(k, v)  # with a mask, SDPA's GQA path is slower than repeating the heads
        fast = kernels.flex(self, q, k, v, kernels.causal() if self.causal else None, bias=bias, dropout_p=dropout)
        if fast is not None:  # CUDA: FlexAttention, the bias as a score_mod (no (T, T) mask)
            return fast
        if self.causal:
            bias = bias.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return kernels.sdpa(self, q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)

    def masked_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Softmax attention where query i may see key j only if ``allowed[i, j]`` (T, T); every row needs one."""
        T = q.shape[-2]
        k, v = self.expand_kv(k, v)
        mask = torch.zeros(T, T, device=q.device).masked_fill(~allowed, float("-inf"))  # (T, T)
        bias = self.score_bias(T)
        if bias is not None:
            mask = bias + mask  # (H, T, T)
        return kernels.sdpa(self, q, k, v, attn_mask=mask.to(q.dtype))

    # -- compression hook -----------------------------------------------------------------------------
    @torch.no_grad()
    def prune_heads(self, fraction: float) -> int:
        """Structured pruning: remove ``floor(fraction * units)`` of the least important heads, really shrinking
        ``qkv`` and ``out``. Returns the number of query heads removed.

        Called by compression plugins after training. A unit is one key/value group with its query heads
        (a single head in multi-head attention), or one query head when there is a single key/value head
        (multi-query attention). Importance is a weight-magnitude proxy of what the unit can write to the
        residual stream: ``||W_v[g]|| * ||W_out[:, heads of g]||`` (``||W_q[h]||`` in place of ``W_v`` for
        multi-query). At least one unit always stays.
        """
        H, G, D = self.n_heads, self.kv_heads, self.head_dim
        r = H // G
        C = self.out.weight.shape[0]
        Wq, Wk, Wv = self.qkv.weight.split([H * D, G * D, G * D])
        Wq, Wk, Wv = Wq.view(H, D, -1), Wk.view(G, D, -1), Wv.view(G, D, -1)
        Wo = self.out.weight.view(C, H, D)
        out_norm = Wo.norm(dim=(0, 2))  # (H,)
        if G > 1:
            importance = Wv.norm(dim=(1, 2)) * out_norm.view(G, r).norm(dim=1)  # (G,)
            drop = min(int(fraction * G), G - 1)
            keep_g = importance.topk(G - drop).indices.sort().values
            keep_h = (keep_g[:, None] * r + torch.arange(r, device=keep_g.device)).flatten()
        else:
            importance = Wq.norm(dim=(1, 2)) * out_norm  # (H,)
            drop = min(int(fraction * H), H - 1)
            keep_h = importance.topk(H - drop).indices.sort().values
            keep_g = torch.zeros(1, dtype=torch.long, device=keep_h.device)
        if drop == 0:
            return 0
        weight = torch.cat([Wq[keep_h].flatten(0, 1), Wk[keep_g].flatten(0, 1), Wv[keep_g].flatten(0, 1)])
        self.qkv = _linear_like(self.qkv, weight)
        self.out = _linear_like(self.out, Wo[:, keep_h].flatten(1))
        old = self.heads if self.heads is not None else list(range(H))
        self.heads = [old[h] for h in keep_h.tolist()]
        self.n_heads, self.kv_heads = len(keep_h), len(keep_g)
        return H - self.n_heads


def _linear_like(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight`` (out, in), on the old layer's device and dtype."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    new.train(old.training)
    return new


@register("attention", "softmax", default=True)
class SoftmaxAttention(HeadAttention):
    """Full softmax attention (Vaswani et al. 2017, "Attention Is All You Need") through PyTorch SDPA.

    On CUDA, SDPA dispatches to FlashAttention-2 / memory-efficient kernels when there is no score bias; with a
    score bias (ALiBi, relative bias) ``nas.kernels`` runs FlexAttention there, and SDPA with an explicit float
    mask elsewhere. ``self.kernel`` names the kernel of the last call.
    """

    class Config(BlockConfig):
        type: Literal["softmax"] = "softmax"
        dropout: float = Field(0.0, ge=0.0, lt=1.0, description="attention-probability dropout in training")

    capabilities = Capabilities(causal=True, bidirectional=True, positions=ALL_POSITIONS,
                                time_exponent=(2, "every query scores every key"), sharing=HEAD_SHARING)

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__(dims, position)
        self.dropout = config.dropout


@register("attention", "gqa")
class GroupedQueryAttention(HeadAttention):
    """Grouped-query attention (Ainslie et al. 2023, "GQA"); multi-query attention (Shazeer 2019, "Fast
    Transformer Decoding: One Write-Head is All You Need") is the case ``kv_heads: 1``.

    The ``n_heads`` query heads share ``kv_heads`` key/value heads in equal groups, which shrinks the key/value
    projections and, at generation time, the key/value cache by ``n_heads / kv_heads``. ``kv_heads`` must divide
    ``n_heads``; the search space offers only the listed values that do (see :meth:`search_space`).
    """

    class Config(BlockConfig):
        type: Literal["gqa"] = "gqa"
        kv_heads: int = Field(1, ge=1, description="key/value heads; must divide n_heads (1: multi-query)")

    capabilities = Capabilities(causal=True, bidirectional=True, positions=ALL_POSITIONS,
                                time_exponent=(2, "every query scores every key"), sharing=HEAD_SHARING)
    conformance_configs = [{"kv_heads": 2}]  # shared key/value heads in groups (the default is multi-query)

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        if dims.n_heads % config.kv_heads:
            raise ValueError(f"gqa: kv_heads ({config.kv_heads}) must divide n_heads ({dims.n_heads})")
        super().__init__(dims, position, kv_heads=config.kv_heads)

    @classmethod
    def search_space(cls, trial: Any, entry: Any, dims: Dims, prefix: str) -> Config:
        """Suggest ``kv_heads`` among the listed values that divide this trial's ``n_heads``."""
        space = entry.kv_heads if entry.kv_heads is not None else cls.Config.model_fields["kv_heads"].default
        kv = suggest_among(trial, f"{prefix}.kv_heads", space, lambda g: dims.n_heads % g == 0,
                           condition=f"n_heads={dims.n_heads}", why=f"divides n_heads={dims.n_heads}")
        return cls.Config(kv_heads=kv)


@register("attention", "sliding_window")
class SlidingWindowAttention(HeadAttention):
    """Local (sliding-window) softmax attention (Beltagy et al. 2020, "Longformer"; Mistral 7B, Jiang et al.
    2023): each query sees the keys fewer than ``window`` positions away, only earlier ones when causal.

    The convention, in keys per query away from the edges: causal, ``window`` keys (itself and the
    ``window - 1`` before it, Mistral's W); bidirectional, ``2 * window - 1`` keys (``window - 1`` on each side
    and itself, Longformer's one-sided w = ``window - 1``). So a window of w hides from query i every key j
    with ``|i - j| >= w``, in either direction.

    A window at least the sequence length is full attention and runs exactly the ``softmax`` code path. A
    shorter one runs blockwise: the sequence is cut into blocks of ``window`` queries, each attending to its own
    and the neighbouring key blocks, so time and memory grow as ``T * window`` instead of ``T^2``.
    """

    class Config(BlockConfig):
        type: Literal["sliding_window"] = "sliding_window"
        window: int = Field(64, ge=1, description="keys fewer than this many positions away are visible: "
                            "window keys per query when causal, 2 * window - 1 when bidirectional")

    capabilities = Capabilities(causal=True, bidirectional=True, positions=ALL_POSITIONS,
                                time_exponent=(1, "window keys per query"), sharing=HEAD_SHARING)
    #: The default window (64) is at least the kit's sequence (full attention): check the blockwise path too.
    conformance_configs = [{"window": 4}, {"window": 1}]

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__(dims, position)
        self.window = config.window

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.shape[-2]
        if self.window >= T:
            return super().attend(q, k, v)
        k, v = self.expand_kv(k, v)
        pattern = kernels.sliding_window(self.window, self.causal)
        fast = kernels.flex(self, q, k, v, pattern, bias=lambda: self.score_bias(T))
        if fast is not None:  # CUDA: FlexAttention with a block mask
            return fast
        kernels.record(self, "torch:blockwise")
        return local_attention(q, k, v, self.window, self.causal, self.score_bias(T))


def sliding_window_mask(T: int, window: int, causal: bool, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool: query i may see key j. The reference definition the blockwise path must match."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = (i - j).abs() < window
    return allowed & (j <= i) if causal else allowed


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, causal: bool,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Sliding-window attention computed blockwise in O(T * window) memory; equals masking dense scores with
    :func:`sliding_window_mask` (plus ``bias`` (H, T, T) if given).

    Queries are cut into ``n`` blocks of ``w = window``; block ``b`` attends to key blocks ``b-1, b`` (causal)
    or ``b-1, b, b+1``. Every key a query may see lies in those blocks, since keys are fewer than ``w`` away.
    """
    B, H, T, D = q.shape
    w = window
    n = -(-T // w)
    pad = n * w - T
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, n*w, D)
    qb = q.view(B, H, n, w, D)
    offsets = (-1, 0) if causal else (-1, 0, 1)
    # Keys of block b + o for each offset o: shift the block axis, zero blocks beyond either end.
    kb = torch.cat([_shift_blocks(k.view(B, H, n, w, D), o) for o in offsets], dim=3)  # (B, H, n, kw, D)
    vb = torch.cat([_shift_blocks(v.view(B, H, n, w, D), o) for o in offsets], dim=3)
    blocks = torch.arange(n, device=q.device)[:, None, None]
    i = blocks * w + torch.arange(w, device=q.device)[None, :, None]  # (n, w, 1) query positions
    j = (blocks + offsets[0]) * w + torch.arange(len(offsets) * w, device=q.device)[None, None, :]  # (n, 1, kw)
    allowed = (j >= 0) & (j < T) & ((i - j).abs() < w)  # (n, w, kw)
    if causal:
        allowed = allowed & (j <= i)
    allowed = allowed | ((i >= T) & (j >= 0) & (j < T))  # padded queries see real keys (no NaN); output discarded
    mask = torch.zeros(allowed.shape, device=q.device).masked_fill(~allowed, float("-inf"))  # (n, w, kw)
    if bias is not None:  # (H, T, T) -> (H, n, w, kw) at the same (i, j) pairs
        mask = mask + bias[:, i.clamp(max=T - 1), j.clamp(0, T - 1)]
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.to(q.dtype))  # (B, H, n, w, D)
    return y.reshape(B, H, n * w, D)[:, :, :T]


def _shift_blocks(x: torch.Tensor, offset: int) -> torch.Tensor:
    """``out[:, :, b] = x[:, :, b + offset]``, zero where ``b + offset`` is outside the blocks. x: (B, H, n, w, D)."""
    if offset == 0:
        return x
    n = x.shape[2]
    if offset < 0:
        return F.pad(x, (0, 0, 0, 0, -offset, 0))[:, :, :n]
    return F.pad(x, (0, 0, 0, 0, 0, offset))[:, :, offset:]


@register("attention", "block_sparse")
class BlockSparseAttention(HeadAttention):
    """Block-sparse softmax attention: local blocks, strided "summary" tokens (the fixed pattern of the Sparse
    Transformer, Child et al. 2019) and global tokens.

    Not BigBird (Zaheer et al. 2020): BigBird's window and global tokens are here, its random blocks are not,
    so the pattern is the same for every layer and every input, and deterministic.

    Query i sees key j when (only j <= i when causal): they lie within ``local_blocks`` blocks of each other;
    or j is the last token of its block (``strided``, the Sparse Transformer's fixed pattern); or either is one
    of the first ``global_tokens`` positions. On CUDA ``nas.kernels`` runs it as a FlexAttention block mask,
    which skips the blocks the pattern leaves out; elsewhere the mask is applied to dense scores through SDPA,
    which shows what the pattern does to quality, not its speed.
    """

    class Config(BlockConfig):
        type: Literal["block_sparse"] = "block_sparse"
        block_size: int = Field(16, ge=1, description="tokens per block")
        local_blocks: int = Field(1, ge=0, description="neighbouring blocks visible on each side (0: own block)")
        global_tokens: int = Field(1, ge=0, description="leading positions that see and are seen by all")
        strided: bool = Field(True, description="also see the last token of every block")

    capabilities = Capabilities(causal=True, bidirectional=True, positions=ALL_POSITIONS,
                                time_exponent=(2, "strided keys: T/block per query, and the dense mask on CPU"),
                                sharing=HEAD_SHARING)
    #: The default block (16) is the kit's whole sequence: check patterns with several blocks too.
    conformance_configs = [{"block_size": 4, "local_blocks": 0, "global_tokens": 1},
                           {"block_size": 4, "local_blocks": 1, "global_tokens": 0, "strided": False}]

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__(dims, position)
        self.config = config

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        c, T = self.config, q.shape[-2]
        pattern = kernels.block_sparse(c.block_size, c.local_blocks, c.global_tokens, c.strided, self.causal)
        fast = kernels.flex(self, q, *self.expand_kv(k, v), pattern, bias=lambda: self.score_bias(T))
        if fast is not None:  # CUDA: FlexAttention skips the blocks the pattern leaves out
            return fast
        return self.masked_attend(q, k, v, block_sparse_mask(T, c, self.causal, q.device))


def block_sparse_mask(T: int, config: BlockSparseAttention.Config, causal: bool,
                      device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool: query i may see key j under ``config``'s pattern."""
    pos = torch.arange(T, device=device)
    i, j = pos[:, None], pos[None, :]
    bs = config.block_size
    allowed = (i // bs - j // bs).abs() <= config.local_blocks
    if config.strided:
        allowed = allowed | (j % bs == bs - 1)
    g = config.global_tokens
    allowed = allowed | (i < g) | (j < g)
    return allowed & (j <= i) if causal else allowed
