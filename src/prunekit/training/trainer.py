"""A plain train/evaluate loop with plugins, progress, exact resume and atomic checkpoints.

It is a convenience: the pruning methods work in any loop (see DESIGN.md); this one adds
what a long compression run needs: a checkpoint at every epoch end written atomically, and
a resume that continues bit for bit where the run stopped. Exactness comes from three rules:
every random source is reseeded from ``(seed, epoch)`` at the start of each epoch, the
learning-rate schedule is a pure function of the epoch (and of the epoch its current cycle
began, see below), and everything else that changes during training (weights, optimizer
buffers, plugin state, history, the cycle) is in the checkpoint.

Two optional plugin attributes steer the loop, read after every epoch's ``end_epoch``:

- ``lr_reset_pending`` (ADMM with ``reset_lr``): the learning rate restarts its schedule at
  the next epoch, decaying over ``lr_cycle_epochs`` epochs (the plugin's, else the epochs
  left), as ADMM-NN's solver restarts it at every Z/U update; the flag is then cleared;
- ``stop_requested`` (ADMM with a convergence tolerance): the run ends after this epoch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from tqdm import tqdm

from ..artifacts.formats import TRAIN_FORMAT
from ..errors import ConfigError, DataError, PrunekitError
from ..io import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .optim import build_optimizer, build_scheduler
from .plugins import FunctionPlugin, PluginSet, check_plain
from .seeding import seed_epoch

_CHECKPOINT_KEYS = ("format", "stage", "epoch", "model", "optimizer", "scheduler", "history",
                    "plugins", "config", "lr_cycle")
# Options that change how a run is shown or where it runs, not what it computes.
_RESUME_FREE_KEYS = ("progress", "device")
_HOOKS = ("penalty", "after_step", "end_epoch", "state_dict", "load_state_dict", "progress")


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without it is a config error."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"unknown device {name!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available")
    return device


def _unpack(batch: Any) -> tuple[Any, Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        kind = f"a {type(batch).__name__}"
        if isinstance(batch, list | tuple):
            kind += f" of length {len(batch)}"
        raise DataError(f"a batch must be a pair (inputs, targets), got {kind}")
    inputs, targets = batch
    if not isinstance(targets, Tensor):
        raise DataError(f"batch targets must be a tensor, got {type(targets).__name__}")
    return inputs, targets


def _to_device(inputs: Any, targets: Tensor, device: torch.device) -> tuple[Any, Tensor]:
    if isinstance(inputs, Tensor):
        inputs = inputs.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if not targets.is_floating_point() and targets.dtype != torch.long:
        targets = targets.long()  # class indices stored as int32/uint8 by some readers
    return inputs, targets


def _correct(outputs: Tensor, targets: Tensor) -> Tensor | None:
    """Number of right top-1 predictions, or None when the task is not classification."""
    if outputs.dim() != 2 or targets.dim() != 1 or targets.is_floating_point():
        return None
    return (outputs.argmax(dim=1) == targets).sum()


class _Meter:
    """Sample-weighted sums kept on the device, read once per epoch (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor | float] = {}
        self.correct: Tensor | int | None = 0
        self.seen = 0

    def add(self, n: int, correct: Tensor | None, **values: Tensor | float) -> None:
        for key, value in values.items():
            value = value.detach() if isinstance(value, Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value * n
        if correct is None or self.correct is None:
            self.correct = None
        else:
            self.correct = self.correct + correct
        self.seen += n

    def mean(self, key: str) -> float:
        return float(self.sums.get(key, 0.0)) / self.seen

    def accuracy(self) -> float | None:
        return None if self.correct is None else float(self.correct) / self.seen


def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu",
             loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Any]:
    """Mean loss and top-1 accuracy of ``model`` over ``loader`` (accuracy is None when the
    outputs are not class scores). The model's train/eval mode is restored afterwards."""
    device = resolve_device(device)
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    was_training = model.training
    model.eval()
    meter = _Meter()
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, targets = _to_device(*_unpack(batch), device)
                outputs = model(inputs)
                meter.add(targets.shape[0], _correct(outputs, targets),
                          loss=loss_fn(outputs, targets))
    finally:
        model.train(was_training)
    if meter.seen == 0:
        raise DataError("the evaluation loader yielded no samples")
    return {"loss": meter.mean("loss"), "accuracy": meter.accuracy()}


