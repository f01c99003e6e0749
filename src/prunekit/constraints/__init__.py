"""Hardening into frozen constraints, and retraining that keeps every weight inside them.

- :func:`freeze` projects every target once (all or nothing) and returns one
  :class:`Frozen` constraint per weight: :class:`Support` (a mask), :class:`Levels`
  (quantization levels inside a mask) or :class:`Unified` (micro-block unification);
- :class:`MaskEnforcer` keeps them through any optimizer (gradient hook, optimizer-state
  cleaning, re-imposing after each step); :func:`finetune` does that in prunekit's trainer;
- :func:`harden` is :func:`freeze` for callers that only want the masks.

The frozen constraints are the single record of what was pruned or quantized: the
checkpoints, the model file and the report all read them.
"""

from .enforce import MaskEnforcer, finetune
from .frozen import QUANT_MODES, Frozen, Levels, Rounded, Support, Unified, from_state
from .harden import freeze, freeze_weight, harden

__all__ = [
    "QUANT_MODES", "Frozen", "Levels", "MaskEnforcer", "Rounded", "Support", "Unified", "finetune",
    "freeze", "freeze_weight", "from_state", "harden",
]
