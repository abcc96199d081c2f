"""The one-shot supernet: one set of weights for every architecture of a search space (HAT, AutoFormer, SPOS).

Widths and depth share weights by slicing. The supernet holds, for each place of the model (``layers.3.ffn``,
``position``, ``embedding``, ...) and each weight *family* a block declares (:class:`~nas.blocks.Sharing`), one
widest copy of every parameter; an architecture (a *path*) takes the front slice of each, as its blocks'
``Sharing`` layouts say (query heads, packed query/key/value heads, plain widths). Layer i of a path uses the
supernet's layer i, so a shallower path uses the first layers. Each block choice of a kind has weights of its
own, except that blocks of one family share their parameters of the same name (softmax, sliding-window,
block-sparse and linear attention share ``qkv`` and ``out``). A block that declares no ``Sharing`` still works:
the supernet keeps separate full-width weights for each of its configs and sizes.

A path runs as the ordinary model of its architecture (:func:`nas.model.build_model`, built once per
architecture under a seed derived from it, so buffers such as random features are the same every time),
called through ``torch.func.functional_call`` with the sliced supernet tensors in place of its own: the
gradient of a path step lands on the shared slices. :meth:`Supernet.extract` builds the same model and copies
the slices in, so an extracted subnet computes what the path computed (:func:`nas.testing.check_supernet_slicing`).

Training (:func:`train_supernet`) samples one uniform single path per step, its block types uniformly, and runs
it at three widths (the sandwich rule of BigNAS: the largest, the smallest and a random choice of every
numeric setting), averaging their gradients into one optimizer step. :func:`inherited_scores` trains one
supernet and scores architectures with inherited weights.

Not done here: in-place distillation from the largest path, and data-parallel supernet training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import registry
from .architecture import Architecture
from .blocks import Dims, Sharing, Task, aux_loss, capabilities_of
from .model import Transformer, build_model, build_task, no_position
from .runtime import autocast, loss_fn, pick_device
from .space import sample_architecture
from .spec import FloatRange, IntRange, Spec, usable_blocks, values
from .train import NonFiniteLoss, lr_factor

__all__ = ["Supernet", "PathSlice", "SupernetTraining", "PathSuggest", "sample_path", "sandwich_paths",
           "train_supernet", "inherited_metrics", "inherited_scores", "calibrate", "cut", "WEIGHTS", "STATE"]

WEIGHTS = "supernet.safetensors"  # the supernet's tensors, in a search folder
STATE = "supernet.json"  # what trained them (steps, passes, seed), beside them

#: The family of the parts the model itself owns (the task's embedding and the output head): plain widths.
MODEL_FAMILY = "model"
#: At most this many corner configs of one block are built to find its widest parameters.
MAX_CORNERS = 256


# --- slicing --------------------------------------------------------------------------------------------
def cut(full: torch.Tensor, shape: tuple[int, ...], layout: tuple[str, ...], n_heads: int, head_dim: int,
        max_heads: int, max_head_dim: int) -> torch.Tensor:
    """The slice of a widest parameter ``full`` that a block of ``n_heads`` heads of ``head_dim`` takes, of the
    block's own ``shape``, axis by axis as ``layout`` says (see :data:`nas.blocks.SLICE_LAYOUTS`). The widest
    copy's head axes hold ``max_heads`` heads of ``max_head_dim``. A view where the layout allows one (front and
    heads), a copy for packed query/key/value heads; the gradient flows back to ``full`` either way."""
    out = full
    H, D, Hm, Dm = n_heads, head_dim, max_heads, max_head_dim
    for axis, (how, n) in enumerate(zip(layout, shape)):
        have = out.shape[axis]
        if how == "front":
            if n > have:
                raise ValueError(f"axis {axis}: the block needs {n}, the supernet's widest copy has {have}")
            out = out.narrow(axis, 0, n)
        elif how == "heads":
            if n != H * D or have != Hm * Dm or H > Hm or D > Dm:
                raise ValueError(f"axis {axis}: {n} is not {H} heads of {D} within {Hm} heads of {Dm}")
            out = out.unflatten(axis, (Hm, Dm)).narrow(axis, 0, H).narrow(axis + 1, 0, D).flatten(axis, axis + 1)
        elif how == "qkv":
            G2 = n // D - H if D and n % D == 0 else -1
            if G2 <= 0 or G2 % 2 or G2 // 2 > Hm or H > Hm or D > Dm or have != 3 * Hm * Dm:
                raise ValueError(f"axis {axis}: {n} is not [q {H}x{D} | k Gx{D} | v Gx{D}] within 3 x {Hm} heads "
                                 f"of {Dm}")
            parts = out.unflatten(axis, (3, Hm, Dm))
            heads = (H, G2 // 2, G2 // 2)
            out = torch.cat([parts.select(axis, i).narrow(axis, 0, h).narrow(axis + 1, 0, D).flatten(axis, axis + 1)
                             for i, h in enumerate(heads)], dim=axis)
        else:
            raise ValueError(f"unknown slice layout '{how}'")
    return out


def _corners(space: Any) -> list[Any]:
    """The values of a space entry worth building to find the widest block: every listed value, a range's
    two ends."""
    listed = values(space)
    if listed is not None:
        return list(listed)
    assert isinstance(space, (IntRange, FloatRange))
    return [space.low, space.high]


def _hash_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).digest()[:4], "little")


# --- sampling paths -------------------------------------------------------------------------------------
class PathSuggest:
    """A :class:`nas.space.Suggest` that draws one path: every non-numeric choice (block types, placement) by a
    random stream per parameter name, so the three widths of one sandwich step share their blocks; every numeric
    setting the ``largest``, the ``smallest`` or a ``random`` value of its space."""

    def __init__(self, seed: int, widths: str = "random"):
        if widths not in ("largest", "smallest", "random"):
            raise ValueError(f"widths must be largest, smallest or random, not '{widths}'")
        self.seed, self.widths = seed, widths

    def _rng(self, name: str) -> random.Random:
        return random.Random(_hash_seed(self.seed, name))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
        if numeric and self.widths == "largest":
            return max(choices)
        if numeric and self.widths == "smallest":
            return min(choices)
        return self._rng(name).choice(choices)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if self.widths != "random":
            return high - (high - low) % step if self.widths == "largest" else low
        if log:
            return int(round(math.exp(self._rng(name).uniform(math.log(low), math.log(high)))))
        return low + step * self._rng(name).randrange((high - low) // step + 1)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        if self.widths != "random":
            return high if self.widths == "largest" else low
        rng = self._rng(name)
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
        return low + step * round((value - low) / step) if step else value


def sample_path(spec: Spec, seed: int, widths: str = "random") -> Architecture:
    """One path of the spec's space (see :class:`PathSuggest`)."""
    return sample_architecture(spec, PathSuggest(seed, widths))


