"""Quantization methods (ADMM-NN's second half) and progressive fixing.

A quantization target is a :class:`~prunekit.targets.Target` whose scheme is ``quant`` (or
ends in it, e.g. ``irregular+quant``), so every pruning method's machinery applies:

- ``admm`` (:class:`~prunekit.methods.admm.ADMM` itself): ``Z = nearest level of W + U``
  inside the pruning mask (the weights' existing zeros stay zero), the penalty pulls W
  toward its levels, :meth:`freeze` snaps the weights onto them;
- ``ptq`` (:class:`PostTrainingRounding`): round to the least-squares levels at once, the
  baseline users compare with;
- ``ste`` (:class:`StraightThrough`): quantize at once and train through a
  straight-through estimator (a float shadow copy takes the updates).

After hardening, :class:`ProgressiveFixing` is ADMM-NN's quantized retraining: each epoch
fixes a fraction of the free weights (those nearest their level first) while the rest
retrain in float, and the last epoch fixes all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import validate
from ..constraints import Levels, MaskEnforcer
from .magnitude import OneShotMagnitude


class PostTrainingRounding(OneShotMagnitude):
    """Round every target onto its levels once (no training needed)."""

    name = "ptq"


class StraightThrough(OneShotMagnitude):
    """Quantize at once, then train with a straight-through estimator: the forward pass
    sees quantized weights, the optimizer moves a float shadow copy."""

    name = "ste"

    def start(self):
        if not self.hardened:
            self.freeze(mode="ste")
        return self.masks

    def freeze(self, mode: str = "ste") -> dict[str, Any]:
        return super().freeze(mode="ste" if mode == "snap" else mode)


class ProgressiveFixing:
    """Trainer plugin for ADMM-NN's quantized retraining of ``Levels`` constraints in
    ``"progressive"`` mode: at the end of each of ``epochs`` epochs, fix ``fraction`` of the
    still-free weights of every layer (``ceil``, the free weights nearest their level
    first); the last epoch fixes the rest. The constraints live in ``enforcer``."""

    def __init__(self, enforcer: MaskEnforcer, epochs: int, fraction: float = 0.3) -> None:
        self.enforcer = enforcer
        self.epochs = validate.integer(epochs, "epochs", bounds=">= 1", subject="epochs")
        self.fraction = validate.number(fraction, "fix_fraction", bounds="(0, 1]",
                                        subject="fix_fraction")
        self.epoch = 0

    def end_epoch(self) -> None:
        self.epoch += 1
        fraction = 1.0 if self.epoch >= self.epochs else self.fraction
        params = dict(self.enforcer.model.named_parameters())
        for name, constraint in self.enforcer.constraints.items():
            if isinstance(constraint, Levels):
                constraint.fix_(params[name].data, fraction)
        # the newly fixed weights still have optimizer state (momentum, Adam moments) from
        # when they were free: clear it, or the next step moves them off their level
        self.enforcer.after_step()

    def progress(self) -> dict[str, float]:
        free = total = 0
        for constraint in self.enforcer.constraints.values():
            if isinstance(constraint, Levels) and constraint.free is not None:
                free += int(constraint.free.sum().item())
            total += constraint.kept
        return {"free": free / total if total else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])

