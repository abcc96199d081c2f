"""nas: plugin-based neural architecture search for efficient Transformers.

Where things live:

* ``nas.registry``  the (kind, name) registry of blocks and plugin discovery (entry points ``nas.plugins``)
* ``nas.blocks``    the contracts blocks implement: ``BlockConfig``, ``Capabilities``, ``Dims``, ``Task``...
* ``nas.spec``      the search-space YAML schema and its validation (``load_spec``)
* ``nas.space``     define-by-run sampling of an ``Architecture`` from a spec
* ``nas.model``     the Transformer assembled from built blocks, and its cost functions
* ``nas.train``     the trainer of one trial
* ``nas.measure``   latency and memory measurement
* ``nas.trial``     one trial end to end: build, train, evaluate, measure
* ``nas.testing``   the conformance kit: pytest tests every registered block must pass
* ``nas.cli``       the ``nas`` command
"""

from .blocks import Batch, BlockConfig, Capabilities, Compression, Dims, PositionScheme, Task
from .registry import load_plugins, register

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BlockConfig",
    "Capabilities",
    "Compression",
    "Dims",
    "PositionScheme",
    "Task",
    "load_plugins",
    "register",
    "__version__",
]
