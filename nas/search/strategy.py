"""Which search runs: ``search.strategy`` picks the controller (``standalone``, every architecture trained on its
own) or the one-shot search (:mod:`nas.search.one_shot`, which ends in the controller)."""

from __future__ import annotations

from pathlib import Path

from ..spec import LoadedSpec
from .outcome import SearchOutcome
from .controller import run_search as run_standalone
from .one_shot import run_one_shot

__all__ = ["run_search"]


def run_search(loaded: LoadedSpec, root: Path | None = None, address: str | None = None,
               live: bool = True, tracking_uri: str | None = None) -> SearchOutcome:
    """Run (or resume) the search a loaded spec describes, with the strategy it names."""
    if loaded.spec.search.strategy == "one_shot":
        return run_one_shot(loaded, root, address, live, tracking_uri)
    return run_standalone(loaded, root, address, live, tracking_uri)
