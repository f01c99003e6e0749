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

A NaN or inf loss is caught at the step it appears (one device sync per step, the price of
naming that step and of never taking it), a NaN or inf weight before the checkpoint it
would spoil; either stops the run (:class:`TrainingDiverged`, the last checkpoint kept) or,
with ``on_nan="skip_batch"``, the batch is left out. Under torchrun the model trains inside
DistributedDataParallel (:mod:`.distributed`): the ranks agree on every such decision,
their metrics are summed, rank 0 alone writes checkpoints, and after every epoch the
weights and plugin state are compared across ranks.
"""

from __future__ import annotations

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

from ..artifacts.versions import TRAIN_FORMAT
from ..errors import ConfigError, DataError, PrunekitError
from ..files import CorruptFileError, load_checkpoint, save_checkpoint, set_aside
from . import distributed
from .config import TrainConfig
from .distill import distilled_loss, frozen_teacher
from .layout import training_layout
from .optim import build_optimizer, build_scheduler
from .plugins import FunctionPlugin, PluginSet, check_plain
from .seeding import seed_epoch

_CHECKPOINT_KEYS = ("format", "stage", "epoch", "model", "optimizer", "scheduler", "history",
                    "plugins", "config", "lr_cycle")
# Options that change how a run is shown or where it runs, not what it computes.
# ``on_nan`` too: after a run stopped on a NaN, resuming with ``on_nan: skip_batch`` is the
# usual way on.
RESUME_FREE_KEYS = ("progress", "device", "on_nan", "memory_format")
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


class TrainingDiverged(PrunekitError):
    """The loss or the weights became NaN or inf; names the stage, epoch and step."""

    def __init__(self, message: str, *, stage: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.stage, self.epoch, self.step = stage, epoch, step


def _scalar(value: Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, Tensor) else float(value)


def _finite_grads(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class _Meter:
    """Sample-weighted sums kept on the device, read once per epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor | float] = {}
        self.correct: Tensor | int | None = 0
        self.seen = 0
        self.steps = 0  # batches drawn this epoch
        self.skipped = 0  # batches left out for a non-finite loss or gradient

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

    def reduce(self) -> None:
        """Sum the counts of every rank (each saw its own share of the data); one
        collective, run by every rank at the same point."""
        if not distributed.active():
            return
        keys = sorted(self.sums)
        has_correct = self.correct is not None
        values = [float(self.sums[k]) for k in keys] + [float(self.seen)]
        values.append(float(self.correct) if has_correct else 0.0)
        totals = distributed.all_sum(values)
        self.sums = dict(zip(keys, totals[:len(keys)], strict=True))
        self.seen = int(round(totals[len(keys)]))
        self.correct = totals[-1] if has_correct else None