def sandwich_paths(spec: Spec, seed: int, sandwich: bool = True) -> list[Architecture]:
    """The paths of one training step: the same blocks at the largest, smallest and a random width (distinct
    ones only), or a single random path without the sandwich rule."""
    if not sandwich:
        return [sample_path(spec, seed)]
    paths: list[Architecture] = []
    for widths in ("largest", "smallest", "random"):
        arch = sample_path(spec, seed, widths)
        if arch not in paths:
            paths.append(arch)
    return paths


# --- the supernet ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Place:
    """A block of a built model: where it is, its kind and config (None for the parts the model owns)."""

    path: str
    kind: str | None
    config: dict[str, Any] | None


def _places(arch: Architecture) -> list[_Place]:
    """The blocks of ``build_model(arch)``, by module path (the layout of :class:`nas.model.Transformer`)."""
    places = [_Place("embedding", None, None), _Place("head", None, None),
              _Place("position", "position", arch.position)]
    for i, layer in enumerate(arch.layers):
        places += [_Place(f"layers.{i}.attention", "attention", layer.attention),
                   _Place(f"layers.{i}.ffn", "ffn", layer.ffn)]
        norms = ["norm_attn", "norm_ffn"] + (["norm_attn_out", "norm_ffn_out"] if arch.norm_placement == "sandwich"
                                             else [])
        places += [_Place(f"layers.{i}.{n}", "norm", layer.norm) for n in norms]
    if arch.norm_placement != "post":
        places.append(_Place("final_norm", "norm", arch.layers[-1].norm))
    return places


