"""The local MLflow store every command writes to: ``<root>/mlflow.db`` and ``<root>/mlartifacts``.

Shared by the search (:mod:`nas.search.tracking`, which writes a search's runs) and the profile; ``nas ui``
serves the same store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["tracking_uri", "open_experiment", "flatten_params", "log_params", "MAX_PARAM"]

MAX_PARAM = 500  # MLflow params are short strings; longer values are cut with a marker


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def open_experiment(root: Path, name: str, uri: str | None = None) -> tuple["MlflowClient", str]:
    """A client of the store at ``uri`` (default: the SQLite file under ``root``) and the id of experiment
    ``name``, created when it does not exist yet (with its artifacts under ``root/mlartifacts`` for the local
    store; a server keeps them where it is configured to)."""
    from mlflow import MlflowClient

    local = uri is None or uri == tracking_uri(root)
    client = MlflowClient(tracking_uri=uri or tracking_uri(root))
    found = client.get_experiment_by_name(name)
    if found is not None:
        return client, found.experiment_id
    artifacts = (root / "mlartifacts").resolve().as_uri() if local else None
    return client, client.create_experiment(name, artifact_location=artifacts)


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as flat ``a.b.c`` keys with string values, each at most :data:`MAX_PARAM` long."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    else:
        text = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
        out[prefix[:-1]] = text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."
    return out


def log_params(client: "MlflowClient", run_id: str, params: dict[str, str]) -> None:
    """Log any number of params (``log_batch`` takes at most 100 at a time)."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i: i + 90])
