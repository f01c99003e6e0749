"""One-shot random pruning: the control that measures what choosing a support is worth.

Every method differs from the others mainly in *which* weights it keeps. Whether that
choice matters for a model, scheme and rate is an empirical question, and random pruning at
the same rates answers it: retrain from a random support exactly as a method retrains from
its own, and the gap between the two is what the method's selection bought. Random pruning
at a good layer split is a strong baseline on wide layers (Liu et al., ICLR 2022, "The
unreasonable effectiveness of random pruning"), so a method that does not beat it has
found nothing the layer split did not already give.

The support is drawn in the scheme's own groups: the layer's nonzero weight values are
shuffled among their positions and the scheme's exact projection picks from the shuffled
tensor. A
support so drawn is one the scheme could have produced (whole blocks, filters, N:M
groups...), each target keeps exactly its rate, and groups of unequal size are favoured
exactly as the projection favours them on real weights (a short block at a ragged edge has
a smaller norm in both). Then the layer's own weights are hardened inside that support and
everything else is one-shot magnitude's: the masks are enforced while the model retrains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import validate
from ..targets import GroupTarget, Target
from .base import MethodOptions
from .magnitude import OneShotMagnitude


@dataclass
class RandomOptions(MethodOptions):
    """``seed`` of the draw; the targets must be plain weights whose scheme sets only a
    support."""

    seed: int = 0

    def __post_init__(self) -> None:
        self._check(validate.integer, "seed", bounds=">= 0")

    def check_targets(self, targets: Sequence[Target | GroupTarget]) -> None:
        for t in targets:
            if isinstance(t, GroupTarget):
                validate.fail(f"random: target {t.name!r} is a coupled channel group; random "
                              f"supports are drawn per weight (use a plain filter or channel "
                              f"rule)", "method")
            if t.scheme.frozen_kind != "support":
                validate.fail(f"random: target {t.name!r} uses scheme {t.scheme_name!r}, which "
                              f"sets values, not only a support; random draws supports only",
                              "method")


class RandomSupport(OneShotMagnitude):
    """Harden every target inside a support drawn at random at its rate (see the module
    docstring); ``seed`` makes the draw reproducible, independently of torch's global
    generator (which the training loop's shuffling also draws from)."""

    name = "random"
    Options = RandomOptions

    def random_masks(self) -> dict[str, Tensor]:
        """``{param name: bool mask}``: each target's random support at its rate."""
        generator = torch.Generator().manual_seed(self.options.seed)
        masks = {}
        for t in self.targets:
            values = t.param.detach().flatten().cpu()
            # shuffle among the nonzeros only: a weight already pruned stays zero, so the
            # draw stays inside an earlier mask and the rate is met there
            alive = torch.nonzero(values).flatten()
            order = alive[torch.randperm(alive.numel(), generator=generator)]
            shuffled = torch.zeros_like(values)
            shuffled[alive] = values[order]
            masks[t.name] = t.mask(shuffled.reshape(t.param.shape)).to(t.param.device)
        return masks

    def freeze(self, mode: str = "snap") -> dict[str, Any]:
        """Harden inside the random supports (every way of hardening ends here: ``start``,
        a method's own ``freeze`` and a pipeline's freeze after a stage of no training steps)."""
        if not self.hardened:
            self.set_masks(self.random_masks())  # freezing projects inside the live masks
        return super().freeze(mode)