@dataclass(frozen=True)
class PathSlice:
    """One parameter of a path's model: its name there, the supernet tensor it is cut from and how (None: the
    tensor itself, a block without ``Sharing``)."""

    name: str
    slot: str
    layout: tuple[str, ...] | None
    shape: tuple[int, ...]
    n_heads: int
    head_dim: int


class Supernet(nn.Module):
    """The shared weights of every path of a spec's space, and the two things done with them: run a path
    (:meth:`forward`) and build a path's standalone model (:meth:`extract`).

    The widest copies are created on first use (a block config or size never seen before creates its
    weights, initialised from the statistics of the block's own initialisation, under a seed derived from the
    slot's name), so the parameter set grows while training: :meth:`take_new` hands the new ones to the
    optimizer.
    """

    def __init__(self, spec: Spec, task: Task | None = None, seed: int = 0, device: str | torch.device = "cpu"):
        super().__init__()
        self.spec, self.task, self.seed = spec, task or build_task(spec), seed
        self.device = torch.device(device)
        self.usable = usable_blocks(spec, "cuda" if self.device.type == "cuda" else "cpu")[0]
        m = spec.model
        sizes = [(d, h) for d in _corners(m.d_model) for h in _corners(m.n_heads) if d % h == 0]
        if not sizes:
            raise ValueError("no d_model of the space is divisible by one of its n_heads")
        self.max_d = max(d for d, _ in sizes)
        self.max_heads = max(h for _, h in sizes)
        self.max_head_dim = max(d // h for d, h in sizes)
        self.max_layers = max(_corners(m.n_layers))
        self._sizes = sizes
        self.store = nn.ParameterDict()
        self._widest: dict[tuple[str | None, str], dict[str, tuple[int, ...]]] = {}
        self._built: OrderedDict[str, Transformer] = OrderedDict()
        self._new: list[nn.Parameter] = []

    # -- building a path's model -----------------------------------------------------------------------
    def build(self, arch: Architecture) -> Transformer:
        """``build_model(arch)`` under a seed derived from the architecture: the same buffers every time."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_hash_seed(self.seed, arch.model_dump(mode="json")))
            model = build_model(arch, self.task)
        return model.to(self.device)

    def _skeleton(self, arch: Architecture) -> Transformer:
        key = arch.model_dump_json()
        model = self._built.pop(key, None) or self.build(arch)
        self._built[key] = model
        while len(self._built) > 16:
            self._built.popitem(last=False)
        return model

    # -- where each parameter of a path lives ------------------------------------------------------------
    def sharing(self, place: _Place) -> Sharing | None:
        """The ``Sharing`` a place's block declares (the model's own parts share by plain widths)."""
        if place.kind is None:
            return Sharing(MODEL_FAMILY)
        assert place.config is not None
        return capabilities_of(place.kind, registry.get(place.kind, place.config["type"]).cls).sharing

    def slot(self, place: _Place, sharing: Sharing | None, local: str, dims: Dims) -> str:
        """The name of the supernet tensor a path's parameter is cut from (``.`` is not allowed in names)."""
        if sharing is not None:
            family = sharing.family
        else:  # separate full-width weights for each config and size
            assert place.config is not None
            family = "own-" + hashlib.sha1(json.dumps([place.config, dims.d_model, dims.n_heads],
                                                      sort_keys=True).encode()).hexdigest()[:12]
        return f"{place.path}|{family}|{local}".replace(".", ":")

    def plan(self, arch: Architecture, model: nn.Module) -> list[PathSlice]:
        """Where each parameter of ``model`` (the built ``arch``) comes from in the supernet, creating the widest
        copies it is the first to need."""
        dims = arch.dims(self.task.seq_len, self.task.causal)
        places = sorted(_places(arch), key=lambda p: -len(p.path))
        out = []
        for name, own in model.named_parameters():
            place = next(p for p in places if name.startswith(p.path + "."))
            local = name[len(place.path) + 1:]
            sharing = self.sharing(place)
            key = self.slot(place, sharing, local, dims)
            if key not in self.store:
                self._create(key, place, sharing, local, own)
            layout = sharing.layout(local, own.dim()) if sharing is not None else None
            out.append(PathSlice(name, key, layout, tuple(own.shape), dims.n_heads, dims.head_dim))
        return out

    def cut(self, piece: PathSlice, full: torch.Tensor | None = None) -> torch.Tensor:
        """The slice ``piece`` of the supernet tensor (or of ``full``, a tensor of that tensor's shape)."""
        full = self.store[piece.slot] if full is None else full
        if piece.layout is None:
            if tuple(full.shape) != piece.shape:
                raise ValueError(f"{piece.name}: the supernet holds {tuple(full.shape)}, the block {piece.shape}")
            return full
        try:
            return cut(full, piece.shape, piece.layout, piece.n_heads, piece.head_dim, self.max_heads,
                       self.max_head_dim)
        except ValueError as exc:
            raise ValueError(f"{piece.name}: {exc}") from None

    def weights(self, arch: Architecture, model: nn.Module) -> dict[str, torch.Tensor]:
        """Each parameter of ``model`` (the built ``arch``) by name, as its slice of the supernet's tensors."""
        try:
            return {piece.name: self.cut(piece) for piece in self.plan(arch, model)}
        except ValueError as exc:
            raise ValueError(f"{arch.summary()}: {exc}") from None

    def _create(self, key: str, place: _Place, sharing: Sharing | None, local: str, own: torch.Tensor) -> None:
        if sharing is None:  # full width only: start from the block's own initialisation
            tensor = own.detach().clone()
        else:
            shape = self._widest_shape(place, sharing, local, own)
            g = torch.Generator().manual_seed(_hash_seed(self.seed, key))
            ref = own.detach().float().cpu()
            mean, std = ref.mean().item(), (ref.std().item() if ref.numel() > 1 else 0.0)
            tensor = (torch.randn(shape, generator=g) * std + mean).to(own.dtype).to(self.device)
        param = nn.Parameter(tensor)
        self.store[key] = param
        self._new.append(param)

    def _widest_shape(self, place: _Place, sharing: Sharing, local: str, own: torch.Tensor) -> tuple[int, ...]:
        layout = sharing.layout(local, own.dim())
        shapes = self._widest_shapes(place.kind, sharing.family).get(local)
        if shapes is None:
            raise ValueError(f"{place.path}.{local}: no block of family '{sharing.family}' in the space has it")
        out = []
        for axis, how in enumerate(layout):
            if how == "heads":
                out.append(self.max_heads * self.max_head_dim)
            elif how == "qkv":
                out.append(3 * self.max_heads * self.max_head_dim)
            else:
                out.append(shapes[axis])
        return tuple(out)

    def _widest_shapes(self, kind: str | None, family: str) -> dict[str, tuple[int, ...]]:
        """Per parameter name, the largest size of each axis over every block of the family in the space,
        built (on the meta device) at every corner of its config space and every model size."""
        key = (kind, family)
        if key in self._widest:
            return self._widest[key]
        found: dict[str, list[int]] = {}

        def add(module: nn.Module, skip: str = "position.") -> None:
            for name, p in module.named_parameters():
                if not name.startswith(skip):
                    seen = found.setdefault(name, list(p.shape))
                    found[name] = [max(a, b) for a, b in zip(seen, p.shape)]

        causal = self.task.causal
        with torch.device("meta"):
            for d, h in self._sizes:
                dims = Dims(d, h, self.task.seq_len, causal, self.max_layers)
                if kind is None:
                    add(self.task.embedding(d), skip="\0")
                    add(nn.Linear(d, self.task.num_outputs), skip="\0")
                    continue
                for entry in self.usable[kind]:
                    cls = registry.get(kind, entry.type).cls
                    declared = capabilities_of(kind, cls).sharing
                    if declared is None or declared.family != family:
                        continue
                    for config in self._config_corners(entry, cls):
                        try:
                            block = (cls(config, dims, no_position(dims)) if kind == "attention" else cls(config, dims))
                        except ValueError:  # a corner the block refuses at this size (kv_heads not dividing)
                            continue
                        add(block, skip="position." if kind == "attention" else "\0")
        self._widest[key] = {k: tuple(v) for k, v in found.items()}
        return self._widest[key]

    @staticmethod
    def _config_corners(entry: Any, cls: Any) -> Iterator[Any]:
        fields = [f for f in cls.Config.model_fields if f != "type"]
        spaces = [getattr(entry, f, None) for f in fields]
        options = [_corners(s) if s is not None else [cls.Config.model_fields[f].default]
                   for f, s in zip(fields, spaces)]
        for combo in itertools.islice(itertools.product(*options), MAX_CORNERS):
            try:
                yield cls.Config.model_validate({"type": entry.type, **dict(zip(fields, combo))})
            except ValueError:
                continue

    # -- running and extracting -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        """The output of path ``arch`` on inputs ``x``, computed with the supernet's (sliced) weights."""
        model = self._skeleton(arch).train(self.training)
        return torch.func.functional_call(model, self.weights(arch, model), (x,))

    @torch.no_grad()
    def extract(self, arch: Architecture) -> Transformer:
        """The standalone model of ``arch`` (:func:`nas.model.build_model`) holding copies of its slices of the
        supernet's weights: what :meth:`forward` computes on that path, as an ordinary model."""
        model = self.build(arch)
        sliced = self.weights(arch, model)
        for name, p in model.named_parameters():
            p.copy_(sliced[name])
        return model.eval()

    def take_new(self) -> list[nn.Parameter]:
        """The tensors created since the last call (for the optimizer)."""
        new, self._new = self._new, []
        return new

    # -- saving ------------------------------------------------------------------------------------------
    def save(self, folder: Path, state: dict[str, Any]) -> None:
        """Write the tensors (safetensors) and ``state`` (JSON) to ``folder``; the JSON last, so a supernet whose
        JSON exists is complete."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.store.items()}
        tmp = folder / (WEIGHTS + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(folder / WEIGHTS)
        (folder / (STATE + ".tmp")).write_text(json.dumps(state, indent=2))
        (folder / (STATE + ".tmp")).replace(folder / STATE)

    @classmethod
    def load(cls, folder: Path, spec: Spec, task: Task | None = None, device: str | torch.device = "cpu"
             ) -> tuple["Supernet", dict[str, Any]]:
        """The supernet :meth:`save` wrote, and its state."""
        from safetensors.torch import load_file

        state = json.loads((folder / STATE).read_text())
        net = cls(spec, task, seed=int(state.get("seed", 0)), device=device)
        for key, tensor in load_file(str(folder / WEIGHTS)).items():
            net.store[key] = nn.Parameter(tensor.to(net.device))
        net.take_new()
        return net, state

    @staticmethod
    def saved(folder: Path) -> bool:
        return (folder / STATE).exists() and (folder / WEIGHTS).exists()


# --- training -------------------------------------------------------------------------------------------
@dataclass
class SupernetTraining:
    steps: int = 0  # optimizer steps
    passes: int = 0  # path forward/backward passes (three per step with the sandwich rule): the compute counted
    seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of its paths)


def train_supernet(net: Supernet, steps: int | None = None, seed: int = 0, sandwich: bool = True,
                   on_log: Callable[[int, float], None] | None = None) -> SupernetTraining:
    """Train ``net`` in place with the spec's training settings (optimizer, schedule, batch size, precision,
    clipping) for ``steps`` optimizer steps (default: ``training.steps``). Each step's paths come from
    ``(seed, step)``, its batch from the task's seeded stream. Raises :class:`~nas.train.NonFiniteLoss`."""
    cfg = net.spec.training
    steps = steps if steps is not None else cfg.steps
    device, o = net.device, cfg.optimizer
    factor = lr_factor(cfg.schedule, steps)
    optimizer: torch.optim.Optimizer | None = None
    batches = net.task.train_batches(cfg.batch_size, seed=cfg.seed + seed)
    result = SupernetTraining()
    net.train()
    start = time.perf_counter()
    for step in range(steps):
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        paths = sandwich_paths(net.spec, _hash_seed(seed, step), sandwich)
        total = 0.0
        for arch in paths:
            with autocast(device, cfg.precision):
                logits = net(x, arch)
                loss = loss_fn(logits, y)
                aux = aux_loss(net._skeleton(arch))
                if aux is not None:
                    loss = loss + aux
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite supernet loss ({loss.item()}) at step {step} on {arch.summary()}")
            (loss / len(paths)).backward()
            total += loss.item() / len(paths)
        new = net.take_new()
        decay, no_decay = [p for p in new if p.dim() >= 2], [p for p in new if p.dim() < 2]
        if optimizer is None:
            optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                           {"params": no_decay, "weight_decay": 0.0}],
                                          lr=o.lr, betas=o.betas, eps=o.eps)
        else:
            for params, wd in ((decay, o.weight_decay), (no_decay, 0.0)):
                if params:
                    optimizer.add_param_group({"params": params, "weight_decay": wd})
        for group in optimizer.param_groups:
            group["lr"] = o.lr * factor(step)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps, result.passes = step + 1, result.passes + len(paths)
        if step % cfg.log_every == 0 or step == steps - 1:
            result.curve.append((step, total))
            if on_log is not None:
                on_log(step, total)
    result.seconds = time.perf_counter() - start
    net.eval()
    return result


