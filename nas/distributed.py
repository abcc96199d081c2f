"""Data-parallel training of one trial across K Ray Train workers (DDP; gloo on CPU, NCCL on GPU).

Every worker builds the same model from the same seed and draws the same global batch stream; worker r
trains on rows ``r::K`` of each global batch, and DDP averages the gradients. With tasks whose examples all
carry the same number of targets (MQAR, fixed-length text windows, digits), that is the same update as one
worker on the whole global batch, so the loss curve matches a single-worker run up to float summation order.
The logged loss is averaged over workers, i.e. the loss of the global batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import registry
from .architecture import Architecture
from .blocks import Batch
from .model import build_model, build_task
from .runtime import seed_everything
from .spec import Spec, spec_from_data
from .train import TrainResult, train

__all__ = ["train_data_parallel", "shard"]


def shard(batches: Iterator[Batch], rank: int, world: int) -> Iterator[Batch]:
    """Rows ``rank::world`` of every global batch."""
    for x, y in batches:
        yield x[rank::world], y[rank::world]


def _loop(config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker."""
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_model

    spec = spec_from_data(config["spec"], config["plugins"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    task = build_task(spec)
    seed_everything(spec.training.seed)
    model: torch.nn.Module = build_model(Architecture.model_validate(config["arch"]), task)
    model = ray.train.torch.prepare_model(model)  # moves to this worker's device, wraps in DDP
    device = ray.train.torch.get_device()
    batches = shard(task.train_batches(spec.training.batch_size, seed=spec.training.seed), rank, world)
    result = train(model, task, spec.training, device, batches=batches)
    metrics = {"curve": [list(p) for p in result.curve], "seconds": result.seconds, "steps": result.steps}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
            save_model(core, f"{tmp}/weights.safetensors")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def train_data_parallel(spec: Spec, arch: Architecture, model: torch.nn.Module,
                        storage: str | None = None) -> TrainResult:
    """Train ``arch`` on ``spec.training.workers`` Ray Train workers; load the result into ``model``.

    Needs a running Ray (a trial task reserves no CPU while its
    workers train, so they do not deadlock waiting for each other's CPUs).
    """
    use_gpu = spec.training.device == "cuda" or (spec.training.device == "auto" and torch.cuda.is_available())
    with tempfile.TemporaryDirectory(prefix="nas-train-", dir=storage) as tmp:
        return _fit(spec, arch, model, use_gpu, tmp)


def _fit(spec: Spec, arch: Architecture, model: torch.nn.Module, use_gpu: bool, storage: str) -> TrainResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.torch import load_model

    trainer = TorchTrainer(
        _loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "arch": arch.model_dump(),
                           "plugins": list(spec.plugins)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=spec.training.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(Path(storage).resolve()), name="train"),
    )
    registry.load_plugins(spec.plugins)
    out = trainer.fit()
    assert out.checkpoint is not None and out.metrics is not None, "rank 0 reports a checkpoint and metrics"
    with out.checkpoint.as_directory() as folder:
        load_model(model, f"{folder}/weights.safetensors")
    m = out.metrics
    return TrainResult(curve=[(int(s), float(v)) for s, v in m["curve"]], steps=int(m["steps"]),
                       seconds=float(m["seconds"]), final_loss=float(m["curve"][-1][1]))
