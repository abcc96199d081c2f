"""The Optuna sampler a spec names (``search.sampler``): built here, where the spec is checked, so that options
a sampler refuses are reported by ``nas validate`` with their line, and by the search the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .schema import SAMPLERS, Spec

if TYPE_CHECKING:
    import optuna

__all__ = ["make_sampler"]


def make_sampler(spec: Spec, resumed_after: int = 0) -> "optuna.samplers.BaseSampler":
    """The Optuna sampler named in ``search.sampler``, seeded.

    ``resumed_after``: how many trials the study already holds. A seeded sampler made anew replays its random
    stream from the start, so a resumed search would ask for its first architectures again; its seed is
    derived from ``(search.seed, resumed_after)`` instead (a new search keeps ``search.seed`` itself).

    Parameters that exist only in some trials (a block's own settings, a choice reduced by another choice)
    are sampled independently by design, so the samplers' warnings about that are off unless asked for.
    """
    import optuna

    cfg, seed = spec.search.sampler, spec.search.seed
    if resumed_after:
        import numpy as np

        seed = int(np.random.SeedSequence([seed, resumed_after]).generate_state(1)[0])
    options = dict(cfg.options)
    if cfg.type == "gp":  # (TPE deprecated the option in Optuna 4.9 and no longer warns)
        options.setdefault("warn_independent_sampling", False)
    sampler: optuna.samplers.BaseSampler = getattr(optuna.samplers, SAMPLERS[cfg.type])(seed=seed, **options)
    return sampler
