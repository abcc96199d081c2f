"""Where a search lives on disk, and its Optuna study: the journal file that is the source of truth.

Only Optuna's public API is used. A trial left RUNNING by a process that died must be marked ``interrupted``
(with its reason) before it is failed, and ``Study`` offers no public way to set user attributes on a trial it
did not hand out in this process; so :class:`StudyStore` keeps the ``JournalStorage`` it opened and calls its
public ``BaseStorage`` methods (``get_trial_id_from_study_id_trial_number``, ``set_trial_user_attr``,
``set_trial_state_values``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..pareto import hypervolume, reference_point, to_minimize
from ..report import Front, TrialRow, compute_front
from ..spec import Spec

if TYPE_CHECKING:
    import optuna
    from optuna.storages import JournalStorage

__all__ = ["SearchPaths", "SearchLock", "StudyStore", "WeightStore", "Counts", "load_study", "study_rows",
           "trial_status", "study_front", "count_trials", "natural_reference", "repair_journal", "SearchAborted",
           "SearchRefused"]


class SearchAborted(RuntimeError):
    """Too many consecutive failures, or an unusable space; the study is kept and can be resumed."""


class SearchRefused(SearchAborted):
    """The search cannot start at all (another process holds it, or its stored space differs): nothing is
    written; ``nas search`` exits 2."""


@dataclass(frozen=True)
class SearchPaths:
    """Everything a search writes lives under one root (``search.dir``, default ``.nas``)."""

    root: Path
    name: str

    @property
    def journal(self) -> Path:
        return self.root / "studies" / f"{self.name}.journal"

    @property
    def weights(self) -> Path:
        return self.root / "weights" / self.name

    @property
    def front(self) -> Path:
        return self.root / "fronts" / self.name

    @property
    def lock(self) -> Path:
        return self.root / "studies" / f"{self.name}.lock"


class SearchLock:
    """One writer per search: an exclusive ``flock`` on ``studies/NAME.lock`` holding the owner's pid and host.

    The operating system drops the lock when its process dies however it dies, so a stale lock file from a
    killed search is simply taken over. (``flock`` is per machine: two hosts writing one study over a network
    file system are not caught.)
    """

    def __init__(self, paths: SearchPaths):
        self.path = paths.lock
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise SearchRefused(f"search '{self.path.stem}' is already running ({holder}; lock {self.path}); wait "
                                "for it to finish, or stop it, then run this again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def repair_journal(path: Path) -> str | None:
    """Cut a torn last record (a process that died mid-write, a full disk) off the journal; returns what was
    done, or None when the journal was whole. The dropped bytes are kept beside it in ``NAME.journal.torn``.

    Every record is one JSON line; Optuna reads past a torn last line, but its next append lands on that line
    and the study can no longer be read. Only the tail can be torn: appends are sequential and fsynced.
    """
    if not path.exists():
        return None
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # an unterminated tail is torn whatever it holds
    while keep > 0:  # and so is a last complete line that is not a record
        start = data.rfind(b"\n", 0, keep - 1) + 1
        if _is_record(data[start:keep]):
            break
        keep = start
    if keep == len(data):
        return None
    torn = path.with_name(path.name + ".torn")
    torn.write_bytes(data[keep:])
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return (f"the study journal {path} ended in a torn record ({len(data) - keep} bytes, the last write of a process "
            f"that stopped mid-write); it was cut off and kept in {torn}. Everything before it is intact.")


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@dataclass(frozen=True)
class Counts:
    """The trials of a study by outcome. ``interrupted`` ones are re-run and never count towards ``n_trials``;
    nor do ``infeasible`` ones (never trained) and ``repeats`` (an architecture trained before, not again).
    ``steps``: training steps run over all trials."""

    complete: int = 0
    failed: int = 0
    interrupted: int = 0
    infeasible: int = 0
    stopped: int = 0
    repeats: int = 0
    steps: int = 0

    @property
    def finished(self) -> int:
        """What counts towards ``n_trials``: the trained architectures (complete, failed, stopped early)."""
        return self.complete + self.failed + self.stopped

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class WeightStore:
    """The trained weights of a search's ok trials: ``trial_N.safetensors`` with ``trial_N.json`` (its
    architecture) beside it, under ``<root>/weights/<name>``. Written before the journal records the trial, so a
    COMPLETE trial always has its weights."""

    def __init__(self, paths: SearchPaths):
        self.folder = paths.weights

    def save(self, number: int, weights: bytes, arch_json: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"trial_{number}.safetensors").write_bytes(weights)
        (self.folder / f"trial_{number}.json").write_text(arch_json)

    def discard(self, number: int) -> None:
        for suffix in (".safetensors", ".json"):
            (self.folder / f"trial_{number}{suffix}").unlink(missing_ok=True)

    def model_folder(self, number: int, folder: Path, space_yaml: str) -> bool:
        """Lay out trial ``number``'s saved model in ``folder`` (weights, architecture, the space it came from);
        False when there are no weights for it."""
        weights = self.folder / f"trial_{number}.safetensors"
        if not weights.exists():
            return False
        (folder / "weights.safetensors").write_bytes(weights.read_bytes())
        (folder / "architecture.json").write_text((self.folder / f"trial_{number}.json").read_text())
        (folder / "space.yaml").write_text(space_yaml)
        return True


def _journal(paths: SearchPaths) -> "JournalStorage":
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    # An absolute path: Optuna's lock is a symlink to the journal, and with a relative target its check for a
    # stale lock stats a path that does not exist and waits for ever.
    return JournalStorage(JournalFileBackend(str(paths.journal.resolve())))


def clear_stale_journal_lock(paths: SearchPaths) -> str | None:
    """Remove Optuna's journal lock left by a process killed while it wrote. Only called under
    :class:`SearchLock`: no other writer of this journal can be alive."""
    lock = paths.journal.with_name(paths.journal.name + ".lock")
    if not (lock.is_symlink() or lock.exists()):
        return None
    lock.unlink()
    return f"removed the journal lock {lock} that a killed search left behind"


def load_study(paths: SearchPaths) -> "optuna.Study":
    """An existing study, read-only use (``nas show``). Raises KeyError if there is none."""
    import optuna

    if not paths.journal.exists():
        known = sorted(p.stem for p in paths.journal.parent.glob("*.journal")) if paths.journal.parent.exists() else []
        raise KeyError(f"no search named '{paths.name}' under {paths.root}; known: {', '.join(known) or 'none'}")
    return optuna.load_study(study_name=paths.name, storage=_journal(paths))


def fingerprint(spec: Spec) -> str:
    """A hash of everything that makes trials comparable: the spec without its ``search`` section (how many
    trials, where and how fast may change between resumes)."""
    data = spec.model_dump(mode="json")
    data.pop("search", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


#: What the re-run of an interrupted trial keeps of it: where a one-shot search's retrained trial came from.
CARRIED = ("one_shot_candidate", "inherited")


class StudyStore:
    """The study of one search, opened (or created) from its journal, with the writes the search makes to it
    beyond ask and tell."""

    def __init__(self, spec: Spec, paths: SearchPaths, objectives: list[tuple[str, str]],
                 sampler: "Callable[[int], optuna.samplers.BaseSampler]", source_text: str):
        """``sampler(n)`` makes the sampler for a study that already holds ``n`` trials (0: a new search), so a
        resumed search continues its random stream instead of replaying it. Call under :class:`SearchLock`."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.repaired = " ".join(filter(None, [clear_stale_journal_lock(paths), repair_journal(paths.journal)])) or None
        self.storage = _journal(paths)
        n = 0
        for summary in self.storage.get_all_studies():
            if summary.study_name == spec.name:
                n = len(self.storage.get_all_trials(self.storage.get_study_id_from_name(spec.name), deepcopy=False))
        self.resumed_after = n
        self.study = optuna.create_study(study_name=spec.name, storage=self.storage, sampler=sampler(n),
                                         directions=[cast(Any, d) for _, d in objectives], load_if_exists=True)
        self._study_id = self.storage.get_study_id_from_name(spec.name)
        stored, mine = self.study.user_attrs.get("fingerprint"), fingerprint(spec)
        if stored is None:
            self.study.set_user_attr("fingerprint", mine)
            self.study.set_user_attr("objectives", [list(o) for o in objectives])
            self.study.set_user_attr("spec_text", source_text)
        elif stored != mine:
            raise SearchRefused(
                f"a search named '{spec.name}' already exists in {paths.journal} with a different space, "
                "task, training or objectives; resuming it would mix incomparable trials. Give this search "
                "another `name:` (or move the old study away)."
            )

    def fail_and_requeue(self, number: int, params: dict[str, Any], reason: str) -> None:
        """Mark a trial that did not finish as FAIL (``interrupted``, with ``reason``) and enqueue its parameters,
        so the same architecture runs again and the lost attempt never counts towards ``n_trials``."""
        from optuna.trial import TrialState

        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        attrs = self.storage.get_trial(trial_id).user_attrs
        self.storage.set_trial_user_attr(trial_id, "interrupted", True)
        self.storage.set_trial_user_attr(trial_id, "reason", reason)
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        carried = {k: attrs[k] for k in CARRIED if k in attrs}
        self.study.enqueue_trial(params, user_attrs={"retry_of": number, **carried}, skip_if_exists=False)

    def counts(self) -> Counts:
        return count_trials(self.study)


