"""Group lasso: a static penalty ``lam * sum_g ||W_g||`` over the scheme's groups.

The norm of each group is *not* squared: the unsquared L2 norm has a kink at zero, which
is what drives whole groups (filters, columns, blocks) to exactly zero, while a squared
norm only shrinks them. With the irregular scheme every group is one weight and this is
plain L1. Baseline for the reweighted method; :meth:`freeze` makes the rate exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..targets import GroupTarget, Target
from .base import MethodOptions, PruningMethod, per_layer, per_target


@dataclass
class GroupLassoOptions(MethodOptions):
    """``lam`` is one number or ``{layer: number}``."""

    lam: float | Mapping[str, float] = 1e-4

    def __post_init__(self) -> None:
        self.lam = per_layer(self.lam, "lam", ">= 0")

    def check_targets(self, targets: Sequence[Target | GroupTarget]) -> None:
        per_target(self.lam, targets, "lam", "lam")


class GroupLasso(PruningMethod):
    """Group lasso (module docstring, options: :class:`GroupLassoOptions`)."""

    name = "group_lasso"
    Options = GroupLassoOptions

    def __init__(self, model: nn.Module, targets: Iterable[Target],
                 options: GroupLassoOptions | None = None, **given: Any) -> None:
        super().__init__(model, targets, options, **given)
        self.lam = per_target(self.options.lam, self.targets, "lam", "lam")

    def _penalty(self) -> Tensor:
        device = self.targets[0].param.device
        total = self._zero()
        for t, lam in zip(self.targets, self.lam, strict=True):
            total = total + (t.group_norms().sum() * lam).to(device)
        return total
