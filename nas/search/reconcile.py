"""Recovery on start: bring the study and MLflow back in line after a driver that died.

Trials left RUNNING by a dead driver are failed as ``interrupted`` and their parameters enqueued again, so the
same architecture re-runs and the lost attempt never counts. MLflow runs left RUNNING are either lost
(KILLED) or belong to a trial recorded just before the crash (finished from the journal: the journal is
written before MLflow).
"""

from __future__ import annotations

from .store import StudyStore
from .tracking import SearchTracker

__all__ = ["reconcile", "INTERRUPTED"]

INTERRUPTED = "interrupted: the search process stopped while this trial ran; it is run again"


def reconcile(store: StudyStore, tracker: SearchTracker) -> int:
    """Fail and re-enqueue the trials a dead driver left RUNNING; close their MLflow runs. Returns how many."""
    from optuna.trial import TrialState

    lost = 0
    for t in store.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        store.fail_and_requeue(t.number, t.params, INTERRUPTED)
        lost += 1
    by_run = {t.user_attrs.get("mlflow_run_id"): t for t in store.study.get_trials(deepcopy=False)}
    for run in tracker.running_children():
        owner = by_run.get(run.info.run_id)
        if owner is not None and not owner.user_attrs.get("interrupted") and owner.state != TrialState.RUNNING:
            status = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "infeasible"}.get(owner.state, "failed")
            tracker.finish_trial(run.info.run_id, status, owner.user_attrs.get("metrics", {}),
                                 owner.user_attrs.get("reason"))
        else:
            tracker.kill_trial(run.info.run_id, INTERRUPTED)
    return lost
