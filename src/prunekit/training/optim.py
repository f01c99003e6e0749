"""Optimizer and learning-rate schedule from a :class:`TrainConfig`.

The schedule is a pure function of the epoch index (:func:`lr_factor`), applied through
``LambdaLR`` as a factor on each parameter group's own learning rate. A pure function of
the epoch needs no hidden state to resume exactly, and a factor (rather than an absolute
rate) lets the same schedule drive an optimizer the user built with their own rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError
from .config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict],
                    cfg: TrainConfig) -> Optimizer:
    """SGD (with ``momentum``/``nesterov``), Adam (L2 weight decay in the gradient) or AdamW
    (decoupled weight decay), at learning rate ``cfg.lr``."""
    params = list(params)
    if not params:
        raise ConfigError("the optimizer got no parameters to train (all frozen?)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}")  # TrainConfig already checks


def lr_factor(cfg: TrainConfig, epoch: int, cycle: tuple[int, int | None] = (0, None)) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based).

    Warmup ramps linearly to 1 over ``warmup_epochs`` (epoch ``e`` gets ``(e + 1) / W``);
    cosine then anneals from 1 towards 0 over the remaining epochs; step multiplies by
    ``gamma`` at each milestone (or every ``step_size`` epochs) counted from epoch 0.

    ``cycle = (start, length)`` restarts the schedule at epoch ``start``: from there the
    epochs are counted from ``start``, cosine anneals over ``length`` epochs (``None``: to the
    end of training) and starts again after them, and warmup belongs to the first cycle only.
    """
    start, length = cycle
    if epoch >= start > 0:
        span = length if length is not None else max(cfg.epochs - start, 1)
        return _decay(cfg, (epoch - start) % span, span)
    warmup = cfg.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / warmup
    return _decay(cfg, epoch - warmup, max(cfg.epochs - warmup, 1), offset=warmup)


def _decay(cfg: TrainConfig, position: int, span: int, offset: int = 0) -> float:
    """The schedule's factor ``position`` epochs into an annealing span of ``span`` epochs."""
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * position / span))
    if cfg.schedule == "step":
        epoch = position + offset
        if cfg.milestones is not None:
            drops = sum(1 for m in cfg.milestones if epoch >= m)
        else:
            drops = epoch // cfg.step_size
        return cfg.gamma**drops
    return 1.0


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, *,
                    cycle: Callable[[], tuple[int, int | None]] | None = None) -> LambdaLR:
    """A scheduler to step once per epoch, following :func:`lr_factor` (the schedule is
    epoch based, so it needs no count of steps per epoch).

    ``cycle`` returns the current learning-rate cycle (see :func:`lr_factor`); the trainer
    moves it when a plugin asks for a restart. Building the scheduler sets each group's rate
    to its epoch-0 value.
    """
    if cycle is None:
        return LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch))
    return LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch, cycle()))
