"""Masked retraining in prunekit's own trainer: the frozen constraints kept through every
step (by a :class:`~prunekit.constraints.MaskEnforcer`) and finished at the end."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..constraints import MaskEnforcer
from .config import TrainConfig
from .trainer import Trainer


def finetune(model: nn.Module, constraints: Mapping[str, Any], train_loader: Iterable,
             test_loader: Iterable | None = None, config: Any = None, *, resume: bool = False,
             **trainer_kwargs: Any) -> list[dict[str, Any]]:
    """Retrain ``model`` inside ``constraints`` with prunekit's trainer and finish every
    constraint at the end; returns the trainer's history. ``config`` is a ``TrainConfig`` or
    a dict; ``trainer_kwargs`` go to :class:`prunekit.training.Trainer`."""
    enforcer = MaskEnforcer(model, constraints)
    plugins = [*trainer_kwargs.pop("plugins", ()), enforcer]
    trainer_kwargs.setdefault("stage", "retrain")
    try:
        trainer = Trainer(model, TrainConfig() if config is None else config, train_loader,
                          test_loader, plugins=plugins, **trainer_kwargs)
        enforcer.bind(trainer.optimizer)
        history = trainer.fit(resume=resume)
        enforcer.finish()
        return history
    finally:
        enforcer.close()
