"""The search-space file: YAML reading with locations, the pydantic schema, checks, and :func:`load_spec`.

* :mod:`nas.spec.yamlio`  safe YAML 1.2 reading that remembers the line of every value
* :mod:`nas.spec.schema`  the sections as frozen pydantic models; :func:`spec_model` adds the plugin blocks
* :mod:`nas.spec.errors`  :class:`Problem` / :class:`SpecError`: every problem with its YAML path and line
* :mod:`nas.spec.checks`  checks across fields (divisibility, usable blocks, objectives, sampler options)
* :mod:`nas.spec.sampler` the Optuna sampler the spec names (:func:`make_sampler`)
* :mod:`nas.spec.load`    :func:`load_spec`, which runs all of the above and reports every problem at once

It knows the registry and the block contracts, and nothing of sampling, models, trials or the search.
"""

from .checks import check_semantics, objective_directions, usable_blocks, values
from .errors import Problem, SpecError
from .load import LoadedSpec, load_spec, space_plugins, spec_from_data
from .sampler import make_sampler
from .schema import (BLOCK_KINDS, MEASURED_METRICS, SAMPLERS, BlockSpace, Constraints, DistillConfig, FloatRange,
                     IntRange, MeasureConfig, ModelSpace, Objective, OneShotConfig, OptimizerConfig, ResourcesConfig,
                     SamplerConfig, ScheduleConfig, SearchConfig, SpaceBase, Spec, SpecBase, TrainingConfig,
                     block_space_model, spec_model, teacher_files)

__all__ = [
    "BLOCK_KINDS", "MEASURED_METRICS", "SAMPLERS", "BlockSpace", "Constraints", "DistillConfig", "FloatRange",
    "IntRange", "LoadedSpec", "MeasureConfig", "ModelSpace", "Objective", "OneShotConfig", "OptimizerConfig",
    "Problem", "ResourcesConfig", "SamplerConfig", "ScheduleConfig", "SearchConfig", "Spec", "SpaceBase", "SpecBase",
    "SpecError", "TrainingConfig", "block_space_model", "check_semantics", "load_spec", "objective_directions",
    "space_plugins", "spec_from_data", "spec_model", "make_sampler", "teacher_files", "usable_blocks", "values",
]
