"""Which parameters get pruned, with which scheme and rate.

A user's rules (NNI-style config lists or a recipe's ``prune.targets`` section) resolve
against a model to a list of :class:`Target`; every method, the masks and the reports work
from that list and never look at the rules again.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .schemes import Scheme


@dataclass(eq=False)
class Target:
    """One weight to compress: ``param`` (named ``name`` in ``model.named_parameters()``)
    of module ``module_name`` (type ``layer_type``), constrained by ``scheme`` at
    ``sparsity``. ``gates`` > 1 for RNN weights that stack gate matrices (LSTM 4, GRU 3)."""

    name: str
    module_name: str
    param: nn.Parameter
    scheme: Scheme
    sparsity: float | None
    layer_type: str
    gates: int = 1

    def project(self, w: Tensor | None = None) -> Tensor:
        """The scheme's exact projection of ``w`` (default: the parameter itself)."""
        return self.scheme.project(self.param if w is None else w, self.sparsity, gates=self.gates)

    def mask(self, w: Tensor | None = None) -> Tensor:
        return self.scheme.mask(self.param if w is None else w, self.sparsity, gates=self.gates)

    def group_norms(self, w: Tensor | None = None) -> Tensor:
        return self.scheme.group_norms(self.param if w is None else w, gates=self.gates)
