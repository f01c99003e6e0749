"""The training options, checked once so that a typo fails before any epoch runs.

A recipe's ``train`` (or ``retrain``) section becomes a :class:`TrainConfig` through
:meth:`TrainConfig.from_dict`; every key and value is checked there, and the error names the
key, because a silently ignored ``lrr: 0.1`` wastes a whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .. import validate
from ..errors import ConfigError
from .layout import MEMORY_FORMATS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")

#: what a non-finite loss does: stop the run (naming stage, epoch and step), or skip the batch
ON_NAN = ("stop", "skip_batch")

_INT_KEYS = ("epochs", "warmup_epochs", "seed")  # each >= 0
_FLOAT_KEYS = {"lr": "> 0", "momentum": "[0, 1)", "weight_decay": ">= 0", "gamma": "> 0",
               "label_smoothing": "[0, 1)", "distill": "[0, 1]", "distill_temperature": "> 0"}
_BOOL_KEYS = ("nesterov", "progress")
_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "on_nan": ON_NAN,
            "memory_format": MEMORY_FORMATS}


@dataclass
class TrainConfig:
    """Options of one training stage.

    The schedule is epoch based: the learning rate is constant within an epoch, which keeps
    a resumed run exactly on the same curve. ``milestones`` are absolute epoch indices
    (0-based, as in ``torch.optim.lr_scheduler.MultiStepLR``) at which the rate is multiplied
    by ``gamma``; ``step_size`` decays it every ``step_size`` epochs instead. A linear warmup
    of ``warmup_epochs`` epochs comes first; cosine then anneals over the remaining epochs.
    ``device`` is a torch device string or ``"auto"`` (CUDA when available). ``on_nan``:
    a NaN or inf loss stops the run (``"stop"``, keeping the last checkpoint) or leaves
    that batch out (``"skip_batch"``, counted in the history as ``skipped_batches``).
    ``memory_format``: the layout of conv weights while training (see :mod:`.layout`):
    ``"auto"`` (channels-last for 2-D convs on the CPU), ``"channels_last"`` or
    ``"contiguous"``; it changes speed and float rounding, never what is computed.
    ``distill``: the weight in [0, 1] of distillation from a teacher (the dense model in a
    recipe's later stages, see :mod:`.distill`) at ``distill_temperature``; 0 trains on the
    labels alone.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: list[int] | None = None
    step_size: int | None = None
    gamma: float = 0.1
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    on_nan: str = "stop"
    memory_format: str = "auto"
    distill: float = 0.0
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        for key in _INT_KEYS:
            self._check(validate.integer, key, bounds=">= 0")
        for key, bounds in _FLOAT_KEYS.items():
            self._check(validate.number, key, bounds=bounds, text=True)
        for key in _BOOL_KEYS:
            self._check(validate.boolean, key)
        for key, choices in _CHOICES.items():
            self._check(validate.choice, key, choices=choices)
        validate.kind(self.device, str, "a string", "device", subject="train option 'device'")
        self._check(validate.integer, "step_size", bounds=">= 1", optional=True)
        self._check(validate.number, "grad_clip", bounds="> 0", text=True, optional=True)
        if self.milestones is not None:
            if not isinstance(self.milestones, list | tuple):
                validate.fail(f"train option 'milestones' must be a list of integers, got "
                              f"{self.milestones!r}", "milestones")
            self.milestones = [validate.integer(m, "milestones", bounds=">= 0",
                                                subject="train option 'milestones'")
                               for m in self.milestones]
            _require(all(b > a for a, b in zip(self.milestones, self.milestones[1:],
                                                strict=False)),
                     "milestones", f"must be strictly increasing, got {self.milestones}")
        _require(not self.nesterov or (self.optimizer == "sgd" and self.momentum != 0),
                 "nesterov", "needs optimizer 'sgd' with momentum > 0")
        _check_device(self.device)
        if self.schedule == "step":
            if self.milestones is None and self.step_size is None:
                raise ConfigError("schedule 'step' needs 'milestones' (a list of epochs) or "
                                  "'step_size'", key=("schedule",))
            if self.milestones is not None and self.step_size is not None:
                raise ConfigError("schedule 'step' takes 'milestones' or 'step_size', not both",
                                  key=("schedule",))

    def _check(self, check: Callable[..., Any], key: str, **how: Any) -> None:
        setattr(self, key, check(getattr(self, key), key, subject=f"train option {key!r}",
                                 **how))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        """Build a config from a recipe section; unknown keys are an error naming the key."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"train options must be a mapping, got {type(d).__name__}")
        validate.known_keys(d, [f.name for f in fields(cls)], noun="train option")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (safe in a ``weights_only`` checkpoint and in YAML)."""
        return asdict(self)


def _require(ok: bool, key: str, message: str) -> None:
    """A range check whose error names the option (and carries it as the error's key)."""
    if not ok:
        raise ConfigError(f"train option {key!r} {message}", key=(key,))


def _check_device(name: str) -> None:
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"train option 'device' must be 'auto' or a torch device such as 'cpu' or "
            f"'cuda:0', got {name!r}", key=("device",)
        ) from None
