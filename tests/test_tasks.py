"""The built-in tasks (plugins/tasks.py): MQAR data semantics, byte-level text, 8x8 digits."""

from __future__ import annotations

import itertools

import pytest
import torch

from nas.cli import sample_one
from nas.spec import SpecError, load_spec
from nas.trial import run_trial
from nas_plugins.tasks import mqar_examples


# --- MQAR ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab, seq_len, pairs", [(32, 16, 2), (64, 32, 4), (16, 16, 4), (8192, 64, 8)])
def test_mqar_semantics(vocab, seq_len, pairs):
    """Zoology's MQAR: distinct keys and distinct values, each key queried once after the context, the answer
    at the query position and never written after it, random filler everywhere else."""
    x, y = mqar_examples(50, vocab, seq_len, pairs, power_a=0.01, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (50, seq_len) and x.dtype == y.dtype == torch.long
    half = vocab // 2
    answer_follows = filler_positions = 0
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        keys, values = row_x[0: 2 * pairs: 2], row_x[1: 2 * pairs: 2]
        assert all(1 <= k <= half - 1 for k in keys) and len(set(keys)) == pairs  # distinct keys 1..V/2-1
        assert all(half <= v <= vocab - 1 for v in values) and len(set(values)) == pairs  # distinct values
        assert all(t == -100 for t in row_y[: 2 * pairs])  # no target inside the key-value context
        queries = [t for t, target in enumerate(row_y) if target != -100]
        assert len(queries) == pairs  # each key queried once
        assert sorted(row_x[t] for t in queries) == sorted(keys)
        for t in queries:
            assert (t - 2 * pairs) % 2 == 0  # at the first position of a two-position slot
            assert row_y[t] == values[keys.index(row_x[t])]  # the target is the value paired with the key
            answer_follows += t + 1 < seq_len and row_x[t + 1] == row_y[t]
        filler_positions += seq_len - 2 * pairs - pairs
    assert answer_follows <= 0.1 * 50 * pairs  # only by chance (filler is 1/V likely to equal it)
    filler = x[:, 2 * pairs:][y[:, 2 * pairs:] == -100]
    assert filler.numel() == filler_positions
    assert len(set(filler.tolist())) > 0.5 * min(vocab, filler.numel())  # random tokens, not one padding id


def test_mqar_filler_is_uniform_over_the_vocabulary():
    x, y = mqar_examples(400, 16, 64, 2, power_a=0.01, generator=torch.Generator().manual_seed(0))
    filler = x[:, 4:][y[:, 4:] == -100]
    counts = torch.bincount(filler, minlength=16).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_mqar_distinct_draws_are_uniform():
    from nas_plugins.tasks import distinct_ints

    g = torch.Generator().manual_seed(0)
    for high in (6, 400):  # the dense (permutation) and the sparse (redraw) paths
        draws = distinct_ints(20000, 1, high, 3, g)
        assert ((draws >= 1) & (draws < high)).all()
        assert (draws.sort(dim=1).values.diff(dim=1) > 0).all()
        counts = torch.bincount(draws[:, 0], minlength=high)[1:].float()
        assert counts.std() / counts.mean() < 0.2 if high == 6 else counts.max() < 3 * counts.mean()


def test_mqar_short_gaps_are_likelier():
    x, y = mqar_examples(2000, 64, 64, 1, power_a=0.01, generator=torch.Generator().manual_seed(0))
    gaps = (y != -100).float().argmax(dim=1) - 2  # query position after the single pair
    assert (gaps < 10).float().mean() > (gaps >= 50).float().mean()


def test_mqar_held_out_set_is_the_same_on_every_call(make_task):
    task = make_task("mqar", test_examples=50)
    first = list(task.eval_batches(16))
    again = list(task.eval_batches(16))
    other_instance = list(make_task("mqar", test_examples=50).eval_batches(50))
    assert [len(x) for x, _ in first] == [16, 16, 16, 2]
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(torch.cat([x for x, _ in first]), other_instance[0][0])
    assert torch.equal(torch.cat([y for _, y in first]), other_instance[0][1])


def test_mqar_held_out_set_differs_from_training_data(make_task):
    task = make_task("mqar", test_examples=64)
    test_x = next(task.eval_batches(64))[0]
    train_x = next(task.train_batches(64, seed=0))[0]
    assert not torch.equal(test_x, train_x)
    other = make_task("mqar", test_examples=64, test_seed=7)
    assert not torch.equal(test_x, next(other.eval_batches(64))[0])


def test_mqar_training_stream_is_seeded(make_task):
    task = make_task("mqar")
    a = list(itertools.islice(task.train_batches(8, seed=3), 3))
    b = list(itertools.islice(task.train_batches(8, seed=3), 3))
    c = next(task.train_batches(8, seed=4))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[1][0], a[0][0])  # an endless stream, not one batch repeated
    assert not torch.equal(a[0][0], c[0])


