"""A plain training loop for pruning runs: plugins, progress, atomic checkpoints, exact resume.

The implementation lives in :mod:`prunekit.training` (config, optimizer and schedule,
seeding, plugins, loop); this module is the import path users and recipes rely on.
"""

from .training import (
    OPTIMIZERS,
    SCHEDULES,
    FunctionPlugin,
    PluginSet,
    TrainConfig,
    Trainer,
    build_optimizer,
    build_scheduler,
    epoch_seed,
    evaluate,
    lr_factor,
    resolve_device,
    seed_epoch,
    set_seed,
)

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "FunctionPlugin", "PluginSet", "TrainConfig", "Trainer",
    "build_optimizer", "build_scheduler", "epoch_seed", "evaluate", "lr_factor",
    "resolve_device", "seed_epoch", "set_seed",
]
