"""Training in channels-last: chosen for CPU conv models, invisible outside the stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit import methods
from prunekit.constraints import MaskEnforcer
from prunekit.errors import ConfigError
from prunekit.targets import resolve
from prunekit.training import TrainConfig, Trainer
from prunekit.training.layout import chosen_format


def conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))


def images(n: int = 96) -> DataLoader:
    """Three classes told apart by where a bright square sits."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    x = 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        x[i, 0, 2 * c:2 * c + 3, 1:4] += 1.0
    return DataLoader(TensorDataset(x, labels), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "optimizer": "adam", "lr": 0.01,
                          "schedule": "constant", "progress": False, **overrides})


def layouts_seen(model: nn.Module, option: str) -> tuple[set[bool], Trainer]:
    """Whether conv weights were channels-last at each step of a short training."""
    seen: set[bool] = set()
    weight = model[3].weight

    def look() -> None:
        seen.add(weight.is_contiguous(memory_format=torch.channels_last)
                 and not weight.is_contiguous())

    trainer = Trainer(model, config(memory_format=option), images(), on_step=look)
    trainer.fit()
    return seen, trainer


def test_auto_trains_cpu_convs_channels_last_and_gives_back_contiguous_weights():
    model = conv_net()
    params = list(model.parameters())
    seen, _ = layouts_seen(model, "auto")
    assert seen == {True}
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))


def test_contiguous_option_keeps_the_default_layout():
    seen, _ = layouts_seen(conv_net(), "contiguous")
    assert seen == {False}


def test_layout_changes_rounding_only():
    """Same seed, same data: the two layouts end at the same weights up to float rounding
    (and both learn the task)."""
    results = {}
    for option in ("channels_last", "contiguous"):
        model = conv_net()
        trainer = Trainer(model, config(memory_format=option, optimizer="sgd", lr=0.05),
                          images(), images())
        history = trainer.fit()
        results[option] = (torch.cat([p.detach().flatten() for p in model.parameters()]),
                           history[-1]["test_accuracy"])
    a, b = results["channels_last"][0], results["contiguous"][0]
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())
    assert not torch.equal(a, torch.cat([p.detach().flatten() for p in conv_net().parameters()]))
    assert results["channels_last"][1] > 0.9 and results["contiguous"][1] > 0.9


def test_auto_chooses_channels_last_only_for_conv_models():
    cpu = torch.device("cpu")
    assert chosen_format(nn.Linear(3, 2), "auto", cpu) is torch.contiguous_format
    assert chosen_format(conv_net(), "auto", cpu) is torch.channels_last
    assert chosen_format(conv_net(), "contiguous", cpu) is torch.contiguous_format
    assert chosen_format(nn.Linear(3, 2), "channels_last", cpu) is torch.channels_last


def test_failure_inside_training_still_restores_the_layout():
    model = conv_net()

    def boom() -> None:
        raise RuntimeError("stop here")

    trainer = Trainer(model, config(), images(), on_step=boom)
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit()
    assert all(p.is_contiguous() for p in model.parameters())


def test_admm_masks_hold_in_channels_last():
    """ADMM's projections and the masked retraining see channels-last weights: the
    hardened zeros must stay exactly zero, at the exact rate."""
    model = conv_net()
    targets = resolve(model, [{"layers": ["0", "3"], "scheme": "irregular", "sparsity": 0.75}])
    pruner = methods.get("admm", model, targets, rho=0.01, update_every=1)
    Trainer(model, config(epochs=2), images(), plugins=[pruner]).fit()
    frozen = pruner.freeze()
    enforcer = MaskEnforcer(model, frozen)
    retrain = Trainer(model, config(epochs=1), images(), plugins=[enforcer])
    enforcer.bind(retrain.optimizer)
    retrain.fit()
    for name in ("0.weight", "3.weight"):
        w = dict(model.named_parameters())[name]
        assert w.is_contiguous()
        assert int((w == 0).sum()) == round(0.75 * w.numel())


def test_unknown_memory_format_is_refused_by_name():
    with pytest.raises(ConfigError, match="memory_format"):
        TrainConfig(memory_format="nhwc")


def test_an_interrupted_channels_last_run_resumes_bitwise(tmp_path):
    """Checkpoints written in channels-last (weights and Adam moments) resume to exactly
    the weights of an uninterrupted run."""
    def run(path, stop=None, resume=False):
        model = conv_net()

        def log(record):
            if record["epoch"] == stop:
                raise KeyboardInterrupt

        trainer = Trainer(model, config(epochs=3), images(), checkpoint_path=path, log=log)
        trainer.fit(resume=resume)
        return model

    straight = run(tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", stop=1)
    resumed = run(tmp_path / "b.pt", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
