"""Reweighted group regularization: a penalty that fades on large groups and grows on small.

The penalty is ``lam * sum_i sum_g alpha_g ||W_g||^2`` over the groups the target's scheme
prunes as a unit (``target.group_norms()``: single weights, filters, columns, blocks, ...),
with ``alpha_g = 1 / (||W_g||^2 + eps)`` recomputed from the detached weights every
``reweight_every`` epochs. A group that is already small gets a large alpha and is pushed
to zero; a large group's term is about ``lam`` whatever its size, so it is barely shrunk.
That approximates a penalty on the *number* of nonzero groups (each term tends to 0 or 1),
which is what a sparsity constraint counts, with one hyper-parameter, ``lam``. The final
:meth:`~prunekit.methods.base.PruningMethod.freeze` makes the rate exact.

The penalty's curvature on a group near zero is ``2 lam / eps``; plain SGD stays stable
while ``lr * 2 lam / eps < 2``, so a small ``eps`` needs a small ``lam`` or learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import validate
from ..errors import ConfigError
from ..targets import Target
from .base import PruningMethod, per_target
from .group_lasso import GroupLassoOptions


@dataclass
class ReweightedOptions(GroupLassoOptions):
    """:class:`Reweighted`'s options: ``lam`` is one number or ``{layer: number}``; ``eps``
    keeps alpha finite for groups that reach zero."""

    eps: float = 1e-3
    reweight_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(validate.number, "eps", bounds="> 0")
        self._check(validate.integer, "reweight_every", bounds=">= 1")


class Reweighted(PruningMethod):
    """Reweighted regularization (module docstring, options: :class:`ReweightedOptions`)."""

    name = "reweighted"
    Options = ReweightedOptions

    def __init__(self, model: nn.Module, targets: Iterable[Target],
                 options: ReweightedOptions | None = None, **given: Any) -> None:
        super().__init__(model, targets, options, **given)
        self.lam = per_target(self.options.lam, self.targets, "lam", "lam")
        self.reweights = 0
        self.alphas: list[Tensor] = []
        for t in self.targets:
            with torch.no_grad():
                self.alphas.append(torch.empty_like(t.group_norms().detach()))
        self._residual = 0.0
        self.reweight()

    def _penalty(self) -> Tensor:
        device = self.targets[0].param.device
        total = self._zero()
        for t, alpha, lam in zip(self.targets, self.alphas, self.lam, strict=True):
            norms = t.group_norms()
            term = (alpha.to(norms.device) * norms.pow(2)).sum() * lam
            total = total + term.to(device)
        return total

    def _end_epoch(self) -> None:
        if self.epoch % self.options.reweight_every == 0:
            self.reweight()

    @torch.no_grad()
    def reweight(self) -> dict[str, Any]:
        """Recompute every ``alpha_g = 1 / (||W_g||^2 + eps)`` from the current weights."""
        for i, t in enumerate(self.targets):
            norms = t.group_norms().detach()
            if self.alphas[i].device != norms.device:
                self.alphas[i] = self.alphas[i].to(norms.device)
            torch.reciprocal(norms.pow(2).add_(self.options.eps), out=self.alphas[i])
        self._residual = self._relative_residual()
        record = {
            "event": "reweight",
            "update": self.reweights,
            "epoch": self.epoch,
            "step": self.step,
            "residual": self._residual,
        }
        self.reweights += 1
        self.history.append(record)
        return record

    def _relative_residual(self) -> float:
        """``sum ||W - P(W)||^2 / sum ||W||^2``: how much weight energy hardening would cut
        now (0 once the weights already satisfy every constraint)."""
        cut = kept = 0.0
        for t in self.targets:
            for (_, p), projected in zip(t.members, t.project_members(), strict=True):
                w = p.detach()
                cut += float((w - projected).pow(2).sum().item())
                kept += float(w.pow(2).sum().item())
        return cut / kept if kept > 0 else 0.0

    def progress(self) -> dict[str, float]:
        return {**super().progress(), "residual": self._residual, "lam": max(self.lam)}

    def _extra_state(self) -> dict[str, Any]:
        return {
            "alphas": {t.name: a.clone() for t, a in zip(self.targets, self.alphas, strict=True)},
            "reweights": self.reweights,
            "residual": self._residual,
        }

    @torch.no_grad()
    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        for t, alpha in zip(self.targets, self.alphas, strict=True):
            saved = state["alphas"][t.name]
            if not isinstance(saved, Tensor) or saved.shape != alpha.shape:
                raise ConfigError(f"state alphas for {t.name!r} do not fit its groups")
            alpha.copy_(saved)
        self.reweights = int(state["reweights"])
        self._residual = float(state["residual"])
        if not math.isfinite(self._residual):
            raise ConfigError("state residual is not a finite number")
