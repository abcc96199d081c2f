"""nas: plugin-based neural architecture search for efficient Transformers.

This module is the whole public API a plugin needs, and nothing else: the block contracts, the optional
hooks a block may implement, the registration decorator, and the helpers for a block's own search space.
Everything else lives in a module of its own (see the README's "Where things live").
"""

from .blocks import (POSITION_MODES, AuxLoss, Batch, BlockConfig, Capabilities, Compression, Dims, Finetune,
                     InactiveParameters, PositionScheme, PrunableHeads, PrunableNeurons, ResetStats, Stats, Task)
from .registry import load_plugins, register
from .space import suggest_among, suggest_value

__version__ = "0.1.0"

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
    "Stats",
    "Task",
    "load_plugins",
    "register",
    "suggest_among",
    "suggest_value",
    "__version__",
]