def trial_status(t: "optuna.trial.FrozenTrial") -> str:
    """ok, failed, interrupted, infeasible, stopped or running: what a trial of the study counts as (a repeat:
    what the trial it repeats counted as)."""
    from optuna.trial import TrialState

    if t.state == TrialState.COMPLETE:
        return "ok"
    if t.state == TrialState.FAIL:
        return "interrupted" if t.user_attrs.get("interrupted") else "failed"
    if t.state == TrialState.PRUNED:
        return "stopped" if t.user_attrs.get("status") == "stopped" else "infeasible"
    return "running"


def count_trials(study: "optuna.Study") -> Counts:
    c = {"complete": 0, "failed": 0, "interrupted": 0, "infeasible": 0, "stopped": 0, "repeats": 0, "steps": 0}
    names = {"ok": "complete", "failed": "failed", "interrupted": "interrupted", "infeasible": "infeasible",
             "stopped": "stopped"}
    for t in study.get_trials(deepcopy=False):
        c["steps"] += int(t.user_attrs.get("steps", 0))
        status = trial_status(t)
        if status == "running":
            continue
        c["repeats" if "repeat_of" in t.user_attrs and status != "interrupted" else names[status]] += 1
    return Counts(**c)


def study_rows(study: "optuna.Study") -> list[TrialRow]:
    """The complete trials, as rows of the front (feasible: every soft constraint satisfied)."""
    from optuna.trial import TrialState

    rows = []
    rebuilt = study.user_attrs.get("mlflow_run_ids", {})  # runs that now hold trials (after a store was rebuilt)
    objectives = [str(m) for m, _ in study.user_attrs.get("objectives", [])]
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "repeat_of" in t.user_attrs:  # the same architecture as an earlier row
            continue
        verified = study.user_attrs.get(f"verified.{t.number}")
        constraints = [*t.user_attrs.get("constraints", []), *t.constraints.values()]
        values, metrics = list(t.values), dict(t.user_attrs.get("metrics", {}))
        if verified:  # the front is computed from the values measured again, alone
            metrics.update({f"verified_{k}": v for k, v in verified["metrics"].items()})
            values = [verified["metrics"].get(m, v) for m, v in zip(objectives, values)]
            constraints = verified.get("constraints", constraints)
        feasible = all(v <= 0 for v in constraints)
        run_id = rebuilt.get(str(t.number), t.user_attrs.get("mlflow_run_id"))
        rows.append(TrialRow(t.number, t.user_attrs.get("summary", ""), values, feasible, run_id, metrics,
                             verified=bool(verified)))
    return rows


