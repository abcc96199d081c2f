"""The local MLflow store every command writes to: ``<root>/mlflow.db`` and ``<root>/mlartifacts``.

Shared by the search (:mod:`nas.search.tracking`, which writes a search's runs) and the profile; ``nas ui``
serves the same store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["tracking_uri", "open_experiment", "flatten_params", "log_params", "save_view", "column", "MAX_PARAM",
           "EXPERIMENT_KIND", "FRONT_VIEW"]

MAX_PARAM = 500  # MLflow params are short strings; longer values are cut with a marker
#: The experiment tag MLflow 3's UI picks an experiment's view from; without it a new experiment may open in the
#: GenAI view (traces, prompts) instead of the runs table with metric columns.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: The key of the saved view of a search's front (see :func:`save_view`): ``#/experiments/ID?viewStateShareKey=``.
FRONT_VIEW = "nas-front"
_VIEW_TAG = "mlflow.sharedViewState."


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def open_experiment(root: Path, name: str, uri: str | None = None) -> tuple["MlflowClient", str]:
    """A client of the store at ``uri`` (default: the SQLite file under ``root``) and the id of experiment
    ``name``, created when it does not exist yet (with its artifacts under ``root/mlartifacts`` for the local
    store; a server keeps them where it is configured to). The experiment is tagged for the UI's model-training
    view (:data:`EXPERIMENT_KIND`), also when an older version of nas created it."""
    from mlflow import MlflowClient

    local = uri is None or uri == tracking_uri(root)
    client = MlflowClient(tracking_uri=uri or tracking_uri(root))
    key, kind = EXPERIMENT_KIND
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(key) != kind:
            client.set_experiment_tag(found.experiment_id, key, kind)
        return client, found.experiment_id
    artifacts = (root / "mlartifacts").resolve().as_uri() if local else None
    return client, client.create_experiment(name, artifact_location=artifacts, tags={key: kind})


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings (and lists of mappings, by index) as flat ``a.b.0.c`` keys with string values, each at most
    :data:`MAX_PARAM` long. ``None`` (a setting left unset) is left out rather than logged as a "None" string;
    lists of plain values are JSON (``[32, 64]``)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    elif isinstance(data, (list, tuple)) and any(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            out.update(flatten_params(v, f"{prefix}{i}."))
    elif data is not None:
        text = json.dumps(data) if isinstance(data, (list, tuple, bool)) else str(data)
        out[prefix[:-1]] = text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."
    return out


def log_params(client: "MlflowClient", run_id: str, params: dict[str, str]) -> None:
    """Log any number of params (``log_batch`` takes at most 100 at a time)."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i: i + 90])


def column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: ``column("metrics", "accuracy")`` -> ``metrics.`accuracy```."""
    return f"{kind}.`{name}`"


def save_view(client: "MlflowClient", experiment_id: str, key: str, title: str, state: dict[str, Any]) -> None:
    """Store a named view of the runs table (filter, sort, columns) that the UI opens at
    ``#/experiments/ID?viewStateShareKey=KEY`` and lists among the experiment's saved views.

    MLflow has no client API for this: it is the experiment tag the UI's own "share view" writes
    (``mlflow.sharedViewState.KEY``, an envelope with the view's state as a JSON string), written here in the
    same form. ``state`` holds the UI's keys: ``searchFilter``, ``orderByKey``, ``orderByAsc``,
    ``selectedColumns`` (names from :func:`column`), ``runsExpanded``. The browser test checks that the UI
    still reads it."""
    now = int(time.time() * 1000)
    envelope = {"name": title, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, _VIEW_TAG + key, json.dumps(envelope))