def test_mqar_config_rejects_impossible_sizes(write_spec):
    with pytest.raises(SpecError, match="too short"):
        load_spec(write_spec("task: {type: mqar, seq_len: 8, num_kv_pairs: 4}\n"), device="cpu")
    with pytest.raises(SpecError, match="distinct keys"):
        load_spec(write_spec("task: {type: mqar, vocab_size: 8, num_kv_pairs: 4}\n"), device="cpu")
    with pytest.raises(SpecError, match="both 5"):
        load_spec(write_spec("task: {type: mqar, train_seed: 5, test_seed: 5}\n"), device="cpu")


def test_mqar_trains_on_a_fixed_set_in_epochs(make_task):
    """As in Zoology: a fixed training set, visited in a new order each epoch; the test set is another one."""
    task = make_task("mqar", train_examples=48, test_examples=16)
    seen = [x for x, _ in itertools.islice(task.train_batches(16, seed=0), 6)]  # two epochs of 3 batches
    first, second = torch.cat(seen[:3]), torch.cat(seen[3:])
    as_set = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert len(as_set(first)) == 48 and as_set(first) == as_set(second)  # every example once per epoch
    assert not torch.equal(first, second)  # reshuffled
    assert not as_set(first) & as_set(next(task.eval_batches(16))[0])
    fresh = make_task("mqar", train_examples=None)
    a, b = itertools.islice(fresh.train_batches(16, seed=0), 2)
    assert not torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="exceeds the 48 training examples"):
        next(task.train_batches(64, seed=0))


class _RecallOracle(torch.nn.Module):
    """Solves MQAR from the inputs alone: at a key seen in the context, predict the value stored with it."""

    def __init__(self, vocab: int, pairs: int):
        super().__init__()
        self.vocab, self.pairs = vocab, pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*x.shape, self.vocab)
        for b, row in enumerate(x.tolist()):
            memory = dict(zip(row[0: 2 * self.pairs: 2], row[1: 2 * self.pairs: 2]))
            for t, token in enumerate(row):
                out[b, t, memory.get(token, 0) if t >= 2 * self.pairs else 0] = 1.0
        return out


def test_mqar_evaluate_scores_a_perfect_recall_model_1_and_a_blind_one_0(make_task):
    task = make_task("mqar", test_examples=20)
    cpu = torch.device("cpu")
    assert task.evaluate(_RecallOracle(32, 2), 8, cpu) == {"accuracy": 1.0}
    blind = _RecallOracle(32, 0)  # remembers nothing: predicts token 0, which is never a target
    assert task.evaluate(blind, 8, cpu) == {"accuracy": 0.0}


# --- text -----------------------------------------------------------------------------------------------------
TEXT_SPACE = """\
    task: {{type: text, paths: ["{path}"], seq_len: 16, valid_fraction: 0.2, max_eval_windows: 16}}
    model: {{d_model: 32, n_heads: 2, n_layers: 1}}
    training: {{steps: 40, batch_size: 16, device: cpu, optimizer: {{lr: 1e-2}}, schedule: {{warmup_steps: 2}}}}
    measure: {{repeats: 2, warmup: 1, train_batch_size: 2}}
    objectives: [{{metric: bits_per_byte}}, {{metric: latency_ms}}]
    """


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    sentence = "the quick brown fox jumps over the lazy dog. "
    path.write_text(sentence * 60)  # 2,700 bytes
    return path


def test_text_task_gives_bits_per_byte(write_spec, text_file):
    spec = load_spec(write_spec(TEXT_SPACE.format(path=text_file)), device="cpu").spec
    result = run_trial(spec, sample_one(spec, seed=0))
    assert result.status == "ok", result.reason
    assert 0 < result.metrics["bits_per_byte"] < 6  # uniform over 256 bytes is 8; the text repeats
    assert 0 <= result.metrics["accuracy"] <= 1


