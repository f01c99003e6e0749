"""Group lasso: a static penalty ``lam * sum_g ||W_g||`` over the scheme's groups.

The norm of each group is *not* squared: the unsquared L2 norm has a kink at zero, which
is what drives whole groups (filters, columns, blocks) to exactly zero, while a squared
norm only shrinks them. With the irregular scheme every group is one weight and this is
plain L1. Baseline for the reweighted method; :meth:`freeze` makes the rate exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from ..targets import Target
from .base import PruningMethod, per_target


class GroupLasso(PruningMethod):
    """``lam`` is one number or ``{layer: number}``."""

    name = "group_lasso"

    def __init__(
        self, model: nn.Module, targets: Iterable[Target], lam: float | Mapping[str, float] = 1e-4
    ) -> None:
        super().__init__(model, targets)
        self.lam = per_target(lam, self.targets, "lam", allow_zero=True)

    def _penalty(self) -> Tensor:
        device = self.targets[0].param.device
        total = self._zero()
        for t, lam in zip(self.targets, self.lam, strict=True):
            total = total + (t.group_norms().sum() * lam).to(device)
        return total
