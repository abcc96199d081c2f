"""The schema of a search-space file: its sections as frozen pydantic models, and :func:`spec_model`.

A file has these sections (``search_spaces/quickstart.yaml`` is a complete example):

``plugins``      extra modules to import for local plugin development (entry points load anyway)
``task``         the problem: one registered task and its fixed settings
``model``        the model's size and layout; each value is fixed, a list of choices, or a range
``space``        per block kind, the registered blocks to choose from and each one's parameter space
``training``     optimizer, schedule, precision, steps... (fixed, not searched)
``measure``      how latency and memory are measured
``objectives``   what the search optimizes, by metric name and direction
``constraints``  hard limits; architectures over ``max_params`` are never trained

The schema of ``task`` and ``space`` depends on which plugins are loaded, so :func:`spec_model` builds it
after discovery: one discriminated union per block kind, keyed on ``type``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from .. import registry
from ..declared import BlockConfig

__all__ = [
    "Spec",
    "SpecBase",
    "SpaceBase",
    "BlockSpace",
    "spec_model",
    "block_space_model",
    "IntRange",
    "FloatRange",
    "ModelSpace",
    "TrainingConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "DistillConfig",
    "MeasureConfig",
    "Objective",
    "Constraints",
    "SamplerConfig",
    "ResourcesConfig",
    "SearchConfig",
    "SAMPLERS",
    "MEASURED_METRICS",
    "BLOCK_KINDS",
    "teacher_files",
]

#: Block kinds chosen per layer or per model in ``space``.
BLOCK_KINDS = ("attention", "position", "norm", "ffn", "compression")

#: Metrics every trial measures, with their natural direction. Tasks add their quality metrics.
MEASURED_METRICS = {
    "latency_ms": "minimize",  # median inference forward time
    "latency_p90_ms": "minimize",
    "latency_ci_low_ms": "minimize",  # the 95% confidence interval of the median latency
    "latency_ci_high_ms": "minimize",
    "train_memory_mb": "minimize",  # peak memory of one training step (of the model to train, uncompressed)
    "infer_memory_mb": "minimize",  # peak memory of one inference forward
    "params": "minimize",
    "params_active": "minimize",  # parameters one token uses (less than params with mixture-of-experts)
    "flops_per_token": "minimize",  # forward FLOPs actually computed per token (routed experts only)
    "model_size_mb": "minimize",  # serialized weights after compression
}

#: ``search.sampler.type`` -> the class name in ``optuna.samplers``.
SAMPLERS = {
    "random": "RandomSampler",
    "tpe": "TPESampler",
    "nsga2": "NSGAIISampler",
    "nsga3": "NSGAIIISampler",
    "gp": "GPSampler",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(Strict):
    """An integer range, sampled uniformly (or log-uniformly) with ``step``."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "IntRange":
        _check_range(self.low, self.high, self.log, self.step)
        return self


