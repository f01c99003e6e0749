"""Frozen constraints, and retraining that keeps every weight inside them.

- one :class:`Frozen` constraint per weight: :class:`Support` (a mask), :class:`Levels`
  (quantization levels inside a mask), :class:`Unified` (micro-block unification) or
  :class:`Rounded` (a dtype); :func:`prunekit.targets.freeze` makes them;
- :class:`MaskEnforcer` keeps them through any optimizer (gradient hook, optimizer-state
  cleaning, re-imposing after each step); :func:`prunekit.training.finetune` does that in
  prunekit's trainer.

The frozen constraints are the single record of what was pruned or quantized: the
checkpoints, the model file and the report all read them.
"""

from .enforce import MaskEnforcer
from .frozen import QUANT_MODES, Frozen, Levels, Rounded, Support, Unified, from_state

__all__ = [
    "QUANT_MODES", "Frozen", "Levels", "MaskEnforcer", "Rounded", "Support", "Unified",
    "from_state",
]
