"""Knowledge distillation as a training option: the loss against its formula, teachers saved as a search saves
them, and a trial that learns from one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas.model import build_model
from nas.spec import DistillConfig, load_spec
from nas.train import distill_loss, load_teacher, train
from nas.trial import run_trial


def save(model, arch, folder, as_search_does: bool = False):
    """Save like a search: a trial_N.safetensors + trial_N.json pair, or an MLflow `model/` folder."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / "trial_3" if as_search_does else folder
    weights = f"{stem}.safetensors" if as_search_does else folder / "weights.safetensors"
    arch_file = f"{stem}.json" if as_search_does else folder / "architecture.json"
    save_model(model, str(weights))
    with open(arch_file, "w") as f:
        f.write(arch.model_dump_json())
    return str(weights) if as_search_does else str(folder)


def test_distill_loss_is_the_formula():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    targets = torch.tensor([[1, -100, 2, -100, 3], [-100, -100, 4, 5, 6]])
    T = 3.0
    expected, n = 0.0, 0
    for b in range(2):
        for t in range(5):
            if targets[b, t] != -100:
                p = F.softmax(teacher[b, t] / T, -1)
                q = F.softmax(student[b, t] / T, -1)
                expected += (p * (p.log() - q.log())).sum().item()
                n += 1
    assert distill_loss(student, teacher, targets, T).item() == pytest.approx(T * T * expected / n, rel=1e-5)
    assert distill_loss(teacher, teacher, targets, T).item() == pytest.approx(0.0, abs=1e-6)
    classes = torch.randn(4, 10, generator=g)  # (B, classes) logits of an encoder task
    assert distill_loss(classes, classes, torch.arange(4), 1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("as_search_does", [False, True])
def test_teacher_round_trip(tmp_path, make_task, make_arch, as_search_does):
    task, arch = make_task(), make_arch(position="relative")  # learned bias shared by every layer
    torch.manual_seed(0)
    model = build_model(arch, task).eval()
    path = save(model, arch, tmp_path / "teacher", as_search_does)
    teacher = load_teacher(DistillConfig(teacher=path), task, torch.device("cpu"))
    x, _ = task.example_batch(2)
    with torch.no_grad():
        assert torch.equal(teacher(x), model(x))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_missing_or_mismatched_teacher(tmp_path, make_task, make_arch, write_spec, tiny_spec_text):
    from nas.spec import SpecError

    spec = tiny_spec_text.replace("training:\n", f"training:\n      distill: {{teacher: {tmp_path / 'nope'}}}\n")
    with pytest.raises(SpecError, match="missing"):
        load_spec(write_spec(spec))
    model = build_model(make_arch(), make_task(vocab_size=64))
    path = save(model, make_arch(), tmp_path / "other_task")
    with pytest.raises(ValueError, match="does not fit"):
        load_teacher(DistillConfig(teacher=path), make_task(vocab_size=32), torch.device("cpu"))


def test_a_student_learns_from_its_teacher(tmp_path, make_task, make_arch, write_spec, tiny_spec_text):
    spec = load_spec(write_spec(tiny_spec_text)).spec
    task = make_task()
    teacher_arch = make_arch(d_model=32, n_layers=1)
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, task)
    train(teacher, task, spec.training, torch.device("cpu"))
    path = save(teacher.eval(), teacher_arch, tmp_path / "teacher")

    # alpha = 1: the student only imitates the teacher; its KL to the teacher must fall.
    cfg = spec.training.model_copy(update={"distill": DistillConfig(teacher=path, alpha=1.0, temperature=1.0)})
    student_arch = make_arch(d_model=16, n_layers=1)
    x, y = task.example_batch(32)

    def kl(student) -> float:
        with torch.no_grad():
            return distill_loss(student(x), teacher(x), y, 1.0).item()

    torch.manual_seed(1)
    student = build_model(student_arch, task)
    before = kl(student.eval())
    train(student, task, cfg, torch.device("cpu"))
    assert kl(student.eval()) < 0.7 * before

    distilled = spec.model_copy(update={"training": cfg})
    result = run_trial(distilled, student_arch)
    assert result.status == "ok", result.reason
    assert all(math.isfinite(loss) for _, loss in result.curve)
