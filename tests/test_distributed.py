"""Data-parallel training of one trial (training.workers: K) on Ray Train with DDP over gloo."""

import logging
import textwrap

import pytest

ray = pytest.importorskip("ray")

from nas.cli import sample_one  # noqa: E402
from nas.spec import load_spec  # noqa: E402
from nas.trial import run_trial  # noqa: E402

SPACE = """
name: ddp
task: {type: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2, test_examples: 100}
model: {d_model: 32, n_layers: 1, n_heads: 2}
space:
  position: [{type: learned}]
training: {steps: 20, batch_size: 16, log_every: 5, workers: 2, optimizer: {lr: 3e-3}}
measure: {repeats: 3}
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path, local_ray):
    path = tmp_path / "ddp.yaml"
    path.write_text(textwrap.dedent(SPACE))
    spec = load_spec(path).spec
    arch = sample_one(spec, 0)

    two = run_trial(spec, arch)
    one = run_trial(spec.model_copy(update={"training": spec.training.model_copy(update={"workers": 1})}), arch)

    assert two.status == "ok", two.reason
    assert one.status == "ok", one.reason
    assert [s for s, _ in two.curve] == [s for s, _ in one.curve] == [0, 5, 10, 15, 19]
    # Same update up to float summation order (gradients all-reduced across workers).
    for (_, a), (_, b) in zip(two.curve, one.curve):
        assert a == pytest.approx(b, rel=1e-4)
    assert two.curve[-1][1] < two.curve[0][1]  # it trained
    assert two.metrics["accuracy"] == pytest.approx(one.metrics["accuracy"], abs=0.02)
