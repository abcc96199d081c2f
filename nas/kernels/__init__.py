"""Kernels: the fastest correct kernel for each attention and norm call on the current device, and a record of
which one ran.

The dispatch policy (``auto``), per call:

=========================================  ===================================  =============================
call                                       CUDA                                 CPU
=========================================  ===================================  =============================
full / causal softmax, no bias             SDPA: FlashAttention-2, cuDNN or     SDPA: fused flash-style kernel
                                           memory-efficient (SDPA's choice)
full softmax + score bias (ALiBi, T5)      FlexAttention ``score_mod``          SDPA + explicit float mask
sliding window                             FlexAttention ``block_mask``         blockwise PyTorch (O(T * w))
block-sparse                               FlexAttention ``block_mask``         SDPA + explicit mask
causal linear attention                    our Triton chunked kernel (fwd+bwd)  chunked PyTorch reference
RMSNorm                                    our fused Triton kernel (fwd+bwd)    ``torch.nn.RMSNorm``
=========================================  ===================================  =============================

On CPU no path without a backward is ever taken when gradients are needed (FlexAttention has none there).
A fast path that raises once on CUDA is disabled with a warning and the reference runs from then on.
``NAS_KERNELS=reference`` (or ``with kernels.policy("reference")``) turns every fast path off.

Every call sets ``module.kernel`` on the calling block (``sdpa:flash``, ``sdpa:flash+mask``, ``flex``,
``flex+bias``, ``triton:rms_norm``, ``torch:blockwise``...); :func:`used` collects them for a model, and a
trial stores them as ``info["kernels"]``. A kernel materialises a T x T tensor (scores or mask) exactly when
:func:`materialises_scores` says so; ``nas profile`` derives its memory expectation from that.

The Triton kernels (:mod:`nas.kernels._rmsnorm`, :mod:`nas.kernels._linear`) import Triton only when used.
"""

from __future__ import annotations

from ._dispatch import (POLICIES, current_policy, flex, linear_attention, policy, record, rms_norm, sdpa, sdpa_backend,
                        used)
from ._flex import Pattern, alibi_score_mod, bias_score_mod, block_sparse, causal, flex_available, sliding_window
from ._triton import INSTALL_HINT, interpreting, triton_importable, triton_runs_on

__all__ = [
    "POLICIES",
    "policy",
    "current_policy",
    "record",
    "used",
    "sdpa",
    "sdpa_backend",
    "flex",
    "linear_attention",
    "rms_norm",
    "Pattern",
    "causal",
    "sliding_window",
    "block_sparse",
    "bias_score_mod",
    "alibi_score_mod",
    "flex_available",
    "triton_importable",
    "triton_runs_on",
    "interpreting",
    "materialises_scores",
    "INSTALL_HINT",
]


def materialises_scores(kernel: str) -> bool:
    """Whether ``kernel`` (a name recorded by the dispatch) stores a T x T tensor: SDPA's math backend (the
    scores), any explicit mask, a dense bias tensor (``+bias``)."""
    return kernel.startswith("sdpa:math") or "+mask" in kernel or "+bias" in kernel
