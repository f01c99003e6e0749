"""A target's constraint set on its GEMM view, in the original or the preconditioned space.

The solvers work on the 2-D GEMM matrix ``[out, in*kh*kw]``; the scheme projects tensors of
the parameter's shape, so :class:`LayerConstraint` reshapes both ways and hands every
projection to the target's own scheme (never a copy of its maths).

ADMM works in the space scaled by ``d = sqrt(diag H)`` per input column (``W~ = W * d``),
where the problem is better conditioned. Whether a scheme may be projected there depends on
whether its set is invariant under column scaling:

- a *support* set (irregular, N:M, block, column, channel, filter, pattern) only says which
  entries may be nonzero, and scaling columns maps the set onto itself; projecting ``W~``
  keeps the entries largest in the scaled metric (``|w_ij| sqrt(H_jj)``, what the layer's
  output actually loses), which is still a point of the set;
- *level* sets (quantisation: one step shared by many columns; unification: one magnitude
  shared by a block) are not invariant, so those parts project in the original space: the
  scaled point is mapped back (``/ d``), projected, and mapped forward again.

A composite projects its support parts in the scaled space and its last level part (quant
and unify must come last, see :mod:`prunekit.constraints.harden`) in the original space.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: scheme parts whose values, not only support, are constrained (projected unscaled)
LEVEL_SCHEMES = ("quant", "unify")


def _level_part(part) -> bool:
    return getattr(part, "name", None) in LEVEL_SCHEMES


def _is_composite(scheme) -> bool:
    return hasattr(scheme, "parts") and hasattr(scheme, "part_rates")


class LayerConstraint:
    """The constraint of ``target`` on its GEMM view (see the module docstring)."""

    def __init__(self, target) -> None:
        self.target = target
        self.shape = tuple(target.param.shape)
        scheme = target.scheme
        composite = _is_composite(scheme)
        parts = list(scheme.parts) if composite else [scheme]
        rates = scheme.part_rates(target.sparsity) if composite else [target.sparsity]
        self.parts = list(zip(parts, rates, strict=True))
        self.levels = self.parts[-1][0] if _level_part(self.parts[-1][0]) else None
        self.support_parts = self.parts[:-1] if self.levels is not None else self.parts
        self.gates = target.gates

    # --------------------------------------------------------------- properties
    @property
    def has_levels(self) -> bool:
        """Values are drawn from levels (quant) or shared magnitudes (unify)."""
        return self.levels is not None

    @property
    def single(self) -> str | None:
        """The scheme's name when it is one plain part (not a composite)."""
        return self.parts[0][0].name if len(self.parts) == 1 else None

    @property
    def scheme_names(self) -> list[str]:
        return [p.name for p, _ in self.parts]

    def level_groups(self, rows: int) -> int | None:
        """Row groups sharing one quantisation step (for the scale refit), or None when the
        values cannot be refitted by one multiplier (unify)."""
        if getattr(self.levels, "name", None) != "quant":
            return None
        if getattr(self.levels, "level_set", "uniform") != "uniform":
            return None  # pow2 levels: a multiplier is still exact, but keep the fitted step
        return rows if getattr(self.levels, "per", "layer") == "channel" else self.gates

    # -------------------------------------------------------------- projections
    def _param(self, m: Tensor) -> Tensor:
        return m.reshape(self.shape)

    def _gemm(self, w: Tensor) -> Tensor:
        return w.reshape(self.shape[0], -1)

    def _apply(self, parts, m: Tensor) -> Tensor:
        out = self._param(m)
        for part, rate in parts:
            out = part.project(out, rate, gates=self.gates)
        return self._gemm(out)

    def project(self, m: Tensor) -> Tensor:
        """The scheme's own projection of GEMM matrix ``m`` (original space)."""
        return self._gemm(self.target.project(self._param(m)))

    def mask(self, m: Tensor) -> Tensor:
        """The scheme's own mask (True = kept) of GEMM matrix ``m``."""
        return self._gemm(self.target.mask(self._param(m)))

    def project_scaled(self, m: Tensor, d: Tensor) -> Tensor:
        """Projection of the scaled matrix ``m = W * d``: support parts in the scaled
        space, a level part in the original one (module docstring); result scaled."""
        out = self._apply(self.support_parts, m) if self.support_parts else m
        if self.levels is not None:
            rate = self.parts[-1][1]
            orig = self._param(out / d)
            out = self._gemm(self.levels.project(orig, rate, gates=self.gates)) * d
        return out

    def pattern(self, z: Tensor) -> Tensor:
        """What ADMM watches settle: the support, and for level schemes each entry's level
        index (rank of its magnitude among the values in use, signed)."""
        if self.levels is None:
            return z != 0
        mags = z.abs()
        _, index = torch.unique(mags, return_inverse=True)
        return torch.sign(z).to(torch.int64) * index
