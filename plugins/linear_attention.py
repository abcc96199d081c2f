"""Built-in sub-quadratic attention: kernelized linear attention (ELU+1, Performer FAVOR+) and Linformer.

Linear attention replaces ``softmax(q k^T) v`` by ``phi(q) (phi(k)^T v)`` normalised by ``phi(q) . sum phi(k)``,
so the cost grows linearly with the sequence. Causal masking becomes a running sum over positions; here it is
computed chunk by chunk (:func:`causal_linear_attention`), which equals the quadratic masked form exactly (up to
floating-point rounding), as ``tests/test_blocks.py`` checks. None of these blocks can take a score bias or
rotary positions: there is no score matrix to bias, and rotating inside a feature map breaks its positivity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas import BlockConfig, Capabilities, Dims, PositionScheme, kernels, register
from nas_plugins._common import fp32_region
from nas_plugins.attention import HEAD_SHARING, HeadAttention

ABSOLUTE_POSITIONS = frozenset({"none", "embedding"})
EPS = 1e-6  # keeps the normaliser positive when every feature underflows


def linear_attention_reference(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """The quadratic form: ``A = phi_q phi_k^T`` (masked to j <= i when causal), ``A v / A 1``. For tests."""
    scores = phi_q @ phi_k.transpose(-1, -2)  # (B, H, T, T)
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1), 0.0)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + EPS)


def causal_linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``out_i = sum_{j<=i} (phi_q_i . phi_k_j) v_j / sum_{j<=i} phi_q_i . phi_k_j`` in O(T) memory.

    phi_q, phi_k: (B, H, T, M) non-negative features; v: (B, H, T, D). The sequence is cut into chunks of
    ``chunk``: within a chunk the masked quadratic form, across chunks the running state ``S = sum phi_k^T v``
    (M x D) and normaliser ``z = sum phi_k`` of all earlier chunks (an exclusive cumulative sum).
    """
    B, H, T, M = phi_q.shape
    D = v.shape[-1]
    c = min(chunk, T)
    n = -(-T // c)
    pad = n * c - T  # zero features: padded keys add nothing, padded queries are cut off below
    q = F.pad(phi_q, (0, 0, 0, pad)).view(B, H, n, c, M)
    k = F.pad(phi_k, (0, 0, 0, pad)).view(B, H, n, c, M)
    vv = F.pad(v, (0, 0, 0, pad)).view(B, H, n, c, D)
    kv = torch.einsum("bhncm,bhncd->bhnmd", k, vv)  # (B, H, n, M, D) per chunk
    state = F.pad(kv.cumsum(2), (0, 0, 0, 0, 1, 0))[:, :, :n]  # sum over earlier chunks only
    ksum = k.sum(3)  # (B, H, n, M)
    zstate = F.pad(ksum.cumsum(2), (0, 0, 1, 0))[:, :, :n]
    tril = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~tril, 0.0)  # (B, H, n, c, c)
    num = scores @ vv + q @ state  # (B, H, n, c, D)
    den = scores.sum(-1) + torch.einsum("bhncm,bhnm->bhnc", q, zstate)  # (B, H, n, c)
    out = num / (den[..., None] + EPS)
    return out.reshape(B, H, n * c, D)[:, :, :T]


