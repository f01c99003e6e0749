"""The trainer: learning, schedules, plugins, user objects, checkpoints and exact resume."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit.files
import prunekit.training.trainer as trainer_module
from prunekit.errors import ConfigError, DataError, PrunekitError
from prunekit.files import load_checkpoint
from prunekit.training import (
    TrainConfig,
    Trainer,
    build_optimizer,
    build_scheduler,
    evaluate,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine thread
    contention makes each step tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CENTERS = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])


def blobs(n: int, seed: int) -> TensorDataset:
    """Three well separated Gaussian blobs in 2-D, one class each."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    points = CENTERS[labels] + 0.5 * torch.randn(n, 2, generator=g)
    return TensorDataset(points, labels)


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def loader(ds: TensorDataset, batch_size: int = 16, shuffle: bool = True,
           seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


def config(**overrides) -> TrainConfig:
    base = {"epochs": 2, "lr": 0.05, "schedule": "constant", "progress": False}
    base.update(overrides)
    return TrainConfig(**base)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


class Recorder:
    """Counts hook calls and reports a progress field; holds a little state."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.events = [] if events is None else events
        self.penalties = 0
        self.steps = 0
        self.epochs = 0

    def penalty(self) -> float:
        self.penalties += 1
        return 0.0

    def after_step(self) -> None:
        self.steps += 1
        self.events.append("step")

    def end_epoch(self) -> None:
        self.epochs += 1
        self.events.append("end")

    def progress(self) -> dict[str, float]:
        return {"calls": float(self.steps)}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs}

    def load_state_dict(self, d: dict) -> None:
        self.steps, self.epochs = d["steps"], d["epochs"]


class L2(nn.Module):
    """A weight-shrinking penalty plugin."""

    def __init__(self, model: nn.Module, strength: float) -> None:
        super().__init__()
        self.params = [p for n, p in model.named_parameters() if n.endswith("weight")]
        self.strength = strength

    def penalty(self) -> torch.Tensor:
        return self.strength * sum((p**2).sum() for p in self.params)


class Anchor:
    """An ADMM-like plugin: pulls weights towards Z, which moves and tightens every epoch."""

    def __init__(self, model: nn.Module) -> None:
        self.param = model[0].weight
        self.z = torch.zeros_like(self.param)
        self.rho = 0.01

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.rho * ((self.param - self.z) ** 2).sum()

    def end_epoch(self) -> None:
        self.z = 0.5 * self.param.detach().clone()
        self.rho *= 1.5

    def progress(self) -> dict[str, float]:
        return {"rho": self.rho, "residual": float((self.param.detach() - self.z).norm())}

    def state_dict(self) -> dict:
        return {"z": self.z.clone(), "rho": self.rho}

    def load_state_dict(self, d: dict) -> None:
        self.z, self.rho = d["z"].clone(), d["rho"]


# --------------------------------------------------------------------- learning
def test_learns_separable_blobs():
    model = mlp()
    cfg = TrainConfig(epochs=6, lr=0.05, schedule="cosine", progress=False)
    history = Trainer(model, cfg, loader(blobs(240, 1), batch_size=24),
                      loader(blobs(120, 2), batch_size=60, shuffle=False)).fit()
    assert len(history) == 6
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    expected = {"stage", "epoch", "lr", "loss", "task_loss", "penalty", "train_accuracy",
                "test_loss", "test_accuracy", "seconds"}
    assert expected <= set(history[0])
    assert history[-1]["train_accuracy"] > 0.95
    assert history[-1]["test_accuracy"] > 0.95
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(r["penalty"] == 0.0 and r["loss"] == r["task_loss"] for r in history)


# --------------------------------------------------------- optimizers, schedules
C1 = 0.5 * (1 + math.cos(math.pi / 4))
C3 = 0.5 * (1 + math.cos(3 * math.pi / 4))


@pytest.mark.parametrize("options, expected", [
    ({"epochs": 4, "schedule": "cosine"}, [0.1, 0.1 * C1, 0.05, 0.1 * C3]),
    ({"epochs": 6, "schedule": "cosine", "warmup_epochs": 2},
     [0.05, 0.1, 0.1, 0.1 * C1, 0.05, 0.1 * C3]),
    ({"epochs": 4, "schedule": "step", "milestones": [2, 3]}, [0.1, 0.1, 0.01, 0.001]),
    ({"epochs": 5, "schedule": "step", "step_size": 2, "gamma": 0.5},
     [0.1, 0.1, 0.05, 0.05, 0.025]),
    ({"epochs": 3, "schedule": "constant", "warmup_epochs": 2}, [0.05, 0.1, 0.1]),
])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_learning_rate_sequence(options, expected, optimizer):
    cfg = TrainConfig(lr=0.1, optimizer=optimizer, progress=False, **options)
    history = Trainer(mlp(), cfg, loader(blobs(16, 0), batch_size=8)).fit()
    assert [r["lr"] for r in history] == pytest.approx(expected, rel=1e-12)


class Restarter:
    """Asks for a learning-rate restart at the end of the given epochs (1-based), and for
    a stop at the end of ``stop_after``; its flags are state, as ADMM's are."""

    def __init__(self, restart_at: tuple[int, ...], cycle: int | None,
                 stop_after: int | None = None) -> None:
        self.restart_at, self.lr_cycle_epochs, self.stop_after = restart_at, cycle, stop_after
        self.epochs = 0
        self.lr_reset_pending = False
        self.stop_requested = False

    def end_epoch(self) -> None:
        self.epochs += 1
        self.lr_reset_pending = self.epochs in self.restart_at
        self.stop_requested = self.epochs == self.stop_after

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "pending": self.lr_reset_pending,
                "stop": self.stop_requested}

    def load_state_dict(self, d: dict) -> None:
        self.epochs, self.lr_reset_pending, self.stop_requested = (
            d["epochs"], d["pending"], d["stop"])


