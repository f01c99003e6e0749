"""prunekit: compress PyTorch models with ADMM and reweighted-regularization pruning.

The names most scripts need are importable from here; they load on first use so that
``import prunekit`` stays cheap (the CLI starts without importing every module).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ADMM": "methods",
    "ProgressiveADMM": "methods",
    "Reweighted": "methods",
    "OneShotMagnitude": "methods",
    "GradualMagnitude": "methods",
    "RandomSupport": "methods",
    "GroupLasso": "methods",
    "resolve": "targets",
    "Target": "targets",
    "freeze": "targets",
    "MaskEnforcer": "constraints",
    "finetune": "training",
    "save": "artifacts",
    "load": "artifacts",
    "Trainer": "training",
    "TrainConfig": "training",
    "load_recipe": "recipe",
    "run_recipe": "pipeline",
    "compile": "runtime",
}

_SUBMODULES = {"commands", "oneshot", "schemes", "targets", "constraints", "artifacts",
               "methods", "training", "data", "models", "report", "recipe", "pipeline",
               "errors", "files", "structure", "runtime", "integrations"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
