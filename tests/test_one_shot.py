"""``search.strategy: one_shot`` end to end: the final front holds only retrained trials, a plugin block without
weight sharing still works, and a search killed (SIGKILL) in each of its three phases resumes without losing
what that phase had finished.

Spaces are tiny (MQAR, vocab 16, 16 positions, 20 training steps); the supernet trains for 20 steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_search import load_study, run_cli, space_text

from nas import registry
from nas.search.one_shot import choose


@pytest.fixture(scope="module", autouse=True)
def _isolated() -> Any:
    with registry.REGISTRY.scratch():
        yield
    import ray

    ray.shutdown()


BODY = """
model: {d_model: [16, 32], n_layers: [1, 2], n_heads: 2}
space:
  attention: [{type: softmax}, {type: linear}]
  position: [{type: rope, base: {low: 100, high: 1000000, log: true}}]
"""


def one_shot(candidates: int, top_k: int, extra: str = "") -> str:
    return (f"{{strategy: one_shot, one_shot: {{candidates: {candidates}, top_k: {top_k}{extra}}}, concurrency: 2, "
            "sampler: {type: random}, dir: out}")


def trials_of(study: Any, state: str = "COMPLETE") -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == state]


def test_the_final_front_holds_only_retrained_trials(tmp_path):
    (tmp_path / "os.yaml").write_text(space_text("os", BODY, one_shot(8, 3)))
    code, out, err = run_cli(tmp_path, "search", "os.yaml", "--quiet", "--json", timeout=400)
    assert code == 0, out + err
    main, screened = load_study(tmp_path / "out", "os"), load_study(tmp_path / "out", "os.oneshot")
    scored = [t for t in trials_of(screened) if "repeat_of" not in t.user_attrs]
    assert len(scored) == 8 and all(t.user_attrs["steps"] == 0 for t in scored)  # inherited weights, no training
    retrained = trials_of(main)
    assert len(main.get_trials()) == 3 and len(retrained) == 3
    objectives = [tuple(o) for o in main.user_attrs["objectives"]]
    chosen = {t.number for t in choose(screened, objectives, 3)}
    assert {t.user_attrs["one_shot_candidate"] for t in retrained} == chosen
    for t in retrained:  # each trained from scratch for the full budget, its architecture the candidate's
        assert t.user_attrs["steps"] == 20
        candidate = screened.get_trials(deepcopy=False)[t.user_attrs["one_shot_candidate"]]
        assert t.user_attrs["arch_key"] == candidate.user_attrs["arch_key"]
        assert t.user_attrs["inherited"] == candidate.user_attrs["metrics"]["accuracy"]
    front = json.loads(out)["front"]
    numbers = {row["number"] for row in front}
    assert numbers and numbers <= {t.number for t in retrained}
    front_file = json.loads((tmp_path / "out" / "fronts" / "os" / "front.json").read_text())
    assert {r["trial"] for r in front_file["trials"]} <= {t.number for t in retrained}
    record = main.user_attrs["one_shot"]
    assert record["supernet_steps"] == 20 and 20 <= record["supernet_passes"] <= 60 and record["candidates"] == 8

    # `nas supernet export`: the best candidate as an ordinary saved model, computing what its supernet path does
    code, out, err = run_cli(tmp_path, "supernet", "export", "os", "exported", "--dir", "out")
    assert code == 0, out + err
    best = choose(screened, objectives, 1)[0]
    assert f"candidate {best.number} " in out
    import torch

    import nas
    from nas.architecture import Architecture
    from nas.spec import load_spec
    from nas.supernet import Supernet

    model = nas.load_model(tmp_path / "exported")
    net, _ = Supernet.load(tmp_path / "out" / "supernets" / "os", load_spec(tmp_path / "os.yaml").spec)
    arch = Architecture.model_validate(best.user_attrs["architecture"])
    x = next(net.task.train_batches(4, seed=3))[0]
    with torch.no_grad():
        assert (model(x) - net.eval()(x, arch)).abs().max().item() <= 1e-6
    code, out, err = run_cli(tmp_path, "supernet", "export", "os", "again", "--candidate", "999", "--dir", "out")
    assert code != 0 and "no screened candidate 999" in out + err


UNSHARED = '''
from typing import Literal
import torch
from torch import nn
from nas import BlockConfig, Capabilities, register


@register("attention", "t_unshared")
class Unshared(nn.Module):
    """A causal running-mean mixer that declares no weight sharing."""

    class Config(BlockConfig):
        type: Literal["t_unshared"] = "t_unshared"

    capabilities = Capabilities(causal=True, bidirectional=True, positions=frozenset({"none", "rotary"}))

    def __init__(self, config, dims, position):
        super().__init__()
        self.mix = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x):
        return self.mix(x.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[:, None])
'''


def test_a_plugin_block_without_sharing_works_in_a_one_shot_search(tmp_path):
    (tmp_path / "t_unshared.py").write_text(UNSHARED)
    body = BODY.replace("[{type: softmax}, {type: linear}]", "[{type: t_unshared}, {type: softmax}]")
    (tmp_path / "os.yaml").write_text(space_text("osp", body, one_shot(8, 2), plugins="t_unshared"))
    code, out, err = run_cli(tmp_path, "search", "os.yaml", "--quiet", timeout=400)
    assert code == 0, out + err
    screened = load_study(tmp_path / "out", "osp.oneshot")
    kinds = {t.user_attrs["summary"].split(": ")[1].split()[0] for t in trials_of(screened)}
    assert "t_unshared" in kinds, kinds  # scored with its own (unshared) supernet weights
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "supernets" / "osp" / "supernet.safetensors"), "pt") as f:
        own = [k for k in f.keys() if "|own-" in k and "attention" in k]
    assert own, "the unshared attention got no weights of its own"
    assert len(trials_of(load_study(tmp_path / "out", "osp"))) == 2


# --- kills in each phase ---------------------------------------------------------------------------------
class Search:
    """``nas search`` in a process of its own session, its output read line by line as it comes."""

    def __init__(self, cwd: Path, spec: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", spec], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, ready: Any, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"never ready (exit {self.proc.poll()}):\n" + "".join(self.lines[-40:]))

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=10)

    def finish(self, timeout: float = 400) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(timeout=10)
        return "".join(self.lines)


def complete(root: Path, name: str) -> dict[int, list[float]]:
    journal = root / "studies" / f"{name}.journal"
    if not journal.exists():
        return {}
    try:
        return {t.number: list(t.values) for t in trials_of(load_study(root, name))}
    except Exception:  # a study not created yet
        return {}


def test_a_one_shot_search_killed_in_each_phase_loses_nothing_finished(tmp_path):
    (tmp_path / "os.yaml").write_text(space_text("kill", BODY, one_shot(30, 3)))
    root = tmp_path / "out"
    supernet = root / "supernets" / "kill" / "supernet.json"

    # phase 1: killed while the supernet trains; nothing is saved, so it trains again
    s = Search(tmp_path, "os.yaml")
    s.wait_for(lambda: any("training the supernet" in line for line in s.lines))
    time.sleep(1.0)
    s.kill()
    assert not supernet.exists()

    # phase 2: killed after some candidates were scored; the supernet is reused and the scores kept
    s = Search(tmp_path, "os.yaml")
    s.wait_for(lambda: len(complete(root, "kill.oneshot")) >= 3)
    s.kill()
    assert any("training the supernet" in line for line in s.lines)
    trained_at = supernet.stat().st_mtime_ns
    scored = complete(root, "kill.oneshot")
    assert 3 <= len(scored) < 30

    # phase 3: killed after a retrained trial finished
    s = Search(tmp_path, "os.yaml")
    s.wait_for(lambda: len(complete(root, "kill")) >= 1)
    s.kill()
    assert any("supernet" in line and "reused" in line for line in s.lines)
    retrained = complete(root, "kill")
    after_two = complete(root, "kill.oneshot")
    assert all(after_two[n] == v for n, v in scored.items())  # phase 2 kept every score it had
    assert len([1 for t in load_study(root, "kill.oneshot").trials if t.state.name == "COMPLETE"
                and "repeat_of" not in t.user_attrs]) == 30

    # the last resume finishes, training nothing finished again
    out = Search(tmp_path, "os.yaml").finish()
    assert "reused" in out and supernet.stat().st_mtime_ns == trained_at
    assert complete(root, "kill.oneshot") == after_two  # no candidate scored again
    final = complete(root, "kill")
    assert all(final[n] == v for n, v in retrained.items())  # the retrained trial is kept, not retrained
    main = load_study(root, "kill")
    done = trials_of(main)
    assert len(done) == 3 and len({t.user_attrs["one_shot_candidate"] for t in done}) == 3
    assert all(t.user_attrs.get("interrupted") for t in main.trials if t.state.name == "FAIL")