class FloatRange(Strict):
    """A real range, sampled uniformly or log-uniformly, optionally on a grid of ``step``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "FloatRange":
        _check_range(self.low, self.high, self.log, self.step)
        return self


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
    if log and step not in (None, 1):
        raise ValueError("step and log cannot be combined")
    if step is not None and step <= 0:
        raise ValueError(f"step must be positive, got {step}")


def _searchable(annotation: Any) -> Any:
    """The space type of a parameter of type ``annotation``: a fixed value, a list of choices, or a range."""
    base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    options: list[Any] = [annotation, Annotated[list[annotation], Field(min_length=1)]]
    if base is int:
        options.append(IntRange)
    elif base is float:
        options.append(FloatRange)
    return Union[tuple(options)]


# --- fixed sections --------------------------------------------------------------------------------------
Placement = Literal["pre", "post", "sandwich"]


class ModelSpace(Strict):
    """Size and layout of the model. Each value: fixed, a list of choices, or a range ``{low, high}``."""

    d_model: _searchable(Annotated[int, Field(gt=0)]) = 64  # type: ignore[valid-type]
    n_layers: _searchable(Annotated[int, Field(gt=0)]) = 2  # type: ignore[valid-type]
    n_heads: _searchable(Annotated[int, Field(gt=0)]) = 4  # type: ignore[valid-type]
    norm_placement: _searchable(Placement) = "pre"  # type: ignore[valid-type]
    per_layer: bool = Field(False, description="choose attention/ffn/norm per layer (true) or once (false)")


class OptimizerConfig(Strict):
    type: Literal["adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)


class ScheduleConfig(Strict):
    type: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak (cosine)")


class DistillConfig(Strict):
    """Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network") from a trained
    teacher on the same task: the loss becomes ``(1 - alpha) * task loss + alpha * T^2 * KL(teacher_T || student_T)``
    over the positions that carry a target, with both distributions softened by the temperature T."""

    teacher: str = Field(description="a saved model: a folder holding architecture.json and weights.safetensors "
                         "(`nas export` writes one; or a Pareto-optimal trial's MLflow model, downloaded), or a "
                         "trial_N.safetensors file with its trial_N.json beside it (the search's weights folder); "
                         "relative to the current directory")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term (1 - alpha: the task loss)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of teacher and student")

    @field_validator("teacher")
    @classmethod
    def _exists(cls, teacher: str) -> str:
        teacher_files(teacher)
        return teacher


def teacher_files(teacher: str | Path) -> tuple[Path, Path]:
    """``(architecture json, safetensors weights)`` of a saved model; ValueError naming what is missing."""
    path = Path(teacher)
    if (path / "MLmodel").is_file():  # a trial's MLflow model, downloaded: the saved model is inside
        path = path / "artifacts" / "model"
    arch, weights = ((path / "architecture.json", path / "weights.safetensors") if path.is_dir()
                     else (path.with_suffix(".json"), path))
    missing = [str(p) for p in (arch, weights) if not p.is_file()]
    if missing:
        raise ValueError(f"teacher '{teacher}': missing {', '.join(missing)} (relative to {Path.cwd()})")
    return arch, weights


class TrainingConfig(Strict):
    steps: int = Field(200, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float | None = Field(1.0, gt=0)
    grad_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = Field(128, gt=0)
    log_every: int = Field(10, gt=0, description="steps between points of the logged training curve")
    workers: int = Field(1, ge=1, description="data-parallel workers for one trial (Ray Train, DDP)")
    distill: DistillConfig | None = Field(None, description="learn from a trained teacher's outputs too")


class MeasureConfig(Strict):
    batch_size: int = Field(1, gt=0, description="batch size of the latency and inference-memory runs")
    warmup: int = Field(3, ge=0)
    repeats: int = Field(15, gt=0)
    threads: int = Field(1, gt=0, description="CPU threads during latency runs (fixed and recorded)")
    train_batch_size: int | None = Field(None, gt=0, description="training-memory batch (default: training's)")


class Objective(Strict):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None  # default: the metric's natural direction


class Constraints(Strict):
    max_params: int | None = Field(None, gt=0)
    max_flops_per_token: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)
    max_train_memory_mb: float | None = Field(None, gt=0)
    max_infer_memory_mb: float | None = Field(None, gt=0)


class SamplerConfig(Strict):
    """An Optuna sampler and its constructor options (``seed`` comes from ``search.seed``)."""

    type: Literal["random", "tpe", "nsga2", "nsga3", "gp"] = "tpe"  # the keys of SAMPLERS
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the Optuna sampler")


class ResourcesConfig(Strict):
    """What one trial reserves on the Ray cluster."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0, description="a fraction shares one GPU between trials")
    memory_mb: int | None = Field(None, gt=0, description="address-space limit of a trial's process; over it, "
                                  "the trial fails as out of memory")


class EarlyStoppingConfig(Strict):
    """Multi-objective asynchronous successive halving on training steps (:mod:`nas.search.stopping`)."""

    enabled: bool | None = Field(None, description="stop hopeless trials at rungs; default (null): on when the "
                                 "search trains at least 8 trials on one worker each")
    min_fraction: float = Field(0.1, gt=0, lt=1, description="the first rung, as a fraction of training.steps")
    reduction_factor: int = Field(3, ge=2, description="eta: rungs grow by it, and 1/eta of a rung goes on")


class VerifyConfig(Strict):
    """Re-measuring the front alone at the end of a search."""

    enabled: bool = Field(True, description="re-measure the front's latency with nothing else running")
    repeats: int = Field(50, gt=0, description="timed forwards per verified trial")


class OneShotConfig(Strict):
    """``search.strategy: one_shot``: train one weight-sharing supernet, score subnets with its weights, retrain
    the best from scratch (:mod:`nas.supernet`, :mod:`nas.search.one_shot`)."""

    supernet_steps: int | None = Field(None, gt=0, description="supernet optimizer steps (three path passes each "
                                       "under the sandwich rule); default: training.steps")
    candidates: int = Field(64, gt=0, description="subnets the sampler proposes and scores with inherited weights")
    top_k: int = Field(4, gt=0, description="candidates retrained from scratch as ordinary trials, by "
                       "non-dominated rank; the final front is built from these only")
    calibration_batches: int = Field(0, ge=0, description="training batches forwarded (no gradients) before "
                                     "scoring a subnet, for blocks that keep running statistics")
    sandwich: bool = Field(True, description="every supernet step runs the largest, smallest and a random width "
                           "of one path (off: a single random path)")