def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
             loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Any]:
    """Mean loss and top-1 accuracy of ``model`` over ``loader`` (accuracy is None when the
    outputs are not class scores), with the batches moved to ``device`` (by default the
    model's own, so a model a trainer left on a GPU is evaluated there). The model's
    train/eval mode is restored afterwards. A loader made by
    :func:`.distributed.shard_loader` holds one rank's share: the counts of every rank are
    summed, so each rank returns the figures of the whole data set."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
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
    if distributed.is_sharded(loader):
        meter.reduce()
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
                 extra_loss: Callable[[], Tensor | float] | None = None,
                 teacher: nn.Module | None = None) -> None:
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
        self.device = distributed.local_device(resolve_device(config.device))
        self.model = model.to(self.device)
        if config.distill > 0 and teacher is None:
            raise ConfigError(f"train option 'distill' ({config.distill}) needs a teacher "
                              f"model: pass Trainer(..., teacher=dense_model)")
        self.teacher = (frozen_teacher(teacher, self.device)
                        if teacher is not None and config.distill > 0 else None)
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
        """The module that runs the training forward pass: ``DistributedDataParallel``
        when several ranks train (see :mod:`.distributed`), else the model itself.

        The training loop calls only what this returns, while evaluation and checkpoints use
        the bare ``self.model``. Samplers with ``set_epoch`` are already told the epoch by
        :func:`.seeding.seed_epoch`.
        """
        return distributed.wrap(model, self.device)

    # ----------------------------------------------------------------- main loop
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the history (one record per epoch).

        With ``resume=True`` the checkpoint at ``checkpoint_path`` is loaded when it exists,
        and training continues from the epoch after it; a finished run does nothing more.
        """
        if resume:
            if self.checkpoint_path is None:
                raise ConfigError("fit(resume=True) needs a checkpoint_path")
            if distributed.rank0_says(self.checkpoint_path.exists()):
                self._resume_from(self.checkpoint_path)
        with training_layout(self.model, self.config.memory_format, self.device), \
                training_layout(self.teacher, self.config.memory_format, self.device):
            for epoch in range(self.epoch, self.config.epochs):
                if self._stop_requested():
                    break
                record = self._run_epoch(epoch)
                self.history.append(record)
                self.epoch = epoch + 1
                if self.checkpoint_path is not None and distributed.is_main():
                    self.save(self.checkpoint_path)
                if self.log is not None:
                    self.log(dict(record))
        return [dict(r) for r in self.history]

    def _resume_from(self, path: Path) -> None:
        """Continue from ``path``, unless it fails its check: then it is set aside
        (``*.corrupt``) and the stage starts again from its first epoch, which ends in the
        same weights because every epoch is reseeded from (seed, epoch)."""
        failed: CorruptFileError | None = None
        try:
            self._restore(path)
        except CorruptFileError as exc:
            failed = exc
        if distributed.any_rank(failed is not None):
            if distributed.is_main():
                moved = set_aside(path)
                print(f"warning: {failed or path}; moved to {moved.name}, {self.stage} starts "
                      f"again from epoch 1", file=sys.stderr)
            distributed.barrier()
            return
        self._check_ranks_agree("the resumed checkpoint")
        if distributed.is_main():
            print(f"resume: {self.stage} continues after epoch {self.epoch} of "
                  f"{self.config.epochs}", file=sys.stderr)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        seed_epoch(self.config.seed, epoch, self.train_loader)
        lr = float(self.optimizer.param_groups[0]["lr"])
        bar = tqdm(self.train_loader, desc=f"{self.stage} {epoch + 1}/{self.config.epochs}",
                   leave=True, dynamic_ncols=True,
                   disable=not (self.config.progress and _interactive() and
                                distributed.is_main()))
        try:
            meter = self._train_batches(bar, epoch)
            distributed.broadcast_buffers(self.model)
            self._check_finite_weights(epoch, meter.steps)
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
            if meter.skipped:
                record["skipped_batches"] = meter.skipped
            # before the checkpoint, so that no rank ever saves or goes on from a drifted state
            self._check_ranks_agree(f"{self.stage} epoch {epoch + 1}")
            record["seconds"] = time.perf_counter() - start
            self._show(bar, record)
        finally:
            bar.close()
        return record

    def _train_batches(self, batches: Iterable, epoch: int) -> _Meter:
        self.model.train()
        meter = _Meter()
        skip = self.config.on_nan == "skip_batch"
        for step, batch in enumerate(batches, start=1):
            meter.steps = step
            inputs, targets = _to_device(*_unpack(batch), self.device)
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self._forward_model(inputs)
            task_loss = self.loss_fn(outputs, targets)
            if self.teacher is not None:
                with torch.no_grad():
                    taught = self.teacher(inputs)
                task_loss = distilled_loss(task_loss, outputs, taught, self.config.distill,
                                           self.config.distill_temperature)
            penalty = self.plugins.penalty()
            loss = task_loss + penalty
            # one flag per step, agreed by every rank, so that all of them stop or skip
            if distributed.any_rank(not bool(torch.isfinite(loss.detach()).all())):
                if not skip:
                    raise self._diverged(epoch, step, f"the loss is {_scalar(loss)} (task "
                                         f"loss {_scalar(task_loss)}, penalty "
                                         f"{_scalar(penalty)})")
                meter.skipped += 1
                continue
            loss.backward()
            if skip and distributed.any_rank(not _finite_grads(self.model)):
                self.optimizer.zero_grad(set_to_none=True)
                meter.skipped += 1
                continue
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.plugins.after_step()
            meter.add(targets.shape[0], _correct(outputs, targets),
                      loss=loss, task_loss=task_loss, penalty=penalty)
            if isinstance(batches, tqdm) and not batches.disable:
                batches.set_postfix_str(_format_fields(
                    {"loss": meter.mean("loss"), "acc": meter.accuracy()}), refresh=False)
        meter.reduce()
        if meter.seen == 0:
            what = (f"every one of its {meter.skipped} batches had a non-finite loss or "
                    f"gradient" if meter.skipped else "the training loader yielded no samples")
            raise DataError(f"{self.stage} epoch {epoch + 1}: {what}")
        return meter

    def _check_finite_weights(self, epoch: int, steps: int) -> None:
        """Stop before a NaN or inf weight reaches a checkpoint (the last one stays good)."""
        bad = [n for n, p in self.model.named_parameters()
               if not bool(torch.isfinite(p.detach()).all())]
        if distributed.any_rank(bool(bad)):
            raise self._diverged(epoch, steps, f"weights {', '.join(bad[:4]) or 'of a rank'} "
                                 f"hold NaN or inf")

    def _diverged(self, epoch: int, step: int, what: str) -> TrainingDiverged:
        kept = ("nothing was checkpointed yet" if self.epoch == 0 or self.checkpoint_path
                is None else f"the checkpoint {self.checkpoint_path} of epoch {self.epoch} "
                f"is kept")
        return TrainingDiverged(
            f"{self.stage} epoch {epoch + 1} step {step}: {what}; {kept}. Lower the learning "
            f"rate or the penalty, or set the stage's train option on_nan: skip_batch, then "
            f"resume", stage=self.stage, epoch=epoch + 1, step=step)

    def _check_ranks_agree(self, when: str) -> None:
        """Every rank must hold the same weights and plugin state (masks, Z/U, penalties):
        compared across ranks, not assumed."""
        if distributed.active():
            distributed.check_identical(
                {"weights": dict(self.model.named_parameters()),
                 "plugins": self.plugins.state_dicts()},
                f"weights or method state after {when}")

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
        elif self.config.progress and distributed.is_main():
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
        ckpt = load_checkpoint(path, map_location="cpu", verified=True)
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
                   if k not in RESUME_FREE_KEYS and saved.get(k) != current[k]]
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
