"""Distillation from the dense model: the student learns what the teacher knows."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prunekit.training.trainer as trainer_module
from compress_helpers import blob_data, tiny_net
from prunekit.errors import ConfigError
from prunekit.files import load_checkpoint
from prunekit.pipeline import Run, run_recipe
from prunekit.recipe import load_recipe
from prunekit.training import Trainer, evaluate


def loader(x, y, shuffle=True):
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0))


def config(**overrides):
    return {"epochs": 6, "optimizer": "adam", "lr": 0.01, "schedule": "constant",
            "progress": False, **overrides}


@pytest.fixture(scope="module")
def teacher():
    x, y = blob_data(384, seed=0)
    model = tiny_net(seed=0)
    Trainer(model, config(epochs=8), loader(x, y)).fit()
    return model


def test_student_learns_from_the_teachers_outputs_alone(teacher):
    """Trained on shuffled (meaningless) labels, a student learns the task only through the
    teacher: with distill 1 it scores like the teacher on the true labels, without it near
    chance (4 classes)."""
    x, y = blob_data(384, seed=1)
    wrong = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    test = loader(*blob_data(256, seed=2), shuffle=False)
    taught_by = {}
    for weight in (0.0, 1.0):
        student = tiny_net(seed=3)
        Trainer(student, config(distill=weight), loader(x, wrong), teacher=teacher).fit()
        taught_by[weight] = evaluate(student, test)["accuracy"]
    assert evaluate(teacher, test)["accuracy"] > 0.9
    assert taught_by[1.0] > 0.85
    assert taught_by[0.0] < 0.5


def test_the_teacher_never_changes(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in teacher.parameters()]
    x, y = blob_data(96, seed=4)
    Trainer(tiny_net(seed=1), config(epochs=1, distill=0.5), loader(x, y), teacher=teacher).fit()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for g, p in zip(grads, teacher.parameters(), strict=True):  # no gradient reached it
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert not teacher.training
    assert all(p.is_contiguous() for p in teacher.parameters())


def test_distill_needs_a_teacher_and_a_weight_in_range():
    x, y = blob_data(32)
    with pytest.raises(ConfigError, match="needs a teacher"):
        Trainer(tiny_net(), config(distill=0.5), loader(x, y))
    with pytest.raises(ConfigError, match="distill"):
        Trainer(tiny_net(), config(distill=1.5), loader(x, y), teacher=tiny_net())
    with pytest.raises(ConfigError, match="distill_temperature"):
        Trainer(tiny_net(), config(distill=0.5, distill_temperature=0), loader(x, y),
                teacher=tiny_net())


RECIPE = """\
name: distill
model: {name: lenet5}
data: {name: synthetic, batch_size: 32, options: {n: 96, n_test: 32}}
train: {epochs: 1, optimizer: sgd, lr: 0.05}
prune: {method: magnitude, targets: [{layers: "fc*", sparsity: 0.8}]}
retrain: {epochs: 1, optimizer: adam, lr: 0.001, distill: 0.7}
"""


def test_a_recipe_stage_distills_from_the_dense_model(tmp_path, monkeypatch):
    """The retraining stage's teacher is the dense model of dense.pt, not the pruned one,
    and its outputs reach the loss at the stage's weight and temperature."""
    seen, teachers = [], []
    real_loss, real_teacher = trainer_module.distilled_loss, Run.teacher

    def loss_spy(hard, student, taught, weight, temperature):
        seen.append((weight, temperature))
        return real_loss(hard, student, taught, weight, temperature)

    def teacher_spy(self):
        teachers.append(real_teacher(self))
        return teachers[-1]

    monkeypatch.setattr(trainer_module, "distilled_loss", loss_spy)
    monkeypatch.setattr(Run, "teacher", teacher_spy)
    run_recipe(load_recipe(text=RECIPE), tmp_path / "run", progress=False, echo=lambda s: None)
    assert seen == [(0.7, 4.0)] * 3  # 96 samples in batches of 32, one epoch
    dense = load_checkpoint(tmp_path / "run" / "dense.pt")["state_dict"]
    pruned = load_checkpoint(tmp_path / "run" / "pruned.pt")["state_dict"]
    taught = teachers[0].state_dict()
    assert all(torch.equal(taught[k], dense[k]) for k in dense)
    assert not torch.equal(taught["fc1.weight"], pruned["fc1.weight"])


def test_dense_training_cannot_distill():
    with pytest.raises(ConfigError, match="no teacher") as info:
        load_recipe(text=RECIPE.replace("lr: 0.05}", "lr: 0.05, distill: 0.5}"))
    assert "distill" in str(info.value)