def bidirectional_linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``phi_q (phi_k^T v) / (phi_q . sum_j phi_k_j)``: every query sees every key. Shapes as above."""
    kv = phi_k.transpose(-1, -2) @ v  # (B, H, M, D)
    den = phi_q @ phi_k.sum(2)[..., None]  # (B, H, T, 1)
    return (phi_q @ kv) / (den + EPS)


class _KernelAttention(HeadAttention):
    """Shared projections and normalisation of the kernelized attentions; sub-classes define ``features``."""

    def features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:  # (B, H, T, D) -> (B, H, T, M)
        raise NotImplementedError

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = self.expand_kv(k, v)
        dtype = v.dtype
        with fp32_region(q.device):  # running sums in fp32 under any precision
            phi_q = self.features(q.float(), is_query=True)
            phi_k = self.features(k.float(), is_query=False)
            if self.causal:
                y = kernels.linear_attention(self, phi_q, phi_k, v.float(), EPS)  # CUDA: our Triton kernel
                if y is None:
                    kernels.record(self, "torch:chunked")
                    y = causal_linear_attention(phi_q, phi_k, v.float())
            else:
                kernels.record(self, "torch:bidirectional")
                y = bidirectional_linear_attention(phi_q, phi_k, v.float())
        return y.to(dtype)


@register("attention", "linear")
class LinearAttention(_KernelAttention):
    """Linear attention with the ELU+1 feature map (Katharopoulos et al. 2020, "Transformers are RNNs").

    ``phi(x) = elu(x) + 1`` applied to each head's queries and keys; the state per head is D x D.
    """

    class Config(BlockConfig):
        type: Literal["linear"] = "linear"

    capabilities = Capabilities(causal=True, bidirectional=True, positions=ABSOLUTE_POSITIONS,
                                time_exponent=(1, "D x D state per head"), sharing=HEAD_SHARING)

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__(dims, position)

    def features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        return F.elu(x) + 1.0


@register("attention", "performer")
class PerformerAttention(_KernelAttention):
    """Performer attention with FAVOR+ positive orthogonal random features (Choromanski et al. 2021,
    "Rethinking Attention with Performers"), an unbiased estimate of softmax attention.

    ``phi(x) = exp(w_m . x' - |x'|^2 / 2) / sqrt(M)`` with ``x' = x / D^(1/4)`` and ``M = num_features``
    Gaussian directions ``w_m``, orthogonalised in blocks of D. The directions are drawn once at build time
    and stored in the state dict (no redrawing). The exponent is at most ``|w|^2 / 2`` whatever ``x`` is, so
    keys need no data-dependent stabiliser (which would leak the future in causal mode); each query's
    features are scaled by their own maximum, which cancels in the normalisation.
    """

    class Config(BlockConfig):
        type: Literal["performer"] = "performer"
        num_features: int = Field(64, ge=1, description="random features M per head")

    capabilities = Capabilities(causal=True, bidirectional=True, positions=ABSOLUTE_POSITIONS,
                                time_exponent=(1, "M x D state per head"), sharing=HEAD_SHARING)
    conformance_configs = [{"num_features": 5}]  # fewer features than a head's width: a partial block

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        super().__init__(dims, position)
        self.register_buffer("projection", orthogonal_gaussian(config.num_features, dims.head_dim))  # (M, D)

    def features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        logits = favor_logits(x, self.projection.float())  # (B, H, T, M)
        if is_query:
            logits = logits - logits.amax(-1, keepdim=True).detach()
        return torch.exp(logits) / math.sqrt(self.projection.shape[0])


def favor_logits(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``w_m . x' - |x'|^2 / 2`` with ``x' = x / D^(1/4)``: the exponents of FAVOR+'s positive features.

    x: (..., D); projection: (M, D) -> (..., M). With ``phi(x) = exp(logits) / sqrt(M)``, ``phi(q) . phi(k)``
    is an unbiased estimate of ``exp(q . k / sqrt(D))`` when every row of ``projection`` is N(0, I) distributed
    (Choromanski et al. 2021, Lemma 1), as :func:`orthogonal_gaussian`'s rows are.
    """
    x = x * x.shape[-1] ** -0.25
    return x @ projection.T - 0.5 * (x * x).sum(-1, keepdim=True)


def orthogonal_gaussian(m: int, d: int) -> torch.Tensor:
    """(m, d) rows: blocks of d orthogonal directions, each row rescaled to the norm of a Gaussian vector.

    Each block is the Q of a Gaussian matrix's QR decomposition with its columns multiplied by the signs of
    R's diagonal: only then is Q Haar-distributed (Mezzadri 2007, "How to generate random matrices from the
    classical compact groups"). Without it, LAPACK's convention (here: the first coordinate of the first row
    always negative) biases every direction, and the kernel estimate with it, by an amount that more features
    do not shrink. A uniformly distributed unit direction times an independent chi-distributed norm is a
    N(0, I) vector, so each row is marginally Gaussian while the rows of a block stay orthogonal.
    """
    blocks = []
    for _ in range(-(-m // d)):
        q, r = torch.linalg.qr(torch.randn(d, d))
        q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)  # column j times sign(R_jj): Haar-distributed
        blocks.append(q.T)
    directions = torch.cat(blocks)[:m]  # (m, d) unit rows
    return directions * torch.randn(m, d).norm(dim=1, keepdim=True)


@register("attention", "linformer")
class LinformerAttention(HeadAttention):
    """Linformer (Wang et al. 2020, "Self-Attention with Linear Complexity"): keys and values are projected
    along the sequence to ``proj_len`` rows by learned matrices E and F (shared across heads), so the score
    matrix is T x proj_len.

    Encoder only: mixing all positions into each projected row cannot be masked causally. The projections
    are sized for the task's sequence length; shorter inputs use their first columns.
    """

    class Config(BlockConfig):
        type: Literal["linformer"] = "linformer"
        proj_len: int = Field(32, ge=1, description="projected sequence length k of keys and values")

    capabilities = Capabilities(causal=False, bidirectional=True, positions=ABSOLUTE_POSITIONS,
                                time_exponent=(1, "keys projected to proj_len rows"))
    conformance_configs = [{"proj_len": 4}]  # fewer projected rows than the kit's sequence

    def __init__(self, config: Config, dims: Dims, position: PositionScheme):
        if dims.causal:
            raise ValueError("linformer cannot run causally (encoder tasks only)")
        super().__init__(dims, position)
        self.E = nn.Parameter(torch.randn(config.proj_len, dims.seq_len) / math.sqrt(config.proj_len))  # (k, T)
        self.F = nn.Parameter(torch.randn(config.proj_len, dims.seq_len) / math.sqrt(config.proj_len))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.shape[-2]
        k, v = self.expand_kv(k, v)
        k = torch.einsum("kt,bhtd->bhkd", self.E[:, :T].to(k.dtype), k)  # (B, H, k, D)
        v = torch.einsum("kt,bhtd->bhkd", self.F[:, :T].to(v.dtype), v)
        return kernels.sdpa(self, q, k, v)