class SearchConfig(Strict):
    strategy: Literal["standalone", "one_shot"] = Field(
        "standalone", description="standalone: every architecture is trained on its own; one_shot: one supernet "
        "screens the space, the top_k of search.one_shot are retrained")
    one_shot: OneShotConfig = OneShotConfig()
    n_trials: int = Field(16, gt=0, description="architectures to train (failed and early-stopped ones count; "
                          "infeasible ones and repeats of an architecture already trained do not); one_shot: "
                          "search.one_shot.top_k instead")
    concurrency: int = Field(2, gt=0, description="trials running at once")
    sampler: SamplerConfig = SamplerConfig()
    seed: int = 0
    resources: ResourcesConfig = ResourcesConfig()
    retries: int = Field(1, ge=0, description="re-runs of a trial whose worker process died")
    max_consecutive_failures: int = Field(10, gt=0, description="abort the search after this many failures in a row")
    address: str | None = Field(None, description="Ray cluster address (e.g. 'auto', 'ray://host:10001'); "
                                "default: start a local Ray")
    reference_point: dict[str, float] | None = Field(None, description="hypervolume reference, by metric; "
                                                     "default: derived from the first trials and recorded")
    dir: str = Field(".nas", description="where the study, the MLflow store and the artifacts live")
    save_weights: bool = Field(True, description="store the weights of Pareto-optimal trials in MLflow")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    verify: VerifyConfig = VerifyConfig()
    deduplicate: bool = Field(True, description="never train an architecture twice: a repeat reuses the result")
    max_consecutive_repeats: int = Field(100, gt=0, description="end the search when the sampler proposes only "
                                         "architectures already trained this many times in a row (space exhausted)")


class SpaceBase(Strict):
    """The ``space`` section: per block kind, the space entries to choose from. :func:`spec_model` makes the
    real model, whose entries are the registered blocks' space models."""

    if TYPE_CHECKING:  # the fields spec_model() adds, for the type checker
        attention: list[BlockSpace]
        position: list[BlockSpace]
        norm: list[BlockSpace]
        ffn: list[BlockSpace]
        compression: list[BlockSpace]


class SpecBase(Strict):
    """Fields of a search-space file that do not depend on plugins. See :func:`spec_model`."""

    if TYPE_CHECKING:  # the fields spec_model() adds, for the type checker
        task: BlockConfig
        space: SpaceBase

    name: str = Field("search", pattern=r"^[A-Za-z0-9_.-]+$")
    plugins: list[str] = Field(default_factory=list, description="extra plugin modules to import")
    model: ModelSpace = ModelSpace()
    training: TrainingConfig = TrainingConfig()
    measure: MeasureConfig = MeasureConfig()
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="accuracy"), Objective(metric="latency_ms")], min_length=1
    )
    constraints: Constraints = Constraints()
    search: SearchConfig = SearchConfig()


# --- plugin-dependent sections ------------------------------------------------------------------------
class BlockSpace(Strict):
    """Base of every block's space model: ``type`` names the block, each other field is its space."""

    type: str


def block_space_model(config: type[BlockConfig], title: str) -> type[BlockSpace]:
    """The space model of one block: each config field becomes fixed / list of choices / range."""
    fields: dict[str, Any] = {}
    for fname, finfo in config.model_fields.items():
        if fname == "type":
            fields[fname] = (finfo.annotation, finfo.default)
            continue
        args = (finfo.annotation, *finfo.metadata)  # the field's type with its constraints (gt=0, ...)
        annotation = Annotated[args] if finfo.metadata else finfo.annotation
        fields[fname] = (_searchable(annotation) | None, Field(None, description=finfo.description))
    return create_model(title, __base__=BlockSpace, __doc__=config.__doc__, **fields)


def _union(kind: str, space: bool) -> Any:
    models = [
        block_space_model(e.config, f"{kind}_{e.name}") if space
        else create_model(f"{kind}_{e.name}", __base__=e.config)  # a subclass, named for the JSON Schema
        for e in registry.entries(kind)
    ]
    if not models:
        raise registry.RegistryError(f"no {kind} blocks are registered; is the `nas-transformers` distribution "
                                     "installed?")
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]


_cache: dict[frozenset[Any], type[SpecBase]] = {}


def spec_model() -> type[SpecBase]:
    """The pydantic model of a search-space file for the blocks registered now."""
    key = frozenset((e.kind, e.name, e.cls) for e in registry.entries())  # a name freed by scratch() may return
    if key in _cache:
        return _cache[key]
    space_fields: dict[str, Any] = {}
    for kind in BLOCK_KINDS:
        union = _union(kind, space=True)
        default = registry.default(kind)  # the block registered with default=True
        space_fields[kind] = (
            Annotated[list[union], Field(min_length=1)],  # type: ignore[valid-type]
            Field(default_factory=lambda d=default: [{"type": d}], validate_default=True,
                  description=f"{kind} blocks to choose from (default: {default})"),
        )
    space = create_model("Space", __base__=SpaceBase, **space_fields)
    model = create_model(
        "SearchSpaceFile",
        __base__=SpecBase,
        task=(_union("task", space=False), Field(description="the problem to solve; fixed for a search")),
        space=(space, Field(default_factory=dict, validate_default=True)),
    )
    _cache[key] = model
    return model


Spec = SpecBase
"""A validated search-space file (an instance of :func:`spec_model`'s model)."""
