"""The search: Optuna ask/tell in the driver, trials as Ray tasks, results to MLflow.

* :mod:`nas.search.store`       where a search lives on disk, and its study (the journal: the source of truth)
* :mod:`nas.search.policy`      ask/tell: what to try next, and what a finished trial counts as
* :mod:`nas.search.executor`    trials as Ray tasks (worker side and driver side)
* :mod:`nas.search.reconcile`   recovery on start after a driver that died
* :mod:`nas.search.tracking`    MLflow: one parent run per search, one child per trial
* :mod:`nas.search.fronts`      Pareto ranks, reference point and hypervolume while the search runs
* :mod:`nas.search.live`        the terminal view
* :mod:`nas.search.controller`  composes the parts of a search that trains every architecture
* :mod:`nas.search.one_shot`    ``search.strategy: one_shot``: a supernet screens, the best are retrained
* :mod:`nas.search.strategy`    :func:`run_search`: the strategy the spec names
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ..spec import make_sampler
    from .controller import Controller
    from .outcome import SearchOutcome, format_outcome
    from .store import (SearchAborted, SearchPaths, SearchRefused, StudyStore, count_trials, load_study,
                        natural_reference, study_front, study_rows)
    from .strategy import run_search

# Imported on first use: `nas show` reads a study through .store without importing Ray, MLflow or torch.
_LAZY = {
    "make_sampler": "..spec",  # the sampler a spec names, built where the spec is checked
    "Controller": ".controller",
    "run_search": ".strategy",
    **dict.fromkeys(("SearchOutcome", "format_outcome"), ".outcome"),
    **dict.fromkeys(("SearchAborted", "SearchPaths", "SearchRefused", "StudyStore", "count_trials", "load_study",
                     "natural_reference", "study_front", "study_rows"), ".store"),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = ["Controller", "SearchAborted", "SearchRefused", "SearchOutcome", "SearchPaths", "StudyStore", "count_trials",
           "format_outcome", "load_study", "make_sampler", "natural_reference", "run_search", "study_front",
           "study_rows"]