def study_front(study: "optuna.Study") -> tuple[Front, float | None, list[float] | None]:
    """The front of a study as stored, with its hypervolume and reference point."""
    objectives = [(str(m), str(d)) for m, d in study.user_attrs["objectives"]]
    front = compute_front(objectives, study_rows(study))
    ref = study.user_attrs.get("reference_point")
    hv = None
    if ref is not None and front.rows:
        pts = to_minimize([r.values for r in front.rows if r.feasible], [d for _, d in objectives])
        hv = hypervolume(pts, to_minimize([ref], [d for _, d in objectives])[0]) if len(pts) else 0.0
    return front, hv, ref


def natural_reference(values: list[list[float]], directions: list[str]) -> list[float]:
    """A hypervolume reference point that later trials rarely cross: 0 for a non-negative metric to maximise
    (accuracy), twice the worst value for a positive metric to minimise (latency, memory, parameters), and
    otherwise the worst value plus 10% of the observed range."""
    generic = reference_point(to_minimize(values, directions))
    ref = []
    for i, d in enumerate(directions):
        column = [v[i] for v in values if math.isfinite(v[i])]
        if d == "maximize" and min(column) >= 0:
            ref.append(0.0)
        elif d == "minimize" and min(column) > 0:
            ref.append(2.0 * max(column))
        else:
            ref.append(-generic[i] if d == "maximize" else float(generic[i]))
    return ref