@pytest.mark.parametrize("cycle, expected", [
    # cosine over 6 epochs until the restart after epoch 2, then cycles of 2 epochs
    (2, [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 6)), 0.1, 0.05, 0.1, 0.05]),
    # no cycle length: the restart anneals over the epochs left (4)
    (None, [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 6)), 0.1, 0.1 * C1, 0.05, 0.1 * C3]),
])
def test_plugin_restarts_the_learning_rate(cycle, expected):
    cfg = TrainConfig(lr=0.1, epochs=6, schedule="cosine", progress=False)
    plugin = Restarter(restart_at=(2,), cycle=cycle)
    history = Trainer(mlp(), cfg, loader(blobs(16, 0), batch_size=8), plugins=[plugin]).fit()
    assert [r["lr"] for r in history] == pytest.approx(expected, rel=1e-12)
    assert plugin.lr_reset_pending is False  # the trainer took the request


def test_plugin_stop_ends_the_run_and_survives_resume(tmp_path):
    cfg = TrainConfig(lr=0.1, epochs=6, schedule="cosine", progress=False)
    path = tmp_path / "ckpt.pt"
    history = Trainer(mlp(), cfg, loader(blobs(16, 0), batch_size=8),
                      plugins=[Restarter((), None, stop_after=3)], checkpoint_path=path).fit()
    assert [r["epoch"] for r in history] == [1, 2, 3]
    again = Trainer(mlp(), cfg, loader(blobs(16, 0), batch_size=8),
                    plugins=[Restarter((), None)], checkpoint_path=path).fit(resume=True)
    assert without_seconds(again) == without_seconds(history)  # still stopped


def test_resume_inside_a_restarted_cycle_is_exact(tmp_path):
    cfg = TrainConfig(lr=0.1, epochs=5, schedule="cosine", momentum=0.9, progress=False)

    def run(stop: int | None, resume: bool = False):
        plugin = Restarter(restart_at=(1, 3), cycle=3)
        log = None
        if stop is not None:
            def log(record):
                if record["epoch"] == stop:
                    raise KeyboardInterrupt
        trainer = Trainer(mlp(), cfg, loader(blobs(32, 0), batch_size=8), plugins=[plugin],
                          checkpoint_path=tmp_path / "c.pt", log=log)
        return trainer.fit(resume=resume)

    with pytest.raises(KeyboardInterrupt):
        run(stop=2)
    resumed = run(stop=None, resume=True)
    (tmp_path / "c.pt").unlink()
    assert without_seconds(resumed) == without_seconds(run(stop=None))
    assert len({r["lr"] for r in resumed}) < 5  # the cycles repeat rates


def test_build_scheduler_steps_once_per_epoch():
    cfg = TrainConfig(epochs=4, lr=0.1, schedule="step", milestones=[1, 3], gamma=0.5)
    opt = build_optimizer([nn.Parameter(torch.ones(2))], cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.05, 0.05, 0.025])


