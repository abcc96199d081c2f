"""The search-space file: its pydantic schema and :func:`load_spec`, which reports every problem at once.

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

import itertools
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from . import registry, yamlio
from .blocks import BlockConfig
from .registry import did_you_mean

__all__ = [
    "Spec",
    "SpecError",
    "Problem",
    "load_spec",
    "spec_model",
    "IntRange",
    "FloatRange",
    "MEASURED_METRICS",
    "BLOCK_KINDS",
]

#: Block kinds chosen per layer or per model in ``space``.
BLOCK_KINDS = ("attention", "position", "norm", "ffn", "compression")

#: Metrics every trial measures, with their natural direction. Tasks add their quality metrics.
MEASURED_METRICS = {
    "latency_ms": "minimize",  # median inference forward time
    "latency_p90_ms": "minimize",
    "train_memory_mb": "minimize",  # peak memory of one training step (of the model as trained, uncompressed)
    "infer_memory_mb": "minimize",  # peak memory of one inference forward
    "params": "minimize",
    "params_active": "minimize",  # parameters one token uses (less than params with mixture-of-experts)
    "flops_per_token": "minimize",  # forward FLOPs actually computed per token (routed experts only)
    "model_size_mb": "minimize",  # serialized weights after compression
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
    options: list[Any] = [annotation, Annotated[list[annotation], Field(min_length=1)]]  # type: ignore[valid-type]
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
                         "(a Pareto-optimal trial's MLflow `model/` artifact), or a trial_N.safetensors file with "
                         "its trial_N.json beside it (the search's weights folder); relative to the current directory")
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

    type: Literal["random", "tpe", "nsga2", "nsga3", "gp"] = "tpe"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the Optuna sampler")


class ResourcesConfig(Strict):
    """What one trial reserves on the Ray cluster."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0, description="a fraction shares one GPU between trials")
    memory_mb: int | None = Field(None, gt=0, description="address-space limit of a trial's process; over it, "
                                  "the trial fails as out of memory")


class SearchConfig(Strict):
    n_trials: int = Field(16, gt=0, description="trials to finish (failed ones count; infeasible ones do not)")
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


class SpecBase(Strict):
    """Fields of a search-space file that do not depend on plugins. See :func:`spec_model`."""

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
def block_space_model(config: type[BlockConfig], title: str) -> type[BaseModel]:
    """The space model of one block: each config field becomes fixed / list of choices / range."""
    fields: dict[str, Any] = {}
    for fname, finfo in config.model_fields.items():
        if fname == "type":
            fields[fname] = (finfo.annotation, finfo.default)
            continue
        annotation = Annotated[(finfo.annotation, *finfo.metadata)] if finfo.metadata else finfo.annotation
        fields[fname] = (_searchable(annotation) | None, Field(None, description=finfo.description))
    return create_model(title, __config__=ConfigDict(extra="forbid", frozen=True, title=title), __doc__=config.__doc__,
                        **fields)


def _union(kind: str, space: bool) -> Any:
    models = [
        block_space_model(e.config, f"{kind}_{e.name}") if space
        else create_model(f"{kind}_{e.name}", __base__=e.config)  # a subclass, named for the JSON Schema
        for e in registry.entries(kind)
    ]
    if not models:
        raise registry.RegistryError(f"no {kind} blocks are registered; is the `nas` package installed?")
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]


_DEFAULT_BLOCKS = {"attention": "softmax", "position": "rope", "norm": "layernorm", "ffn": "mlp", "compression": "none"}
_cache: dict[frozenset, type[SpecBase]] = {}


def spec_model() -> type[SpecBase]:
    """The pydantic model of a search-space file for the blocks registered now."""
    key = frozenset((e.kind, e.name, e.cls) for e in registry.entries())  # a name freed by scratch() may return
    if key in _cache:
        return _cache[key]
    space_fields: dict[str, Any] = {}
    for kind in BLOCK_KINDS:
        union = _union(kind, space=True)
        default = _DEFAULT_BLOCKS[kind]
        space_fields[kind] = (
            Annotated[list[union], Field(min_length=1)],  # type: ignore[valid-type]
            Field(default_factory=lambda d=default: [{"type": d}], validate_default=True,
                  description=f"{kind} blocks to choose from (default: {default})"),
        )
    space = create_model("Space", __config__=ConfigDict(extra="forbid", frozen=True), **space_fields)
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


