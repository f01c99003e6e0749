"""Pruning methods by name: ``prunekit.methods.get(name, model, targets, **options)``.

Names: ``admm``, ``progressive_admm``, ``reweighted``, ``magnitude`` (one-shot),
``gradual``, ``random`` (one-shot from a random support: the control for any method's
choice of weights), ``group_lasso``, and for quantization targets also ``ptq``
(post-training rounding) and ``ste`` (straight-through quantization-aware training);
``admm`` quantizes too (see :mod:`.quantize`). Every method follows the plugin protocol of
:class:`~prunekit.methods.base.PruningMethod`, so any of them drops into any training loop;
its options are a dataclass, ``METHODS[name].Options``, that checks them when built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..targets import Target
from .admm import ADMM, ADMMOptions
from .base import MethodOptions, PruningMethod
from .group_lasso import GroupLasso, GroupLassoOptions
from .magnitude import GradualMagnitude, GradualOptions, OneShotMagnitude, cubic_sparsity
from .progressive_admm import ProgressiveADMM, ProgressiveADMMOptions
from .quantize import PostTrainingRounding, ProgressiveFixing, StraightThrough
from .random_support import RandomOptions, RandomSupport
from .reweighted import Reweighted, ReweightedOptions

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


def get(name: str, model: nn.Module, targets: Iterable[Target], **opts: Any) -> PruningMethod:
    """The method called ``name`` on ``targets`` of ``model``, configured with ``opts``."""
    return lookup(name)(model, targets, **opts)


def lookup(name: str) -> type[PruningMethod]:
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"unknown pruning method {name!r}; available: {', '.join(available())}")
    return METHODS[name]


__all__ = [
    "ADMM",
    "METHODS",
    "ADMMOptions",
    "GradualMagnitude",
    "GradualOptions",
    "GroupLasso",
    "GroupLassoOptions",
    "MethodOptions",
    "OneShotMagnitude",
    "PostTrainingRounding",
    "ProgressiveADMM",
    "ProgressiveADMMOptions",
    "ProgressiveFixing",
    "PruningMethod",
    "RandomOptions",
    "RandomSupport",
    "Reweighted",
    "ReweightedOptions",
    "StraightThrough",
    "available",
    "cubic_sparsity",
    "get",
    "lookup",
]
