"""Trials as Ray tasks: what runs in a worker, and the driver's handle on the running ones.

Worker side (:func:`trial_task`): rebuild the registry and the spec in that process, run one trial, hand back a
:class:`TrialOutput`. With ``search.resources.memory_mb`` the trial runs in a child process under an
address-space limit. Driver side (:class:`RayExecutor`): start or join Ray, submit, wait, cancel, and turn
every way a task can die into a failed :class:`~nas.trial.TrialResult` with its reason.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..architecture import Architecture
from ..spec import Spec, spec_from_data
from ..trial import TrialResult, execute_trial, training_threads, verify_latency
from .stopping import RungPlan

__all__ = ["TrialOutput", "RayExecutor", "trial_task", "warm_worker", "limited_child"]


@dataclass(frozen=True)
class TrialOutput:
    """What a worker hands back: the result, and the trained weights as safetensors bytes (ok trials)."""

    result: TrialResult
    weights: bytes | None = None
    worker_died: bool = False  # its worker process crashed: the controller may run it again


# --- the worker side -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs to run one trial, as plain data."""

    spec: dict[str, Any]
    plugins: list[str]
    arch: dict[str, Any]
    cwd: str
    threads: int
    memory_mb: int | None
    plan: RungPlan | None = None  # early stopping: the rungs and what was recorded there at submission
    verify_repeats: int | None = None  # set: only re-measure the architecture's latency (verification)


def _enter_driver_dir(cwd: str) -> None:
    """On a local cluster, work in the driver's directory: relative paths (text files, plugin modules) resolve
    as they do there. A remote node without that directory keeps its own."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
        if cwd not in sys.path:
            sys.path.insert(0, cwd)


def trial_task(job: TrialJob) -> TrialOutput:
    """Runs in a Ray worker."""
    _enter_driver_dir(job.cwd)
    if job.memory_mb is not None:
        return _run_limited(job, job.memory_mb)
    return _run_here(job)


def warm_worker(spec: dict[str, Any], plugins: list[str], cwd: str, threads: int) -> None:
    """Runs in a Ray worker before its first trial: what every trial of that worker would otherwise pay once on
    its first call (importing torch, nas and the plugins, ``torch._dynamo``, which torch's optimizers and
    meta kernels import on first use, and the task's training data, built by its first batch), paid while the
    driver sets up MLflow."""
    _enter_driver_dir(cwd)  # as a trial does: a relative text path must validate and load here too
    import torch
    import torch._dynamo  # noqa: F401  (see the docstring)

    from ..model import build_task

    torch.set_num_threads(max(1, threads))
    build_task(spec_from_data(spec, plugins)).example_batch(1)  # the task is cached with its data (build_task)


def _run_here(job: TrialJob, memory_mb: int | None = None) -> TrialOutput:
    """One trial in this process."""
    import torch

    spec = spec_from_data(job.spec, job.plugins)
    torch.set_num_threads(max(1, job.threads))
    if memory_mb is not None:
        import torch._dynamo  # noqa: F401  imported lazily by the first meta-device build: ~250 MB of address
        # space that belongs to the baseline, not to the trial
        _limit_memory(memory_mb)
    arch = Architecture.model_validate(job.arch)
    if job.verify_repeats is not None:
        started = time.time()
        measured = verify_latency(spec, arch, job.verify_repeats)
        return TrialOutput(TrialResult("ok", job.arch, measured, info={"busy": [started, time.time()]}))
    plan = job.plan
    run = execute_trial(spec, arch, keep_model=True, rungs=plan.steps if plan else (),
                        at_rung=plan.decide if plan else None)
    if memory_mb is not None:  # the limit is for the trial, not for handing its result back
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
    weights = None
    if run.model is not None:
        from safetensors.torch import save_model

        with tempfile.TemporaryDirectory() as tmp:
            save_model(run.model, f"{tmp}/w.safetensors")  # handles the shared position module
            weights = Path(f"{tmp}/w.safetensors").read_bytes()
    return TrialOutput(run.result, weights)


def _run_limited(job: TrialJob, memory_mb: int) -> TrialOutput:
    """One trial in a child process under the address-space limit (``search.resources.memory_mb``).

    Never under the limit in the Ray worker itself: Ray starts threads there at any time, and a thread that
    cannot get its stack aborts the worker, which then hangs instead of returning. A child that dies (a
    native allocation failure can abort it) is recorded as out of memory.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result_path, log_path = Path(tmp) / "result.pkl", Path(tmp) / "stderr.txt"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from nas.search.executor import limited_child; "
                 "limited_child(sys.argv[1])", str(result_path)],
                stdin=subprocess.PIPE, stderr=log, cwd=job.cwd if os.path.isdir(job.cwd) else None,
            )
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(job))
            proc.stdin.close()
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak memory, not the worker's
            proc.returncode = os.waitstatus_to_exitcode(status)
        errors = log_path.read_text(errors="replace")
        if errors:
            sys.stderr.write(errors[-20000:])
        if proc.returncode == 0 and result_path.exists():
            output: TrialOutput = pickle.loads(result_path.read_bytes())
            return output
    reason = classify_death(proc.returncode, errors, usage.ru_maxrss * 1024, memory_mb)
    return TrialOutput(TrialResult.failed(Architecture.model_validate(job.arch), reason))


_OOM_SIGNS = ("MemoryError", "can't allocate memory", "std::bad_alloc", "Cannot allocate memory", "out of memory",
              "DefaultCPUAllocator")