# --- errors ---------------------------------------------------------------------------------------------
@dataclass
class Problem:
    path: tuple[str | int, ...]
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        dotted = ".".join(str(p) for p in self.path) or "(top level)"
        return f"{where}: {dotted}: {self.message}"


class SpecError(ValueError):
    """A search-space file with problems; ``problems`` lists every one found, each with its line."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.format(source) for p in problems))


@dataclass
class LoadedSpec:
    spec: Any
    locations: yamlio.Locations
    warnings: list[Problem] = field(default_factory=list)
    text: str = ""


def load_spec(path: str | Path, device: str | None = None) -> LoadedSpec:
    """Read, validate and check one search-space file; raise :class:`SpecError` listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(source, [Problem((), f"cannot read file: {exc.strerror}")]) from None
    try:
        data, locs = yamlio.loads(text, source)
    except yamlio.YamlError as exc:
        raise SpecError(source, [Problem((), str(exc), exc.line)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, [Problem((), f"expected a mapping of sections, got {type(data).__name__}", 1)])

    plugins = data.get("plugins") or []
    if isinstance(plugins, list):
        for i, module in enumerate(plugins):
            try:
                registry.load_plugins([str(module)])
            except (registry.PluginError, registry.RegistryError) as exc:
                raise SpecError(source, [Problem(("plugins", i), str(exc), locs.line_of(("plugins", i)))]) from None
    registry.load_plugins()

    try:
        spec = spec_model().model_validate(data)
    except ValidationError as exc:
        problems = _problems_from_validation(exc, data, locs)
        problems += _partial_checks(data, {p.path for p in problems})
        for p in problems:
            p.line = p.line or locs.line_of(p.path)
        raise SpecError(source, sorted(problems, key=lambda p: p.line or 0)) from None

    problems, warnings = check_semantics(spec, device)
    for p in problems + warnings:
        p.line = locs.line_of(p.path)
    if problems:
        raise SpecError(source, problems)
    return LoadedSpec(spec, locs, warnings, text)


def _data_path(loc: tuple, data: Any) -> tuple[str | int, ...]:
    """Map a pydantic error location onto the path in the data, skipping union-member tags.

    Pydantic puts the chosen union member into the location (``task.mqar.seq_len``, ``expansion.IntRange``,
    ``constrained-int``); those parts are not keys of the file. Field names in our models are lower-case
    identifiers, so anything else that is not a key of the data is a tag.
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part != node.get("type") and _is_field_name(part):
            path.append(part)  # a missing key: name it even though it is not in the data
            node = None
    return tuple(path)


def _is_field_name(part: str) -> bool:
    return part.isidentifier() and part.islower() and part not in {"int", "float", "str", "bool", "list", "dict"}


_TYPE_MISMATCH = {"int_type", "int_parsing", "float_type", "float_parsing", "list_type", "model_type", "dict_type",
                  "string_type", "bool_type", "bool_parsing", "model_attributes_type", "is_instance_of"}


def _problems_from_validation(exc: ValidationError, data: Any, locs: yamlio.Locations) -> list[Problem]:
    by_path: dict[tuple, list[tuple[str, str]]] = {}
    for err in exc.errors(include_url=False):
        path = _data_path(err["loc"], data)
        entry = (err["type"], _message(err, path, data))
        if entry not in by_path.setdefault(path, []):
            by_path[path].append(entry)
    problems = []
    for path, errs in by_path.items():
        # One value that matched no member of a union gets one error per member. The members whose shape it
        # has (a mapping for a range, a list for choices) explain it best; the rest only say "wrong type".
        relevant = [m for t, m in errs if t not in _TYPE_MISMATCH] or [m for _, m in errs]
        msg = relevant[0] if len(relevant) == 1 else "invalid value; expected one of: " + " | ".join(relevant)
        problems.append(Problem(path, msg, locs.line_of(path)))
    return problems


def _message(err: dict, path: tuple, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        model = _model_at(spec_model(), path[:-1], data)
        valid = [f for f in model.model_fields if f != "type"] if model else []
        hint = f"{did_you_mean(key, valid)} valid: {', '.join(valid)}" if valid else ""
        return f"unknown key '{key}'{hint}"
    # A `type` that names no registered block (a wrong value of any other Literal field is not that).
    names_a_block = bool(path) and (path[0] == "task" or (path[0] == "space" and len(path) >= 2))
    bad_type = kind == "union_tag_invalid" or (kind == "literal_error" and path[-1:] == ("type",))
    if bad_type and names_a_block:
        block_kind = str(path[1]) if path[0] == "space" else "task"
        tag = err["input"] if kind == "literal_error" else err.get("ctx", {}).get("tag")
        valid = registry.names(block_kind)
        return f"unknown {block_kind} '{tag}'{did_you_mean(str(tag), valid)} registered: {', '.join(valid)}"
    if kind == "union_tag_not_found":
        block_kind = str(path[1]) if path and path[0] == "space" and len(path) > 1 else "task"
        return f"missing 'type'; registered {block_kind} types: {', '.join(registry.names(block_kind))}"
    return err["msg"]


def _model_at(model: Any, path: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``path`` in ``data``, if one does."""
    tp, node = model, data
    for part in path:
        tp = _unwrap(tp, node)
        if isinstance(part, int):
            if get_origin(tp) is not list or not isinstance(node, list) or not 0 <= part < len(node):
                return None
            tp, node = get_args(tp)[0], node[part]
        else:
            if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
                return None
            tp, node = tp.model_fields[part].annotation, node.get(part) if isinstance(node, dict) else None
    tp = _unwrap(tp, node)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip ``Annotated`` and pick the union member that ``node`` (by its ``type`` tag) belongs to."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
            tp = _pick_member(members, node)
        else:
            return tp


def _pick_member(members: list[type[BaseModel]], node: Any) -> Any:
    tag = node.get("type") if isinstance(node, dict) else None
    for m in members:
        field_type = m.model_fields.get("type")
        if field_type is not None and get_args(field_type.annotation) == (tag,):
            return m
    return members[0] if len(members) == 1 else None


# --- checks that span fields --------------------------------------------------------------------------
def values(space_value: Any) -> list[Any] | None:
    """All values a space entry can take, or None for a continuous range."""
    if isinstance(space_value, list):
        return space_value
    if isinstance(space_value, IntRange) and not space_value.log:
        return list(range(space_value.low, space_value.high + 1, space_value.step))
    if isinstance(space_value, (IntRange, FloatRange)):
        return None
    return [space_value]


def _partial_checks(data: dict, reported: set[tuple]) -> list[Problem]:
    """Cross-field checks of the sections that did validate, so one run reports as much as possible."""
    problems: list[Problem] = []
    model = data.get("model") or {}
    if isinstance(model, dict):  # check the sizes even when other keys of the section are wrong
        try:
            sizes = {k: model[k] for k in ("d_model", "n_heads") if k in model}
            problems += check_model(ModelSpace.model_validate(sizes))
        except ValidationError:
            pass
    task = data.get("task")
    if isinstance(task, dict) and task.get("type") in registry.names("task"):
        try:
            objectives = [Objective.model_validate(o) for o in data.get("objectives") or []]
        except (ValidationError, TypeError):
            return problems
        problems += check_objectives(objectives, registry.get("task", task["type"]).cls.metrics)
    return [p for p in problems if p.path not in reported]


def check_model(model: ModelSpace) -> list[Problem]:
    """Every d_model the space can produce must split evenly into every head count it can produce."""
    d_models, heads = values(model.d_model), values(model.n_heads)
    if d_models is None or heads is None:
        return [Problem(("model", "d_model" if d_models is None else "n_heads"),
                        "use a list of choices or a linear integer range, so every d_model/n_heads pair can be "
                        "checked for divisibility")]
    bad = [(d, h) for d, h in itertools.product(d_models, heads) if d % h]
    if not bad:
        return []
    pairs = ", ".join(f"{d}/{h}" for d, h in bad[:6]) + (" ..." if len(bad) > 6 else "")
    return [Problem(("model", "n_heads"),
                    f"d_model must be divisible by n_heads; impossible pairs (d_model/n_heads): {pairs}")]


def check_objectives(objectives: list[Objective], task_metrics: dict[str, str]) -> list[Problem]:
    """Objectives must name metrics that exist, once each."""
    available = {**MEASURED_METRICS, **task_metrics}
    problems, seen = [], set()
    for i, obj in enumerate(objectives):
        if obj.metric not in available:
            problems.append(Problem(("objectives", i, "metric"),
                                    f"unknown metric '{obj.metric}'{did_you_mean(obj.metric, available)} "
                                    f"available: {', '.join(available)}"))
        elif obj.metric in seen:
            problems.append(Problem(("objectives", i, "metric"), f"metric '{obj.metric}' is listed twice"))
        seen.add(obj.metric)
    return problems


def check_semantics(spec: Any, device: str | None = None) -> tuple[list[Problem], list[Problem]]:
    """Checks across fields that the schema cannot express. Returns (errors, warnings)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    task_entry = registry.get("task", spec.task.type)

    errors += check_model(spec.model)

    # Blocks that cannot run on this task or device are filtered; if none is left, that is an error.
    cuda = _cuda_available() if device is None else device == "cuda"
    usable, skipped = usable_blocks(spec, "cuda" if cuda else "cpu")
    warnings.extend(skipped)
    for kind in BLOCK_KINDS:
        if not usable[kind]:
            errors.append(Problem(("space", kind), f"no usable {kind} block left (see the warnings above)"))
        seen_types: set[str] = set()
        for i, entry in enumerate(getattr(spec.space, kind)):
            if entry.type in seen_types:
                errors.append(Problem(("space", kind, i, "type"),
                                      f"{kind} '{entry.type}' is listed twice; give it one entry with lists of choices"))
            seen_types.add(entry.type)

    # Each position scheme must be takeable by at least one attention block.
    for i, pos in enumerate(spec.space.position):
        mode = registry.get("position", pos.type).capabilities.position_mode
        takers = [a.type for a in usable["attention"] if mode in registry.get("attention", a.type).capabilities.positions]
        if usable["attention"] and not takers:
            errors.append(Problem(("space", "position", i, "type"),
                                  f"position '{pos.type}' acts as '{mode}', which none of the attention choices "
                                  f"({', '.join(a.type for a in usable['attention'])}) can take"))

    errors += check_objectives(spec.objectives, task_entry.cls.metrics)

    errors += check_search(spec)
    if spec.training.device == "cuda" and not cuda:
        errors.append(Problem(("training", "device"), "device is 'cuda' but no CUDA GPU is available"))
    if spec.training.precision == "fp16" and not cuda and spec.training.device != "cuda":
        warnings.append(Problem(("training", "precision"), "fp16 on CPU runs without a GradScaler; bf16 is "
                                "the better choice there"))
    if spec.training.grad_checkpointing and spec.training.compile:
        warnings.append(Problem(("training",), "grad_checkpointing with compile: compile time grows"))
    if math.isfinite(spec.training.optimizer.lr) is False:
        errors.append(Problem(("training", "optimizer", "lr"), "lr must be finite"))
    return errors, warnings


def usable_blocks(spec: Any, device: str | None = None) -> tuple[dict[str, list[Any]], list[Problem]]:
    """The space entries of each block kind that can run on this task and device, and why others cannot."""
    causal = registry.get("task", spec.task.type).cls.causal
    cuda = _cuda_available() if device is None else device == "cuda"
    usable: dict[str, list[Any]] = {}
    skipped: list[Problem] = []
    for kind in BLOCK_KINDS:
        usable[kind] = []
        for i, entry in enumerate(getattr(spec.space, kind)):
            caps = registry.get(kind, entry.type).capabilities
            reason = None
            if kind == "attention" and causal and not caps.causal:
                reason = f"{entry.type} cannot run causally, and task '{spec.task.type}' is causal"
            elif kind == "attention" and not causal and not caps.bidirectional:
                reason = f"{entry.type} is causal-only, and task '{spec.task.type}' is not causal"
            elif caps.needs_gpu and not cuda:
                reason = f"{entry.type} needs a CUDA GPU and none is available"
            if reason:
                skipped.append(Problem(("space", kind, i, "type"), f"skipped: {reason}"))
            else:
                usable[kind].append(entry)
    return usable, skipped


def check_search(spec: Any) -> list[Problem]:
    """The sampler must accept its options; a reference point must name each objective."""
    problems = []
    try:
        from .search import make_sampler

        make_sampler(spec)
    except TypeError as exc:
        problems.append(Problem(("search", "sampler", "options"), f"not accepted by the {spec.search.sampler.type} "
                                f"sampler: {exc}"))
    ref = spec.search.reference_point
    if ref is not None:
        metrics = [o.metric for o in spec.objectives]
        if set(ref) != set(metrics):
            problems.append(Problem(("search", "reference_point"),
                                    f"needs exactly one value per objective ({', '.join(metrics)}); got "
                                    f"{', '.join(ref) or 'none'}"))
    return problems


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def objective_directions(spec: Any) -> list[tuple[str, str]]:
    """``[(metric, direction)]`` with defaults filled from the metric's natural direction."""
    task_metrics = registry.get("task", spec.task.type).cls.metrics
    natural = {**MEASURED_METRICS, **task_metrics}
    return [(o.metric, o.direction or natural[o.metric]) for o in spec.objectives]
