"""The trainer, split by concern: config, optimizer and schedule, seeding, plugins, loop."""

from .config import OPTIMIZERS, SCHEDULES, TrainConfig
from .finetune import finetune
from .optim import build_optimizer, build_scheduler, lr_factor
from .plugins import FunctionPlugin, PluginSet
from .seeding import epoch_seed, seed_epoch, set_seed
from .trainer import Trainer, evaluate, resolve_device

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "FunctionPlugin", "PluginSet", "TrainConfig", "Trainer",
    "build_optimizer", "build_scheduler", "epoch_seed", "evaluate", "finetune", "lr_factor",
    "resolve_device", "seed_epoch", "set_seed",
]
