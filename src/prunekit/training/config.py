"""The training options, checked once so that a typo fails before any epoch runs.

A recipe's ``train`` (or ``retrain``) section becomes a :class:`TrainConfig` through
:meth:`TrainConfig.from_dict`; every key and value is checked there, and the error names the
key, because a silently ignored ``lrr: 0.1`` wastes a whole run.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ..errors import ConfigError
from .layout import MEMORY_FORMATS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")

_INT_KEYS = ("epochs", "warmup_epochs", "seed")
_FLOAT_KEYS = ("lr", "momentum", "weight_decay", "gamma", "label_smoothing", "distill",
               "distill_temperature")
_BOOL_KEYS = ("nesterov", "progress")
_STR_KEYS = ("optimizer", "schedule", "device", "on_nan", "memory_format")
#: what a non-finite loss does: stop the run (naming stage, epoch and step), or skip the batch
ON_NAN = ("stop", "skip_batch")


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
            setattr(self, key, _as_int(key, getattr(self, key)))
        for key in _FLOAT_KEYS:
            setattr(self, key, _as_float(key, getattr(self, key)))
        for key in _BOOL_KEYS:
            setattr(self, key, _as_bool(key, getattr(self, key)))
        for key in _STR_KEYS:
            setattr(self, key, _as_str(key, getattr(self, key)))
        if self.step_size is not None:
            self.step_size = _as_int("step_size", self.step_size)
        if self.grad_clip is not None:
            self.grad_clip = _as_float("grad_clip", self.grad_clip)
        if self.milestones is not None:
            self.milestones = _as_int_list("milestones", self.milestones)
        self._check_ranges()

    def _check_ranges(self) -> None:
        _require(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _require(not self.nesterov or (self.optimizer == "sgd" and self.momentum != 0),
                 "nesterov", "needs optimizer 'sgd' with momentum > 0")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.gamma > 0, "gamma", f"must be > 0, got {self.gamma}")
        _require(self.warmup_epochs >= 0, "warmup_epochs",
                 f"must be >= 0, got {self.warmup_epochs}")
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _require(0 <= self.label_smoothing < 1, "label_smoothing",
                 f"must be in [0, 1), got {self.label_smoothing}")
        _require(self.grad_clip is None or self.grad_clip > 0, "grad_clip",
                 f"must be > 0 or null, got {self.grad_clip}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
                key=("optimizer",),
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}",
                key=("schedule",),
            )
        self._check_step_options()
        _check_device(self.device)
        _require(self.on_nan in ON_NAN, "on_nan",
                 f"must be one of {', '.join(ON_NAN)}, got {self.on_nan!r}")
        _require(0 <= self.distill <= 1, "distill", f"must be in [0, 1], got {self.distill}")
        _require(self.distill_temperature > 0, "distill_temperature",
                 f"must be > 0, got {self.distill_temperature}")
        _require(self.memory_format in MEMORY_FORMATS, "memory_format",
                 f"must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")

    def _check_step_options(self) -> None:
        _require(self.step_size is None or self.step_size >= 1, "step_size",
                 f"must be >= 1, got {self.step_size}")
        if self.milestones is not None:
            _require(all(m >= 0 for m in self.milestones), "milestones",
                     f"must be >= 0, got {self.milestones}")
            _require(all(b > a for a, b in zip(self.milestones, self.milestones[1:],
                                                strict=False)),
                     "milestones", f"must be strictly increasing, got {self.milestones}")
        if self.schedule == "step":
            if self.milestones is None and self.step_size is None:
                raise ConfigError("schedule 'step' needs 'milestones' (a list of epochs) or "
                                  "'step_size'", key=("schedule",))
            if self.milestones is not None and self.step_size is not None:
                raise ConfigError("schedule 'step' takes 'milestones' or 'step_size', not both",
                                  key=("schedule",))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        """Build a config from a recipe section; unknown keys are an error naming the key."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"train options must be a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                also = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"unknown train option {key!r}{also}; known options: {', '.join(known)}",
                    key=(str(key),),
                )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (safe in a ``weights_only`` checkpoint and in YAML)."""
        return asdict(self)


def _require(ok: bool, key: str, message: str) -> None:
    """A range check whose error names the option (and carries it as the error's key)."""
    if not ok:
        raise ConfigError(f"train option {key!r} {message}", key=(key,))


def _type_error(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(
        f"train option {key!r} must be {expected}, got {value!r} ({type(value).__name__})",
        key=(key,),
    )


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, value, "an integer")
    return int(value)


def _as_float(key: str, value: Any) -> float:
    """Numbers, and numeric strings: YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    if isinstance(value, bool):
        raise _type_error(key, value, "a number")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise _type_error(key, value, "a number") from None
    else:
        raise _type_error(key, value, "a number")
    if not math.isfinite(result):
        raise _type_error(key, value, "a finite number")
    return result


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(key, value, "true or false")
    return value


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(key, value, "a string")
    return value


def _as_int_list(key: str, value: Any) -> list[int]:
    if not isinstance(value, list | tuple):
        raise _type_error(key, value, "a list of integers")
    return [_as_int(key, v) for v in value]


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
