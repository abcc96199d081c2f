"""A saved model: a folder that loads without the search that found it, and holds no pickle.

    weights.safetensors   the trained weights (before compression: compression is re-applied when loading)
    architecture.json     the resolved architecture: every block's full config
    task.json             the task's config: what the model reads and predicts (vocabulary, sequence length)
    space.yaml            the search space it came from (provenance; not needed to load)

The search writes one into the MLflow model of every Pareto-optimal trial (:mod:`nas.mlflow_model`), and
``nas export`` writes one with a README. :func:`load_model` (``nas.load_model``) reads either, a downloaded MLflow
model folder, or a search's ``trial_N.safetensors`` with its ``trial_N.json`` (given the task). Weights are read
with safetensors only: a pickle (``torch.save``, ``.pt``, ``.bin``) is refused, since loading one runs code.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import registry
from .architecture import Architecture, block_config
from .blocks import BlockConfig, Compression, Task
from .model import build_model

__all__ = ["SavedModel", "WEIGHTS", "ARCHITECTURE", "TASK", "SPACE", "find_saved", "load_model", "load_saved",
           "write_saved", "saved_task", "check_safetensors"]

WEIGHTS, ARCHITECTURE, TASK, SPACE = "weights.safetensors", "architecture.json", "task.json", "space.yaml"
_PICKLES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar")


@dataclass(frozen=True)
class SavedModel:
    """A loaded saved model: the module (in eval mode), its architecture and the task it reads."""

    model: nn.Module
    architecture: Architecture
    task: Task


def write_saved(folder: Path, weights: bytes, architecture_json: str, task: BlockConfig | dict[str, Any],
                space_yaml: str | None = None) -> Path:
    """Lay out a saved model in ``folder`` (created if needed); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WEIGHTS).write_bytes(weights)
    (folder / ARCHITECTURE).write_text(architecture_json)
    data = task.model_dump(mode="json") if isinstance(task, BlockConfig) else task
    (folder / TASK).write_text(json.dumps(data, indent=2))
    if space_yaml is not None:
        (folder / SPACE).write_text(space_yaml)
    return folder


def find_saved(path: str | Path) -> Path:
    """The folder holding the saved model at ``path``: the folder itself, or inside a downloaded MLflow model
    (``artifacts/model``). ValueError naming what is missing, or refusing a pickle."""
    path = Path(path)
    if path.suffix in _PICKLES:
        raise ValueError(f"{path}: refusing a pickle file (loading one runs code); nas reads safetensors weights "
                         "with their architecture.json: a folder from `nas export`, or an MLflow model of a trial")
    for folder in (path, path / "artifacts" / "model"):
        if (folder / WEIGHTS).is_file() and (folder / ARCHITECTURE).is_file():
            return folder
    pickles = sorted(p.name for p in path.glob("*") if p.suffix in _PICKLES) if path.is_dir() else []
    if pickles:
        raise ValueError(f"{path}: holds {', '.join(pickles)} but no {WEIGHTS}; nas refuses pickled weights "
                         "(loading one runs code)")
    raise ValueError(f"{path}: not a saved model (expected {WEIGHTS} and {ARCHITECTURE} in it, or an MLflow "
                     f"model folder with artifacts/model/)")


def check_safetensors(path: Path) -> None:
    """Refuse a weights file that is not safetensors (a pickle renamed, a zip from ``torch.save``)."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        kind = "a pickle" if head[:1] == b"\x80" else "a torch.save zip" if head[:2] == b"PK" else "not safetensors"
        raise ValueError(f"{path}: {kind}; nas loads safetensors weights only (loading a pickle runs code)")


def saved_task(config: dict[str, Any]) -> Task:
    """The task a saved model reads, from its config. Built without validating the config: only its shapes
    (vocabulary, sequence length, outputs) are needed, and the data it was trained on (a text task's files)
    need not exist where the model is loaded."""
    built: Task = registry.build("task", registry.get("task", config["type"]).config.model_construct(**config))
    return built


def load_saved(path: str | Path, compressed: bool = True, task: Task | None = None,
               device: str | torch.device = "cpu") -> SavedModel:
    """Load the saved model at ``path`` (see :func:`find_saved`; or a ``trial_N.safetensors`` file with its
    ``trial_N.json`` beside it, given ``task``). ``compressed``: re-apply the architecture's compression, as
    the trial measured it; its fine-tuning steps, if any, are not repeated (a warning says so)."""
    from safetensors.torch import load_model as load_weights

    registry.load_plugins()
    path = Path(path)
    if path.suffix == ".safetensors":
        weights, arch_file, task_file = path, path.with_suffix(".json"), path.with_name(TASK)
    else:
        folder = find_saved(path)
        weights, arch_file, task_file = folder / WEIGHTS, folder / ARCHITECTURE, folder / TASK
    check_safetensors(weights)
    arch = Architecture.model_validate_json(arch_file.read_text())
    if task is None:
        if not task_file.is_file():
            raise ValueError(f"{path}: no {TASK} beside the weights; pass the task (or use `nas export`)")
        task = saved_task(json.loads(task_file.read_text()))
    model: nn.Module = build_model(arch, task)
    load_weights(model, str(weights))
    model.eval()
    if compressed and arch.compressed:
        compressor: Compression = registry.build("compression", block_config("compression", arch.compression))

        def no_finetune(module: nn.Module, steps: int) -> None:
            warnings.warn(f"{arch.compression_label()}: its {steps} fine-tuning steps are not repeated when "
                          "loading; outputs may differ slightly from the trial's", stacklevel=2)

        model = compressor.apply(model, no_finetune)
        model.eval()
    return SavedModel(model.to(device), arch, task)


def load_model(path: str | Path, compressed: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """The model saved at ``path`` (a ``nas export`` folder, or a trial's MLflow model downloaded), in eval
    mode, ready to call on a batch of the task's inputs: token ids ``(B, T)`` for a text or recall task. Refuses
    pickles. See :func:`load_saved`."""
    return load_saved(path, compressed, device=device).model