# --- scoring with inherited weights -----------------------------------------------------------------------
@torch.no_grad()
def calibrate(model: nn.Module, task: Task, batches: int, batch_size: int, seed: int = 0) -> None:
    """Forward ``batches`` training batches in train mode without gradients, so that any running statistics a
    block keeps are those of this subnet rather than of the supernet's mixture (none of the built-in norms keeps
    any: they compute their statistics per token). Leaves the model in eval mode."""
    if batches > 0:
        model.train()
        stream = task.train_batches(batch_size, seed=seed)
        device = next(model.parameters()).device
        for _ in range(batches):
            model(next(stream)[0].to(device))
    model.eval()


def inherited_metrics(net: Supernet, arch: Architecture, calibration_batches: int = 0) -> dict[str, float]:
    """The task's quality metrics of ``arch`` with inherited weights, on the validation (held-out) set."""
    cfg = net.spec.training
    model = net.extract(arch)
    calibrate(model, net.task, calibration_batches, cfg.batch_size, seed=cfg.seed)
    return net.task.evaluate(model, cfg.eval_batch_size, net.device)


def inherited_scores(spec: Spec, archs: list[Architecture], steps: int | None = None, seed: int = 0
                     ) -> tuple[list[float], int]:
    """Train one supernet over ``spec``'s space for ``steps`` steps (default: the spec's training budget), then
    score each architecture with inherited weights on the validation set (the task's primary quality metric,
    same direction as a normal trial's). Returns (scores, supernet_training_steps).

    ``supernet_training_steps`` counts path passes (forward and backward of one path on one batch, three per
    step under the sandwich rule), the unit a trial's training steps are counted in."""
    torch.manual_seed(seed)
    net = Supernet(spec, seed=seed, device=pick_device(spec.training.device))
    trained = train_supernet(net, steps, seed)
    metric = next(iter(net.task.metrics))
    return [float(inherited_metrics(net, arch)[metric]) for arch in archs], trained.passes
