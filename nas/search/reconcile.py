"""Recovery on start: trials a driver that died left RUNNING are failed as ``interrupted`` and their parameters
enqueued again, so the same architecture re-runs and the lost attempt never counts. MLflow is then brought in
line with the journal by :meth:`nas.search.tracking.SearchTracker.sync` (runs left RUNNING are finished from
the journal or closed as KILLED; runs a lost store no longer has are rebuilt).
"""

from __future__ import annotations

from .store import StudyStore

__all__ = ["reconcile", "INTERRUPTED"]

INTERRUPTED = "interrupted: the search process stopped while this trial ran; it is run again"


def reconcile(store: StudyStore) -> int:
    """Fail and re-enqueue the trials a dead driver left RUNNING. Returns how many."""
    from optuna.trial import TrialState

    lost = 0
    for t in store.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        store.fail_and_requeue(t.number, t.params, INTERRUPTED)
        lost += 1
    return lost
