"""A NaN or inf loss or weight stops the run with an error naming stage, epoch and step and
keeps the last good checkpoint; ``on_nan: skip_batch`` leaves such batches out instead."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError, PrunekitError
from prunekit.files import load_checkpoint
from prunekit.training import TrainConfig, Trainer
from prunekit.training.trainer import TrainingDiverged


def data(n: int = 64, poison: int | None = None) -> DataLoader:
    """Two separable classes in 2-D, 8 batches of 8 (unshuffled: batch k is rows 8k..8k+7);
    ``poison`` puts a NaN into that row."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None]
    if poison is not None:
        x[poison, 0] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(2, 2)


def config(**options) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "lr": 0.1, "schedule": "constant", "progress": False,
                          **options})


class NanAt:
    """A penalty that turns NaN at one (epoch, step), both from 1."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.epoch, self.step = (epoch, step), 1, 0

    def penalty(self):
        self.step += 1
        return float("nan") if (self.epoch, self.step) == self.at else 0.0

    def end_epoch(self):
        self.epoch, self.step = self.epoch + 1, 0


class InfWeightAfter:
    """Sets a weight to inf after one (epoch, step): the loss of that step was finite."""

    def __init__(self, net: nn.Module, epoch: int, step: int) -> None:
        self.net, self.at, self.epoch, self.step = net, (epoch, step), 1, 0

    def after_step(self):
        self.step += 1
        if (self.epoch, self.step) == self.at:
            with torch.no_grad():
                self.net.weight[0, 0] = float("inf")

    def end_epoch(self):
        self.epoch, self.step = self.epoch + 1, 0


def test_a_nan_loss_stops_naming_stage_epoch_step_and_keeps_the_good_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    net = model()
    trainer = Trainer(net, config(), data(), plugins=[NanAt(2, 3)], checkpoint_path=path,
                      stage="prune")
    with pytest.raises(TrainingDiverged, match=r"prune epoch 2 step 3: the loss is nan") as err:
        trainer.fit()
    assert (err.value.stage, err.value.epoch, err.value.step) == ("prune", 2, 3)
    assert isinstance(err.value, PrunekitError) and "epoch 1 is kept" in str(err.value)
    saved = load_checkpoint(path, verified=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_an_inf_weight_never_reaches_a_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    net = model()
    trainer = Trainer(net, config(), data(), plugins=[InfWeightAfter(net, 2, 8)],
                      checkpoint_path=path, stage="retrain")
    # the last step of epoch 2: no later loss sees it, the check before the checkpoint does
    with pytest.raises(TrainingDiverged, match=r"retrain epoch 2 step 8: weights weight hold"):
        trainer.fit()
    assert load_checkpoint(path, verified=True)["epoch"] == 1


def test_skip_batch_leaves_out_exactly_the_bad_batches_and_resumes_a_stopped_run(tmp_path):
    path = tmp_path / "ckpt.pt"
    stopped = Trainer(model(), config(), data(poison=21), checkpoint_path=path)
    with pytest.raises(TrainingDiverged, match="epoch 1 step 3"):
        stopped.fit()
    assert not path.exists()  # nothing good to keep yet

    steps = []
    net = model()
    trainer = Trainer(net, config(on_nan="skip_batch"), data(poison=21), checkpoint_path=path,
                      on_step=lambda: steps.append(1))
    history = trainer.fit(resume=True)
    assert [r["skipped_batches"] for r in history] == [1, 1, 1]
    assert len(steps) == 3 * 7
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert history[-1]["train_accuracy"] > 0.8

    # the same as training on the data without that batch (rows 16..23)
    clean = data()
    kept = torch.cat([torch.arange(0, 16), torch.arange(24, 64)])
    x, y = clean.dataset.tensors
    reference = model()
    Trainer(reference, config(), DataLoader(TensorDataset(x[kept], y[kept]), batch_size=8)).fit()
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_on_nan_is_checked():
    with pytest.raises(ConfigError, match="on_nan"):
        TrainConfig(on_nan="ignore")