def test_text_batches_are_next_byte_windows(make_task, text_file):
    task = make_task("text", paths=[str(text_file)], seq_len=16, valid_fraction=0.2)
    data = text_file.read_bytes()
    split = int(len(data) * 0.8)
    x, y = next(task.train_batches(4, seed=0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one byte
    for row in x.tolist():
        assert bytes(row) in data[:split]
    windows = list(task.eval_batches(100))
    assert len(windows) == 1 and len(windows[0][0]) == min((len(data) - split - 1) // 16, 256)
    assert bytes(windows[0][0][0].tolist()) == data[split: split + 16]  # the held-out part is the file's end


def test_text_bits_per_byte_of_a_uniform_model_is_8(make_task, text_file):
    task = make_task("text", paths=[str(text_file)], seq_len=16, valid_fraction=0.2)

    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 256)

    metrics = task.evaluate(Uniform(), 8, torch.device("cpu"))
    assert metrics["bits_per_byte"] == pytest.approx(8.0)


def test_text_paths_must_exist(write_spec, tmp_path):
    with pytest.raises(SpecError, match="no file matches"):
        load_spec(write_spec(f"task: {{type: text, paths: ['{tmp_path}/missing*.txt']}}\n"), device="cpu")


def test_text_too_short_is_an_error(make_task, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello")
    task = make_task("text", paths=[str(path)], seq_len=16)
    with pytest.raises(ValueError, match="too little"):
        next(task.train_batches(2, seed=0))


# --- digits ---------------------------------------------------------------------------------------------------
DIGITS_SPACE = """\
    task: {type: digits, patch_size: 4}  # 4 patches of 4x4 pixels: learns fastest
    model: {d_model: 32, n_heads: 2, n_layers: 1}
    space:
      position: [{type: learned}]
    training: {steps: 60, batch_size: 32, device: cpu, optimizer: {lr: 1e-2}, schedule: {warmup_steps: 5}}
    measure: {repeats: 2, warmup: 1, train_batch_size: 4}
    """


def test_digits_tiny_encoder_beats_chance(write_spec):
    spec = load_spec(write_spec(DIGITS_SPACE), device="cpu").spec
    result = run_trial(spec, sample_one(spec, seed=0))
    assert result.status == "ok", result.reason
    assert result.metrics["accuracy"] > 0.5  # chance is 0.1; this one reaches ~0.8


def test_digits_split_is_disjoint_and_seeded(make_task):
    task = make_task("digits", test_fraction=0.2)
    (train_x, train_y), (test_x, test_y) = task._data
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == int(1797 * 0.2)
    assert train_x.shape[1:] == (16, 4) and 0 <= train_x.min() and train_x.max() <= 1
    assert set(train_y.tolist()) == set(range(10))
    again = make_task("digits", test_fraction=0.2)._data[1][0]
    assert torch.equal(test_x, again)
    other = make_task("digits", test_fraction=0.2, split_seed=1)._data[1][0]
    assert not torch.equal(test_x, other)


@pytest.mark.parametrize("patch, length", [(1, 64), (2, 16), (4, 4)])
def test_digits_patches(make_task, patch, length):
    task = make_task("digits", patch_size=patch)
    x, y = next(task.train_batches(3, seed=0))
    assert task.seq_len == length and x.shape == (3, length, patch * patch) and y.shape == (3,)
    assert not task.causal and task.num_outputs == 10


def test_digits_batch_larger_than_the_training_set_is_an_error_not_a_hang(make_task):
    task = make_task("digits", test_fraction=0.9)  # 180 training images
    with pytest.raises(ValueError, match="exceeds the 180 training images"):
        next(task.train_batches(256, seed=0))
    assert len(next(task.train_batches(180, seed=0))[0]) == 180


# --- a task is built once per process and shared by its trials ------------------------------------------
def test_build_task_builds_each_config_once_per_process(write_spec, tiny_spec_text):
    from nas.model import build_task

    spec = load_spec(str(write_spec(tiny_spec_text))).spec
    other = load_spec(str(write_spec(tiny_spec_text.replace("num_kv_pairs: 2", "num_kv_pairs: 3"), "b.yaml"))).spec
    assert build_task(spec) is build_task(spec)
    assert build_task(other) is not build_task(spec) and build_task(other).config.num_kv_pairs == 3


@pytest.mark.parametrize("name", ["mqar", "digits"])
def test_a_shared_task_hands_every_trial_the_same_data(name):
    """What sharing a task across trials relies on: the same seed gives the same stream on every call, and the
    held-out batches never change, however much an earlier trial consumed or modified what it was handed."""
    from nas import registry

    entry = registry.get("task", name)
    task = entry.cls(entry.cls.tiny_config(16)) if name == "mqar" else entry.cls(entry.config())
    first = [tuple(t.clone() for t in b) for b in itertools.islice(task.train_batches(4, seed=7), 3)]
    held_out = [tuple(t.clone() for t in b) for b in task.eval_batches(8)]
    for x, y in itertools.islice(task.train_batches(4, seed=7), 5):  # a trial that consumes and scribbles
        x.zero_()
        y.zero_()
    for x, y in task.eval_batches(8):
        x.zero_()
        y.zero_()
    again = list(itertools.islice(task.train_batches(4, seed=7), 3))
    assert all(torch.equal(a, b) for p, q in zip(first, again) for a, b in zip(p, q))
    assert all(torch.equal(a, b) for p, q in zip(held_out, task.eval_batches(8)) for a, b in zip(p, q))