@pytest.mark.parametrize("name, expected", [
    ("sgd", [1.98, -3.96]),      # w - lr * wd * w
    ("adamw", [1.98, -3.96]),    # decoupled: w * (1 - lr * wd), then a zero Adam step
    ("adam", [1.9, -3.9]),       # L2 in the gradient, normalised by Adam: w - lr * sign(w)
])
def test_build_optimizer_applies_weight_decay_its_own_way(name, expected):
    p = nn.Parameter(torch.tensor([2.0, -4.0]))
    opt = build_optimizer([p], TrainConfig(optimizer=name, lr=0.1, momentum=0.9,
                                           weight_decay=0.1))
    p.grad = torch.zeros_like(p)
    opt.step()
    assert p.detach().tolist() == pytest.approx(expected, abs=1e-6)


def test_build_optimizer_sgd_options():
    opt = build_optimizer([nn.Parameter(torch.ones(1))],
                          TrainConfig(lr=0.2, momentum=0.8, nesterov=True, weight_decay=5e-4))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        0.2, 0.8, True, 5e-4)


def test_grad_clip_bounds_each_update():
    ds = TensorDataset(torch.randn(8, 2) * 50, torch.arange(8) % 3)

    def step_size(clip):
        model = mlp()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        cfg = config(epochs=1, lr=1.0, momentum=0.0, grad_clip=clip)
        Trainer(model, cfg, loader(ds, batch_size=8)).fit()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm())

    assert 0 < step_size(0.01) <= 0.01 + 1e-6
    assert step_size(None) > 0.1


# ---------------------------------------------------------------------- plugins
def test_plugin_hooks_are_called_in_order():
    events: list[str] = []

    class CountingTestSet(list):
        def __iter__(self):
            events.append("eval")
            return super().__iter__()

    test_set = CountingTestSet(loader(blobs(12, 3), shuffle=False))
    plugin = Recorder(events)
    calls = {"step": 0, "epoch": 0, "loss": 0}
    logged = []

    def on_step():
        calls["step"] += 1

    def on_epoch_end():
        calls["epoch"] += 1

    def extra_loss():
        calls["loss"] += 1
        return 0.0

    trainer = Trainer(mlp(), config(epochs=3), loader(blobs(64, 0)), test_set,
                      plugins=[plugin], on_step=on_step, on_epoch_end=on_epoch_end,
                      extra_loss=extra_loss, log=logged.append)
    history = trainer.fit()
    batches = 4  # 64 samples / 16
    assert plugin.penalties == plugin.steps == 3 * batches
    assert plugin.epochs == 3
    assert calls == {"step": 3 * batches, "epoch": 3, "loss": 3 * batches}
    assert events == (["step"] * batches + ["end", "eval"]) * 3
    assert [r["calls"] for r in history] == [4.0, 8.0, 12.0]
    assert logged == history


def test_penalty_shrinks_weights_and_is_reported():
    def train(penalty: str | None):
        model = mlp()
        l2 = L2(model, 0.2)
        kwargs = {"plugins": [l2]} if penalty == "plugin" else {}
        if penalty == "function":
            kwargs["extra_loss"] = l2.penalty
        history = Trainer(model, config(epochs=4), loader(blobs(96, 0), batch_size=24),
                          **kwargs).fit()
        with torch.no_grad():
            norm = float(torch.cat([model[i].weight.flatten() for i in (0, 3)]).norm())
        return model, history, norm

    _, plain_history, plain_norm = train(None)
    model, history, norm = train("plugin")
    assert norm < 0.6 * plain_norm
    assert all(r["penalty"] > 0 for r in history)
    assert all(r["loss"] == pytest.approx(r["task_loss"] + r["penalty"]) for r in history)
    assert all(r["penalty"] == 0.0 for r in plain_history)

    # The same penalty given as a plain function trains bit-identically.
    fn_model, fn_history, _ = train("function")
    assert without_seconds(fn_history) == without_seconds(history)
    for k, v in model.state_dict().items():
        assert torch.equal(fn_model.state_dict()[k], v)


