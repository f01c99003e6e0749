"""A target: one weight, the scheme that constrains it and the rate it must reach."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..schemes import Scheme, measured_sparsity


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

    # the multi-parameter view every method uses, shared with GroupTarget
    @property
    def members(self) -> list[tuple[str, nn.Parameter]]:
        """``[(name, param)]``: the one parameter this target constrains."""
        return [(self.name, self.param)]

    @property
    def names(self) -> list[str]:
        return [self.name]

    @property
    def weight_layers(self) -> list[str]:
        return [self.module_name]

    def project_members(self, values: Sequence[Tensor] | None = None,
                        keep: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """``[P(v * M) * M]`` for the one member (``[P(v)]`` without a mask ``M``)."""
        v = self.param if values is None else values[0]
        mask = None if keep is None else keep[0]
        if mask is None:
            return [self.project(v)]
        mask = mask.to(v.device)
        return [self.project(v * mask).mul_(mask)]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()

    @property
    def scheme_name(self) -> str:
        return self.scheme.name

    def achieved_sparsity(self) -> float:
        """Fraction of exact zeros in the parameter now (measured, never assumed)."""
        return measured_sparsity(self.param.detach())
