"""A search on a real two-node Ray cluster on loopback: a head and a second node started with ``ray start``,
one CPU each, and ``nas search --address`` as the driver.

Ray 2.60 turns token authentication on for a head started by ``ray start``; a node or a driver without the
token is refused ("Authentication token is missing or incorrect"). Every process here gets the same
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (no token file in the home folder is read or written), and
Ray's files go to a folder of the test's own. The cluster is torn down by killing exactly the processes the
two ``ray start`` commands started (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent

WHERE_BLOCKS = '''
"""An attention block that notes the Ray node it runs on, in nodes/<node id> under the working directory."""
import os
from typing import Literal

import torch
from torch import nn

from nas import BlockConfig, Capabilities, register


@register("attention", "t_where")
class Where(nn.Module):
    """A causal running mean that records where it ran."""

    class Config(BlockConfig):
        type: Literal["t_where"] = "t_where"

    capabilities = Capabilities(positions=frozenset({"none", "embedding", "rotary", "bias"}))

    def __init__(self, config, dims, position):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)
        self.noted = False

    def forward(self, x):  # (B, T, C)
        if x.device.type != "meta" and not self.noted:
            import ray

            os.makedirs("nodes", exist_ok=True)
            open(os.path.join("nodes", ray.get_runtime_context().get_node_id()), "w").close()
            self.noted = True
        t = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return self.proj(x.cumsum(1) / t)
'''

SPACE = """\
name: cluster
plugins: [nas_test_where]
task: {type: mqar, vocab_size: 16, seq_len: 16, num_kv_pairs: 2, test_examples: 64}
model: {d_model: [16, 32], n_layers: 1, n_heads: 2}
space:
  attention: [{type: t_where}]
  position: [{type: sinusoidal}]
training: {steps: 20, batch_size: 16, log_every: 5, device: cpu, schedule: {warmup_steps: 2}}
measure: {batch_size: 1, warmup: 1, repeats: 3, train_batch_size: 4}
search: {n_trials: 4, concurrency: 2, sampler: {type: random}, resources: {cpus: 1}, deduplicate: false, dir: out}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process started, directly or not, by ``pid`` (Ray workers run in process groups of their own)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session=True``, its group, and every process it started."""
    pids = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ARGS --block`` in the background; returns once the node is up."""
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "ray"), "start", *args, "--block"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"ray start {' '.join(args)} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A head and one more node on 127.0.0.1 with one CPU each; the environment every process must use."""
    temp = Path(tempfile.mkdtemp(prefix="nas-ray-"))  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_TMPDIR=str(temp))
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}"]
    started: list[subprocess.Popen] = []
    try:
        started.append(start_node(["--head", f"--port={port}", "--include-dashboard=false", *common], env,
                                  tmp_path / "head.log"))
        started.append(start_node([f"--address=127.0.0.1:{port}", *common], env, tmp_path / "node.log"))
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        for proc in reversed(started):
            kill_tree(proc)
        shutil.rmtree(temp, ignore_errors=True)


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def cluster_nodes(cluster: dict[str, Any], cwd: Path) -> list[dict[str, Any]]:
    """``ray.nodes()`` as seen by a short-lived driver."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'cpus': n['Resources'].get('CPU')} "
            "for n in ray.nodes()]))" % cluster["address"])
    done = run([sys.executable, "-c", code], cwd, cluster["env"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_search_on_a_two_node_cluster_uses_both_nodes(cluster, tmp_path):
    (tmp_path / "nas_test_where.py").write_text(WHERE_BLOCKS)
    (tmp_path / "space.yaml").write_text(SPACE)
    done = run([str(BIN / "nas"), "search", "space.yaml", "--address", cluster["address"], "--quiet", "--json"],
               tmp_path, cluster["env"], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(done.stdout[done.stdout.index("{"):])
    assert outcome["counts"] == {"complete": 4, "failed": 0, "interrupted": 0, "infeasible": 0, "stopped": 0,
                                 "repeats": 0, "steps": 4 * 20}
    assert outcome["aborted"] is None and outcome["front"]

    nodes = cluster_nodes(cluster, tmp_path)
    assert len(nodes) == 2 and all(n["alive"] and n["cpus"] == 1.0 for n in nodes)
    # Two trials at once, one CPU each, one CPU per node: the trials ran on both nodes.
    assert {p.name for p in (tmp_path / "nodes").iterdir()} == {n["id"] for n in nodes}
