"""Pruning methods by name: ``prunekit.methods.get(name, model, targets, **options)``.

Names: ``admm``, ``progressive_admm``, ``reweighted``, ``magnitude`` (one-shot),
``gradual``, ``random`` (one-shot from a random support: the control for any method's
choice of weights), ``group_lasso``, and for quantization targets also ``ptq``
(post-training rounding) and ``ste`` (straight-through quantization-aware training);
``admm`` quantizes too (see :mod:`.quantize`). Every method follows the plugin protocol of
:class:`~prunekit.methods.base.PruningMethod`, so any of them drops into any training loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..targets import Target
from .admm import ADMM, admm_option_names
from .base import PruningMethod
from .group_lasso import GroupLasso
from .magnitude import GradualMagnitude, OneShotMagnitude, cubic_sparsity
from .progressive_admm import ProgressiveADMM
from .quantize import PostTrainingRounding, ProgressiveFixing, StraightThrough
from .random_support import RandomSupport
from .reweighted import Reweighted

METHODS: dict[str, type[PruningMethod]] = {
    "admm": ADMM,
    "progressive_admm": ProgressiveADMM,
    "reweighted": Reweighted,
    "magnitude": OneShotMagnitude,
    "random": RandomSupport,
    "gradual": GradualMagnitude,
    "group_lasso": GroupLasso,
    "ptq": PostTrainingRounding,
    "ste": StraightThrough,
}


def available() -> list[str]:
    return sorted(METHODS)


def options(name: str) -> list[str]:
    """The options method ``name`` accepts (besides the model and the targets)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    names = [
        n for n, p in params.items()
        if n not in ("self", "model", "targets") and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    if cls is ProgressiveADMM:
        names += [n for n in admm_option_names() if n not in names]
    return names


def get(name: str, model: nn.Module, targets: Iterable[Target], **opts: Any) -> PruningMethod:
    """The method called ``name`` on ``targets`` of ``model``, configured with ``opts``."""
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        accepted = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
        raise ConfigError(f"method {name!r} got unknown options {unknown}; {accepted}")
    return METHODS[name](model, targets, **opts)


def _lookup(name: str) -> type[PruningMethod]:
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"unknown pruning method {name!r}; available: {', '.join(available())}")
    return METHODS[name]


__all__ = [
    "ADMM",
    "METHODS",
    "GradualMagnitude",
    "GroupLasso",
    "OneShotMagnitude",
    "PostTrainingRounding",
    "ProgressiveFixing",
    "ProgressiveADMM",
    "PruningMethod",
    "RandomSupport",
    "Reweighted",
    "StraightThrough",
    "available",
    "cubic_sparsity",
    "get",
    "options",
]
