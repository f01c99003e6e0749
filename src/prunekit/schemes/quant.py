"""Uniform symmetric quantisation onto ``2^b - 1`` levels (ADMM-NN), as a scheme.

The constraint set for one GEMM matrix (one RNN gate) is: every weight lies on the levels
``{0, ±s, ±2s, ..., ±L s}`` with ``L = 2^(b-1) - 1`` (or powers of two, ``levels="pow2"``),
for one step ``s > 0`` shared by the matrix (or by each row, ``scale="channel"``). For a
fixed ``s`` the nearest point rounds each weight to its nearest level; the step of least
squared error is found exactly by :mod:`.quant_scales`, so the projection is the exact
Euclidean projection onto the set. Level sets and codes are in :mod:`.levels`.

Zero is a level, so a pruned weight stays zero and quantising keeps a pruning mask; weights
smaller than ``s/2`` do become zero, and ``mask()`` is the nonzero support of the result.
Quantisation does not prune on its own: ``sparsity`` must be left unset (the natural rate is
0); to prune and quantise, compose it with a pruning scheme, e.g. ``"irregular+quant"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Scheme, gemm_view, split_gates
from .levels import LEVEL_SETS, SCALES, from_codes, magnitudes, max_level, to_codes
from .quant_scales import _project, best_scale, fit_scales, quantize

__all__ = ["LEVEL_SETS", "SCALES", "Quant", "best_scale", "fit_scales", "from_codes",
           "magnitudes", "max_level", "quantize", "to_codes"]


class Quant(Scheme):
    """Symmetric quantisation to ``bits`` bits. See the module docstring.

    ``levels``: ``"uniform"`` (``{0, ±s, ..., ±L s}``) or ``"pow2"`` (``{0, ±s, ±2s, ±4s,
    ...}``); ``scale``: one step per layer (per gate for RNN weights) or per output channel
    (``"channel"``, one per GEMM row)."""

    name = "quant"
    natural_sparsity = 0.0
    #: quantisation changes values, not the number of zeros it is asked for
    prunes = False
    frozen_kind = "levels"

    def __init__(self, *, bits: int = 8, scale: str = "layer", levels: str = "uniform",
                 **options) -> None:
        super().__init__(**options)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"quant bits must be an integer from 2 to 8, got {bits!r}")
        if scale not in SCALES:
            raise ConfigError(f"quant scale must be one of {SCALES}, got {scale!r}")
        if levels not in LEVEL_SETS:
            raise ConfigError(f"quant levels must be one of {LEVEL_SETS}, got {levels!r}")
        self.bits = bits
        self.per = scale
        self.level_set = levels

    # ------------------------------------------------------------------ public
    def row_scales(self, w: Tensor, *, gates: int = 1) -> Tensor:
        """The step of every GEMM row of ``w`` (float64 ``[rows]``): rows of one gate share
        one step unless ``scale="channel"``."""
        self.check(w.shape, gates=gates)
        with torch.no_grad():
            return torch.cat([fit_scales(gemm_view(g).float() if g.dtype != torch.float64
                                         else gemm_view(g), self.bits, self.level_set, self.per)
                              for g in split_gates(w, gates)])

    def scales(self, w: Tensor, *, gates: int = 1) -> list[float]:
        """The chosen step of every gate's GEMM matrix (one for a conv/linear weight)."""
        rows = self.row_scales(w, gates=gates)
        per_gate = rows.reshape(gates, -1)[:, 0]
        return [float(v) for v in per_gate]

    def scale(self, w: Tensor) -> float:
        """The chosen step ``s`` for weight ``w``."""
        return self.scales(w)[0]

    def levels(self, w: Tensor) -> Tensor:
        """All ``2L + 1`` levels for weight ``w``, ascending, in ``w``'s dtype; the values
        of ``project(w)`` are drawn from exactly these numbers (layer scale)."""
        mags = magnitudes(self.bits, self.level_set)
        signed = torch.cat([-mags.flip(0)[:-1], mags])
        return (signed * self.scale(w)).float().to(w.dtype)

    # ------------------------------------------------------------------- hooks
    def _rate(self, sparsity: float | None) -> float:
        if sparsity is not None:
            raise ConfigError(
                f"scheme 'quant' does not prune, so it takes no sparsity (got {sparsity!r}); "
                f"compose it with a pruning scheme, e.g. 'irregular+quant'"
            )
        return 0.0

    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        if self.per == "layer" and self.level_set == "uniform":
            return _project(m, self.bits)
        scale = fit_scales(m, self.bits, self.level_set, self.per)
        codes = to_codes(m, scale, self.bits, self.level_set)
        return from_codes(codes, scale, self.bits, self.level_set, m.dtype)

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return self._project_2d(m, sparsity, shape) != 0

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return m.reshape(-1).abs()

    def __repr__(self) -> str:
        return f"Quant(bits={self.bits}, scale={self.per!r}, levels={self.level_set!r})"