def test_plugin_errors_are_clear():
    with pytest.raises(ConfigError, match="is a class"):
        Trainer(mlp(), config(), loader(blobs(8, 0)), plugins=[Recorder])
    with pytest.raises(ConfigError, match="none of the hooks"):
        Trainer(mlp(), config(), loader(blobs(8, 0)), plugins=[object()])

    class Clash(Recorder):
        def progress(self):
            return {"loss": 1.0}

    with pytest.raises(ConfigError, match="'loss'"):
        Trainer(mlp(), config(epochs=1), loader(blobs(8, 0)), plugins=[Clash()]).fit()


def test_unsaveable_plugin_state_is_named_before_writing(tmp_path):
    class Stateful(Recorder):
        def state_dict(self):
            return {"fn": print}

    path = tmp_path / "ckpt.pt"
    trainer = Trainer(mlp(), config(epochs=1), loader(blobs(8, 0)), plugins=[Stateful()],
                      checkpoint_path=path)
    with pytest.raises(ConfigError, match=r"checkpoint\['plugins'\]\[0\]\['state'\]\['fn'\]"):
        trainer.fit()
    assert not path.exists()


# ------------------------------------------------------------ user objects
def test_user_optimizer_and_loss_are_used_as_is(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the trainer built its own optimizer")

    monkeypatch.setattr(trainer_module, "build_optimizer", no_build)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    calls = {"n": 0}

    def loss_fn(outputs, targets):
        calls["n"] += 1
        return F.cross_entropy(outputs, targets)

    trainer = Trainer(model, config(epochs=2, lr=0.7), loader(blobs(32, 0)),
                      loader(blobs(16, 1), shuffle=False), optimizer=opt, loss_fn=loss_fn)
    history = trainer.fit()
    assert trainer.optimizer is opt
    assert trainer.loss_fn is loss_fn
    assert [r["lr"] for r in history] == [0.02, 0.02]
    first = next(iter(model.parameters()))
    assert int(opt.state[first]["step"]) == 2 * 2  # 2 epochs x 2 batches
    assert calls["n"] == 2 * 2 + 2 * 1  # training steps + one test batch per epoch


# ------------------------------------------------------------------ evaluate
def test_evaluate_weights_batches_by_size_and_restores_mode():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])  # the third is wrong
    model.train()
    result = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3), "cpu")
    assert model.training
    assert result["accuracy"] == 0.75
    assert result["loss"] == pytest.approx(float(F.cross_entropy(x, y)))


def test_evaluate_regression_has_no_accuracy():
    model = nn.Linear(3, 1)
    ds = TensorDataset(torch.randn(5, 3), torch.randn(5, 1))
    result = evaluate(model, DataLoader(ds, batch_size=2), "cpu", loss_fn=nn.MSELoss())
    with torch.no_grad():
        expected = float(F.mse_loss(model(ds.tensors[0]), ds.tensors[1]))
    assert result["accuracy"] is None
    assert result["loss"] == pytest.approx(expected)


# ------------------------------------------------- checkpoints and resume
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_checkpoint_round_trip_loads_weights_only(tmp_path, optimizer):
    path = tmp_path / "run" / "ckpt.pt"
    model = mlp()
    plugin = Recorder()
    cfg = config(epochs=3, schedule="step", milestones=[1], optimizer=optimizer)
    trainer = Trainer(model, cfg, loader(blobs(32, 0)), plugins=[plugin], checkpoint_path=path,
                      stage="retrain")
    history = trainer.fit()
    ckpt = load_checkpoint(path)
    assert torch.load(path, weights_only=True).keys() == ckpt.keys()
    assert ckpt["epoch"] == 3 and ckpt["stage"] == "retrain"
    assert ckpt["history"] == history
    assert ckpt["config"] == cfg.to_dict()
    assert ckpt["plugins"] == [{"name": "Recorder", "state": {"steps": 6, "epochs": 3}}]
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    assert ckpt["optimizer"]["state"]  # momentum buffers or Adam moments
    assert ckpt["scheduler"]["last_epoch"] == 3
    assert os.listdir(path.parent) == ["ckpt.pt"]  # no temp files left


def _resume_setup(model_seed: int, loader_seed: int):
    model = mlp(model_seed, dropout=0.3)
    cfg = TrainConfig(epochs=4, lr=0.05, momentum=0.9, nesterov=True, schedule="cosine",
                      warmup_epochs=1, seed=7, progress=False)
    return model, cfg, loader(blobs(48, 0), seed=loader_seed), Anchor(model)


