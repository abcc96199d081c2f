"""``nas profile``: how each attention type's time and memory grow with sequence length, measured on this device.

For every registered attention type (built through the registry at fixed sizes, position ``none``), one
attention block is timed and its peak memory taken over a sweep of sequence lengths, in inference
(``forward``) or training (``train``: forward + backward) mode. The scaling exponent ``p`` of
``time ~ T^p`` and ``memory ~ T^p`` is fitted by least squares on log-log axes over the upper part of the
sweep, where the asymptotic term dominates, and printed beside the analytical expectation:

* time: quadratic for full attention (every query scores every key), linear for sliding-window, kernelized
  (linear, Performer), low-rank (Linformer) attention and the state-space scan;
* memory: quadratic when the kernel that ran stores a T x T tensor (SDPA's math backend, an explicit mask or
  bias; see :func:`nas.kernels.materialises_scores`), linear for flash-style kernels and the linear types.

Then one full Transformer layer's training activation memory is compared with Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models", eq. 2): ``s*b*h*(34 + 5*a*s/h)`` bytes
per layer in 16-bit training with dropout. Our layer is fp32 without dropout, so the formula is adapted term by
term (:func:`activation_formula`): ``s*b*h*(64 + 4*a*s/h)`` bytes; ``4*a*s^2*b`` is the stored softmax
output that flash-style kernels never keep; full recomputation (activation checkpointing) keeps only the
layer input, ``4*s*b*h`` bytes (their "2sbh" in 16-bit).

Memory figures are the peak bytes allocated while the measured call runs, above what was allocated before
it (parameters and the input are not counted): CPU from the allocator events of ``torch.profiler``, CUDA
from ``max_memory_allocated``, as in :mod:`nas.measure`.
"""

from .analysis import activation_formula, expected_exponents, fit_power_law, fit_rows, korthikanti_bytes
from .output import format_report, log_to_mlflow, write_outputs
from .sweep import (ProfileReport, ProfileSettings, layer_activation_memory, measure_point, profile_attention,
                    run_profile)

__all__ = ["ProfileReport", "ProfileSettings", "activation_formula", "expected_exponents", "fit_power_law", "fit_rows",
           "format_report", "korthikanti_bytes", "layer_activation_memory", "log_to_mlflow", "measure_point",
           "profile_attention", "run_profile", "write_outputs"]
