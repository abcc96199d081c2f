"""nas: plugin-based neural architecture search for efficient Transformers.

This module is the whole public API a plugin needs, and nothing else: the block contracts, the optional
hooks a block may implement, the registration decorator, and the helpers for a block's own search space.
Everything else lives in a module of its own (see the README's "Where things live"); :func:`load_model`, for
using what a search found, imports its machinery only when called.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from .blocks import (POSITION_MODES, AuxLoss, Batch, BlockConfig, Capabilities, Compression, Dims, Finetune,
                         InactiveParameters, PositionScheme, PrunableHeads, PrunableNeurons, ResetStats, Sharing, Stats,
                         Task)
    from .registry import load_plugins, register
    from .space import suggest_among, suggest_value

#: Where each name of the API lives. They are imported on first use (PEP 562), so that ``import nas`` (and the
#: ``nas`` command's ``--help``, ``--version``, ``show``) does not pay for torch: a plugin that uses
#: ``nas.BlockConfig`` imports only the torch-free :mod:`nas.declared`; one that uses ``nas.Task`` imports torch.
_LAZY = {
    **dict.fromkeys(("POSITION_MODES", "BlockConfig", "Capabilities", "Dims", "Sharing"), ".declared"),
    **dict.fromkeys(("AuxLoss", "Batch", "Compression", "Finetune", "InactiveParameters", "PositionScheme",
                     "PrunableHeads", "PrunableNeurons", "ResetStats", "Stats", "Task"), ".blocks"),
    **dict.fromkeys(("load_plugins", "register"), ".registry"),
    **dict.fromkeys(("suggest_among", "suggest_value"), ".space"),
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__version__ = "0.1.0"


def load_model(path: "str | Path", compressed: bool = True, device: "str | torch.device" = "cpu") -> "torch.nn.Module":
    """A model found by a search, ready to call: ``path`` is a folder from ``nas export NAME TRIAL DIR`` or a
    trial's MLflow model downloaded (``runs:/<id>/model``). Weights are read with safetensors only; pickles are
    refused. ``compressed``: re-apply the trial's compression, as it was measured. See :mod:`nas.saved`."""
    from .saved import load_model as load

    return load(path, compressed, device)


__all__ = [
    "POSITION_MODES",
    "AuxLoss",
    "Batch",
    "BlockConfig",
    "Capabilities",
    "Compression",
    "Dims",
    "Finetune",
    "InactiveParameters",
    "PositionScheme",
    "PrunableHeads",
    "PrunableNeurons",
    "ResetStats",
    "Sharing",
    "Stats",
    "Task",
    "load_model",
    "load_plugins",
    "register",
    "suggest_among",
    "suggest_value",
    "__version__",
]