def test_resume_is_bit_identical(tmp_path, capsys):
    model, cfg, train_loader, anchor = _resume_setup(0, 0)
    full = Trainer(model, cfg, train_loader, loader(blobs(24, 1), shuffle=False),
                   plugins=[anchor], checkpoint_path=tmp_path / "full.pt").fit()

    path = tmp_path / "part.pt"

    def crash_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    model_b, cfg_b, loader_b, anchor_b = _resume_setup(0, 0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model_b, cfg_b, loader_b, loader(blobs(24, 1), shuffle=False),
                plugins=[anchor_b], checkpoint_path=path, log=crash_after_two).fit()
    assert load_checkpoint(path)["epoch"] == 2

    # A new process would start from other weights and generator states: all must be restored.
    model_c, cfg_c, loader_c, anchor_c = _resume_setup(123, 999)
    capsys.readouterr()
    resumed = Trainer(model_c, cfg_c, loader_c, loader(blobs(24, 1), shuffle=False),
                      plugins=[anchor_c], checkpoint_path=path).fit(resume=True)
    assert f"resume: train continues after epoch 2 of {cfg_c.epochs}" in capsys.readouterr().err
    assert without_seconds(resumed) == without_seconds(full)
    for k, v in model.state_dict().items():
        assert torch.equal(model_c.state_dict()[k], v), k
    assert torch.equal(anchor_c.z, anchor.z) and anchor_c.rho == anchor.rho


def test_finished_run_resumed_does_nothing(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, cfg, train_loader, anchor = _resume_setup(0, 0)
    history = Trainer(model, cfg, train_loader, plugins=[anchor], checkpoint_path=path).fit()
    saved = path.read_bytes()
    model2, _, loader2, _ = _resume_setup(5, 5)
    recorder = Recorder()
    anchor2 = Anchor(model2)

    class Tracker:
        def after_step(self):
            recorder.after_step()

    again = Trainer(model2, cfg, loader2, plugins=[anchor2, Tracker()], checkpoint_path=path)
    with pytest.raises(DataError, match="plugins"):
        again.fit(resume=True)  # different plugin list is refused
    again = Trainer(model2, cfg, loader2, plugins=[anchor2], checkpoint_path=path)
    assert again.fit(resume=True) == history
    assert path.read_bytes() == saved
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v)


def test_resume_without_checkpoint_starts_fresh_and_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_path"):
        Trainer(mlp(), config(), loader(blobs(8, 0))).fit(resume=True)
    path = tmp_path / "ckpt.pt"
    history = Trainer(mlp(), config(), loader(blobs(8, 0)), checkpoint_path=path).fit(resume=True)
    assert len(history) == 2 and load_checkpoint(path)["epoch"] == 2


def test_resume_refuses_other_options_or_stage(tmp_path):
    path = tmp_path / "ckpt.pt"
    Trainer(mlp(), config(epochs=1), loader(blobs(8, 0)), checkpoint_path=path).fit()
    with pytest.raises(ConfigError, match="lr: 0.05 -> 0.2"):
        Trainer(mlp(), config(epochs=1, lr=0.2), loader(blobs(8, 0)),
                checkpoint_path=path).fit(resume=True)
    with pytest.raises(ConfigError, match="stage 'train'"):
        Trainer(mlp(), config(epochs=1), loader(blobs(8, 0)), checkpoint_path=path,
                stage="retrain").fit(resume=True)
    # Display options may differ.
    Trainer(mlp(), config(epochs=1, progress=True), loader(blobs(8, 0)),
            checkpoint_path=path).fit(resume=True)


def test_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"

    def interrupt(fd):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the new file was being written

    def break_writes_after_two(record):
        if record["epoch"] == 2:
            monkeypatch.setattr(prunekit.files.os, "fsync", interrupt)

    trainer = Trainer(mlp(), config(epochs=3), loader(blobs(16, 0)), checkpoint_path=path,
                      log=break_writes_after_two)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    history = Trainer(mlp(), config(epochs=3), loader(blobs(16, 0)),
                      checkpoint_path=path).fit(resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3]