def classify_death(returncode: int, stderr: str, peak_rss: int, memory_mb: int) -> str:
    """Why a limited trial's process died, from what happened: its exit signal or code, what it printed last,
    and its peak resident memory against the limit. Only evidence of an allocation failure makes it 'out of
    memory'."""
    import signal

    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    how = (f"killed by {signal.Signals(-returncode).name}" if returncode < 0 and -returncode in signal.valid_signals()
           else f"exit code {returncode}")
    evidence = f"{how}; peak resident memory {peak_rss / 2**20:.0f} MiB, limit search.resources.memory_mb = {memory_mb}"
    oom = any(sign in stderr for sign in _OOM_SIGNS)
    kind = "out of memory" if oom else "the trial process died"
    return f"{kind}: {evidence}" + (f": {last[:300]}" if last else "")


def limited_child(result_path: str) -> None:
    """Entry point of the child process of :func:`_run_limited`: the job on stdin, the output to ``result_path``."""
    job: TrialJob = pickle.load(sys.stdin.buffer)
    if os.path.isdir(job.cwd) and job.cwd not in sys.path:
        sys.path.insert(0, job.cwd)
    out = _run_here(job, job.memory_mb)
    Path(result_path).write_bytes(pickle.dumps(out))


def _limit_memory(memory_mb: int) -> None:
    """Cap this process's address space at its current size plus ``memory_mb`` (Linux). Larger allocations
    fail, and the trial is recorded as out of memory. Only ever called in a process that runs one trial."""
    import resource

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


# --- the driver side -------------------------------------------------------------------------------------
class RayExecutor:
    """Starts (or joins) Ray and runs trials of one spec as Ray tasks."""

    def __init__(self, spec: Spec, address: str | None):
        import ray

        self.spec = spec
        if not ray.is_initialized():
            # Ray logs at the level of the "ray" logger (WARNING unless set: `nas search` hides Ray's warnings
            # unless --verbose)
            level = logging.getLogger("ray").getEffectiveLevel()
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": level,
                                      "configure_logging": True, "log_to_driver": True}
            if address:
                ray.init(address=address, **kwargs)
            else:  # "local": a new instance, even when `ray start` left a cluster (or its address) on this machine
                ray.init(address="local", num_cpus=os.cpu_count(), **kwargs)
        r = spec.search.resources
        fresh_process = r.gpus > 0  # GPU memory does not outlive a trial (memory_mb runs it in a child process)
        remote = ray.remote(max_calls=1)(trial_task) if fresh_process else ray.remote(trial_task)
        # Retries are the controller's (max_retries=0 here), so that each attempt is visible in MLflow.
        self._task = remote.options(num_cpus=0 if spec.training.workers > 1 else r.cpus, num_gpus=r.gpus,
                                    max_retries=0)
        self._spec_data = spec.model_dump(mode="json")
        # Workers are reused across trials: warm one per slot now, while the driver sets up MLflow. The trials
        # submitted next wait for the CPUs these hold and then land on the warm workers.
        self.warming: list[Any] = []
        if not fresh_process and r.memory_mb is None and spec.training.workers == 1:
            warm = ray.remote(warm_worker).options(num_cpus=r.cpus, max_retries=0)
            self.warming = [warm.remote(self._spec_data, list(spec.plugins), os.getcwd(), training_threads(spec))
                            for _ in range(spec.search.concurrency)]

    def submit(self, arch: Architecture, plan: RungPlan | None = None, verify_repeats: int | None = None) -> Any:
        """Start one trial (or, with ``verify_repeats``, one re-measurement); returns the Ray object ref."""
        self._settle_warm_ups()
        r = self.spec.search.resources
        job = TrialJob(self._spec_data, list(self.spec.plugins), arch.model_dump(), os.getcwd(),
                       training_threads(self.spec), r.memory_mb, plan, verify_repeats)
        return self._task.remote(job)

    def _settle_warm_ups(self) -> None:
        """Collect the warm-ups that have finished. One that failed (a plugin broken on that node) says nothing
        here: the trials that land there fail with the reason; collected, Ray does not report it as unhandled."""
        if not self.warming:
            return
        import ray

        done, self.warming = ray.wait(self.warming, num_returns=len(self.warming), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass

    def wait(self, refs: list[Any], timeout: float) -> list[Any]:
        """The refs among ``refs`` that finished (at most one), waiting up to ``timeout`` seconds."""
        import ray

        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return list(ready)

    def output(self, ref: Any, arch: Architecture) -> TrialOutput:
        """The output of a finished ref; a task that died becomes a failed result naming why."""
        import ray

        try:
            out: TrialOutput = ray.get(ref)
            return out
        except ray.exceptions.OutOfMemoryError as exc:
            reason = f"out of memory: killed by Ray's memory monitor ({str(exc).splitlines()[0]})"
        except ray.exceptions.WorkerCrashedError:
            reason = f"worker died (process crashed), after {self.spec.search.retries} retries"
            return TrialOutput(TrialResult.failed(arch, reason), worker_died=True)
        except ray.exceptions.RayTaskError as exc:  # raised outside run_trial, e.g. a plugin missing on that node
            cause = exc.cause if exc.cause is not None else exc
            reason = f"error in the Ray worker: {type(cause).__name__}: {cause}"
        except ray.exceptions.RayError as exc:
            reason = f"ray: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return TrialOutput(TrialResult.failed(arch, reason))

    def cancel(self, ref: Any) -> None:
        import ray

        ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        """Stop Ray (and the local instance's processes) after an interrupted search."""
        import ray

        ray.shutdown()