def _interactive() -> bool:
    """Draw a live bar only on a terminal; logs and captured output get one line per epoch."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _format_fields(fields: Mapping[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class Trainer:
    """Train ``model`` for ``config.epochs`` epochs, evaluating after each.

    ``plugins`` are objects with the optional hooks described in :mod:`.plugins`;
    ``on_step``, ``on_epoch_end`` and ``extra_loss`` take plain no-argument functions
    instead. A given ``optimizer`` or ``loss_fn`` is used as it is: the schedule then scales
    that optimizer's own learning rates. ``checkpoint_path`` enables an atomic checkpoint at
    every epoch end and :meth:`fit` ``(resume=True)``. ``log`` receives each epoch's record.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | Mapping[str, Any],
                 train_loader: Iterable, test_loader: Iterable | None = None, *,
                 plugins: Iterable[Any] = (),
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 optimizer: Optimizer | None = None,
                 checkpoint_path: str | os.PathLike | None = None,
                 stage: str = "train",
                 log: Callable[[dict[str, Any]], Any] | None = None,
                 on_step: Callable[[], Any] | None = None,
                 on_epoch_end: Callable[[], Any] | None = None,
                 extra_loss: Callable[[], Tensor | float] | None = None) -> None:
        if isinstance(config, Mapping):
            config = TrainConfig.from_dict(config)
        if not isinstance(config, TrainConfig):
            raise ConfigError(
                f"config must be a TrainConfig or a dict, got {type(config).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got "
                              f"{type(optimizer).__name__}")
        if log is not None and not callable(log):
            raise ConfigError(f"log must be callable, got {type(log).__name__}")
        self.config = config
        self.stage = str(stage)
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.train_loader = train_loader
        self.test_loader = test_loader
        plugin_list = _check_plugins(plugins)
        if on_step is not None or on_epoch_end is not None or extra_loss is not None:
            plugin_list.append(FunctionPlugin(on_step, on_epoch_end, extra_loss))
        self.plugins = PluginSet(plugin_list)
        self._eval_loss_fn = loss_fn
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss(
            label_smoothing=config.label_smoothing)
        if optimizer is None:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            optimizer = build_optimizer(trainable, config)
        self.optimizer = optimizer
        # The current learning-rate cycle: (first epoch, length or None for "to the end").
        self.lr_cycle: tuple[int, int | None] = (0, None)
        self.scheduler = build_scheduler(self.optimizer, config, cycle=lambda: self.lr_cycle)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.log = log
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self._forward_model = self._distribute(self.model)

    def _distribute(self, model: nn.Module) -> nn.Module:
        """The module that runs the training forward pass.

        The one place to wrap the model for data-parallel training (for example
        ``DistributedDataParallel`` under ``torchrun``); the training loop calls only what
        this returns, while evaluation and checkpoints use the bare ``self.model``. Samplers
        with ``set_epoch`` are already told the epoch by :func:`.seeding.seed_epoch`.
        """
        return model

    # ----------------------------------------------------------------- main loop
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the history (one record per epoch).

        With ``resume=True`` the checkpoint at ``checkpoint_path`` is loaded when it exists,
        and training continues from the epoch after it; a finished run does nothing more.
        """
        if resume:
            if self.checkpoint_path is None:
                raise ConfigError("fit(resume=True) needs a checkpoint_path")
            if self.checkpoint_path.exists():
                self._restore(self.checkpoint_path)
        for epoch in range(self.epoch, self.config.epochs):
            if self._stop_requested():
                break
            record = self._run_epoch(epoch)
            self.history.append(record)
            self.epoch = epoch + 1
            if self.checkpoint_path is not None:
                self.save(self.checkpoint_path)
            if self.log is not None:
                self.log(dict(record))
        return [dict(r) for r in self.history]

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        seed_epoch(self.config.seed, epoch, self.train_loader)
        lr = float(self.optimizer.param_groups[0]["lr"])
        bar = tqdm(self.train_loader, desc=f"{self.stage} {epoch + 1}/{self.config.epochs}",
                   leave=True, dynamic_ncols=True,
                   disable=not (self.config.progress and _interactive()))
        try:
            meter = self._train_batches(bar, epoch)
            self.plugins.end_epoch()
            self._take_lr_resets(epoch)
            self.scheduler.step()
            test = (evaluate(self.model, self.test_loader, self.device, self._eval_loss_fn)
                    if self.test_loader is not None else {"loss": None, "accuracy": None})
            record: dict[str, Any] = {
                "stage": self.stage, "epoch": epoch + 1, "lr": lr,
                "loss": meter.mean("loss"), "task_loss": meter.mean("task_loss"),
                "penalty": meter.mean("penalty"), "train_accuracy": meter.accuracy(),
                "test_loss": test["loss"], "test_accuracy": test["accuracy"],
            }
            record.update(self.plugins.progress())
            record["seconds"] = time.perf_counter() - start
            self._show(bar, record)
        finally:
            bar.close()
        return record

    def _train_batches(self, batches: Iterable, epoch: int) -> _Meter:
        self.model.train()
        meter = _Meter()
        for batch in batches:
            inputs, targets = _to_device(*_unpack(batch), self.device)
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self._forward_model(inputs)
            task_loss = self.loss_fn(outputs, targets)
            penalty = self.plugins.penalty()
            loss = task_loss + penalty
            loss.backward()
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.plugins.after_step()
            meter.add(targets.shape[0], _correct(outputs, targets),
                      loss=loss, task_loss=task_loss, penalty=penalty)
            if isinstance(batches, tqdm) and not batches.disable:
                batches.set_postfix_str(_format_fields(
                    {"loss": meter.mean("loss"), "acc": meter.accuracy()}), refresh=False)
        if meter.seen == 0:
            raise DataError(f"the training loader yielded no samples ({self.stage} epoch "
                            f"{epoch + 1})")
        value = meter.mean("loss")
        if not math.isfinite(value):
            raise PrunekitError(
                f"{self.stage} epoch {epoch + 1}: the training loss is {value}; lower the "
                f"learning rate or the penalty (the last checkpoint is kept)"
            )
        return meter

    def _take_lr_resets(self, epoch: int) -> None:
        """Start a new learning-rate cycle at ``epoch + 1`` if a plugin asked for one."""
        for plugin in self.plugins.plugins:
            if getattr(plugin, "lr_reset_pending", False):
                length = getattr(plugin, "lr_cycle_epochs", None)
                self.lr_cycle = (epoch + 1, None if length is None else int(length))
                plugin.lr_reset_pending = False

    def _stop_requested(self) -> bool:
        return any(getattr(p, "stop_requested", False) for p in self.plugins.plugins)

    def _show(self, bar: tqdm, record: dict[str, Any]) -> None:
        shown = {k: v for k, v in record.items() if k not in ("stage", "epoch", "seconds")}
        if not bar.disable:
            bar.set_postfix_str(_format_fields(shown))
        elif self.config.progress:
            print(f"{self.stage} {record['epoch']}/{self.config.epochs}: "
                  f"{_format_fields(shown)} ({record['seconds']:.1f}s)", file=sys.stderr)

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly; plain types only."""
        state = {
            "format": TRAIN_FORMAT,
            "stage": self.stage,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": [dict(r) for r in self.history],
            "plugins": self.plugins.state_dicts(),
            "config": self.config.to_dict(),
            "lr_cycle": list(self.lr_cycle),
        }
        check_plain(state, "checkpoint")
        return state

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` atomically (a crash leaves the previous file intact)."""
        return save_checkpoint(self.state_dict(), path)

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_FORMAT:
            raise DataError(f"{path} is not a prunekit training checkpoint")
        missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
        if missing:
            raise DataError(f"checkpoint {path} lacks {', '.join(missing)}")
        if ckpt["stage"] != self.stage:
            raise ConfigError(f"checkpoint {path} belongs to stage {ckpt['stage']!r}, "
                              f"not {self.stage!r}")
        self._check_same_config(ckpt["config"], path)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise DataError(f"checkpoint {path} does not fit this model/optimizer: {exc}") from exc
        start, length = ckpt["lr_cycle"]
        self.lr_cycle = (int(start), None if length is None else int(length))
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.plugins.load_state_dicts(ckpt["plugins"], str(path))
        self.epoch = int(ckpt["epoch"])
        self.history = [dict(r) for r in ckpt["history"]]

    def _check_same_config(self, saved: Mapping[str, Any], path: Path) -> None:
        """A resumed run must compute what the interrupted one would have computed."""
        current = self.config.to_dict()
        changed = [k for k in current
                   if k not in _RESUME_FREE_KEYS and saved.get(k) != current[k]]
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise ConfigError(f"checkpoint {path} was written with other train options ({diff});"
                              f" resume with the same options or start a fresh run")


def _check_plugins(plugins: Iterable[Any]) -> list[Any]:
    found = list(plugins)
    for plugin in found:
        if isinstance(plugin, type):
            raise ConfigError(f"plugin {plugin.__name__} is a class; pass an instance")
        if not any(hasattr(plugin, hook) for hook in _HOOKS):
            raise ConfigError(f"plugin {type(plugin).__name__} has none of the hooks "
                              f"{', '.join(_HOOKS)}")
    return found