# ------------------------------------------------------------ progress, errors
def test_progress_line_without_a_terminal(capsys):
    Trainer(mlp(), config(epochs=2, progress=True), loader(blobs(16, 0), batch_size=8),
            plugins=[Recorder()],
            stage="prune").fit()
    err = capsys.readouterr().err
    assert "prune 1/2:" in err and "prune 2/2:" in err
    assert "calls=2" in err and "calls=4" in err and "train_accuracy=" in err


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "_interactive", lambda: True)
    Trainer(mlp(), config(epochs=1, progress=True), loader(blobs(16, 0), batch_size=8),
            loader(blobs(8, 1)), plugins=[Recorder()], stage="retrain").fit()
    err = capsys.readouterr().err
    assert "retrain 1/1" in err and "calls=2" in err and "test_accuracy=" in err


def test_progress_off_is_silent(capsys):
    Trainer(mlp(), config(epochs=1, progress=False), loader(blobs(16, 0))).fit()
    assert capsys.readouterr().err == ""


def test_diverging_loss_is_reported_and_not_checkpointed(tmp_path):
    path = tmp_path / "ckpt.pt"
    trainer = Trainer(mlp(), config(epochs=1), loader(blobs(8, 0)), checkpoint_path=path,
                      extra_loss=lambda: float("nan"))
    with pytest.raises(PrunekitError, match="loss is nan"):
        trainer.fit()
    assert not path.exists()


def test_bad_batches_and_devices_are_clear(monkeypatch):
    triples = DataLoader(TensorDataset(torch.randn(4, 2), torch.zeros(4).long(),
                                       torch.zeros(4)), batch_size=2)
    with pytest.raises(DataError, match="pair"):
        Trainer(mlp(), config(), triples).fit()
    with pytest.raises(DataError, match="no samples"):
        Trainer(mlp(), config(), []).fit()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        Trainer(mlp(), config(device="cuda"), loader(blobs(8, 0)))


# ------------------------------------------------------------------- config
@pytest.mark.parametrize("options, message", [
    ({"lrr": 0.1}, r"unknown train option 'lrr' \(did you mean 'lr'\?\)"),
    ({"lr": "fast"}, r"'lr' must be a number, got 'fast'"),
    ({"lr": 0}, r"'lr' must be > 0"),
    ({"lr": -1e-3}, r"'lr' must be > 0"),
    ({"epochs": -1}, r"'epochs' must be >= 0"),
    ({"epochs": 2.5}, r"'epochs' must be an integer"),
    ({"epochs": True}, r"'epochs' must be an integer"),
    ({"optimizer": "rmsprop"}, r"'optimizer' must be one of sgd, adam, adamw, got 'rmsprop'"),
    ({"schedule": "linear"}, r"'schedule' must be one of cosine, step, constant, got 'linear'"),
    ({"schedule": "step"}, r"'milestones'"),
    ({"schedule": "step", "milestones": [3, 2]}, r"strictly increasing"),
    ({"schedule": "step", "milestones": [2], "step_size": 2}, r"not both"),
    ({"milestones": "3"}, r"'milestones' must be a list of integers"),
    ({"step_size": 0}, r"'step_size' must be >= 1"),
    ({"momentum": 1.0}, r"'momentum' must be a number in \[0, 1\)"),
    ({"nesterov": True, "momentum": 0.0}, r"'nesterov'"),
    ({"grad_clip": 0}, r"'grad_clip' must be > 0"),
    ({"label_smoothing": 1.0}, r"'label_smoothing'"),
    ({"progress": "yes"}, r"'progress' must be true or false"),
    ({"device": "gpu0"}, r"'device'"),
    ({"weight_decay": -0.1}, r"'weight_decay' must be >= 0"),
    ({"lr": float("nan")}, r"'lr' must be a finite number"),
])
def test_bad_config_is_named(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(options)


def test_config_from_dict_accepts_yaml_values_and_round_trips():
    cfg = TrainConfig.from_dict({"lr": "1e-3", "epochs": 3, "milestones": (1, 2),
                                 "schedule": "step", "optimizer": "adamw"})
    assert cfg.lr == 0.001 and cfg.milestones == [1, 2]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict(None) == TrainConfig()
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_dict(["lr", 0.1])
    with pytest.raises(ConfigError, match="'lr' must be > 0"):
        TrainConfig(lr=-1.0)


def test_trainer_accepts_a_dict_config():
    trainer = Trainer(mlp(), {"epochs": 1, "progress": False, "optimizer": "adam", "lr": 0.01},
                      loader(blobs(8, 0)))
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    with pytest.raises(ConfigError, match="unknown train option 'lrr'"):
        Trainer(mlp(), {"lrr": 1}, loader(blobs(8, 0)))
