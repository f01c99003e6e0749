"""Uniform symmetric quantisation onto ``2^b - 1`` levels (ADMM-NN).

The constraint set for one GEMM matrix (one RNN gate) is: every weight lies on the levels
``{0, ±s, ±2s, ..., ±L s}`` with ``L = 2^(b-1) - 1``, for one step ``s > 0`` shared by the
matrix. For a fixed ``s`` the nearest point rounds each weight to its nearest level (clamped
at ``±L s``); the step ``s`` is the one of least squared error, found by
:func:`best_scale`:

- *exactly* when the problem is small enough (at most ``EXACT_BUDGET`` breakpoints, about
  ``L`` per weight): the error is a quadratic in ``s`` between consecutive *breakpoints*
  ``|w| / (q + 1/2)`` where a weight changes level, so sweeping the breakpoints in order and
  minimising each quadratic in closed form gives the global minimum over all ``s > 0``;
  the projection is then the exact Euclidean projection onto the set (up to rounding the
  step to ``25 - b`` significant bits, see :func:`best_scale`);
- otherwise by a fine geometric grid over ``[0.02, 2] x max|w| / L`` followed by Lloyd
  refinement (alternate "round to levels" and "best step for these levels", each of which
  can only lower the error) from the best grid points. Not guaranteed global, but never
  worse than the grid.

Zero is a level, so a pruned weight stays zero and quantising keeps a pruning mask; weights
smaller than ``s/2`` do become zero, and ``mask()`` is the nonzero support of the result.
Quantisation does not prune on its own: ``sparsity`` must be left unset (the natural rate is
0); to prune and quantise, compose it with a pruning scheme, e.g. ``"irregular+quant"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Scheme, gemm_view, index_bits, split_gates

#: largest number of breakpoints the exact step search sweeps (else: grid + refinement)
EXACT_BUDGET = 1 << 20
_GRID = 1024
_REFINE_FROM = 4
_REFINE_STEPS = 50
_TIE = 1e-10  # errors this close (relative to the energy) count as equal


def max_level(bits: int) -> int:
    """``L = 2^(bits-1) - 1``: levels run from ``-L s`` to ``L s``."""
    return (1 << (bits - 1)) - 1


def _search_range(a: Tensor, top: int) -> tuple[float, float]:
    """``[lo, hi]`` holding the best step for magnitudes ``a`` (all > 0).

    Above ``2 max|w|`` every weight rounds to 0 (error = the whole energy, the worst). Below
    ``min|w| / (L + 1/2)`` every weight clamps at ``L s``, where the error
    ``sum (|w| - L s)^2`` still falls as ``s`` grows (its minimum, ``mean|w| / L``, lies
    above). So the best step lies in between.
    """
    return float(a.min()) / (top + 0.5), 2.0 * float(a.max())


def _exact_scale(a: Tensor, top: int, lo: float, hi: float) -> float:
    """Global least-squares step over ``[lo, hi]`` by a sweep over level breakpoints."""
    energy = float((a * a).sum())
    q0 = torch.clamp(torch.floor(a / hi + 0.5), 0, top).long()  # levels just below hi
    per_weight = top - q0  # breakpoints a/(q+1/2) for q = q0..L-1, all within [lo, hi)
    owner = torch.repeat_interleave(torch.arange(a.numel()), per_weight)
    first = torch.cumsum(per_weight, 0) - per_weight
    q = q0[owner] + torch.arange(owner.numel()) - first[owner]
    t = a[owner] / (q + 0.5)
    order = torch.argsort(t, descending=True)
    t = t[order]
    zero = torch.zeros(1, dtype=torch.float64)
    # sum(a*q) and sum(q^2) on each interval between breakpoints, from the top down:
    # crossing a/(q+1/2) downwards moves that weight from level q to q+1
    dot = float((a * q0).sum()) + torch.cat([zero, torch.cumsum(a[owner][order], 0)])
    sq = float((q0 * q0).sum()) + torch.cat([zero, torch.cumsum((2 * q + 1)[order], 0)])
    upper = torch.cat([torch.tensor([hi], dtype=torch.float64), t])
    lower = torch.cat([t, torch.tensor([lo], dtype=torch.float64)])
    best = torch.minimum(torch.maximum(dot / sq.clamp(min=1), lower), upper)
    s = torch.where(sq > 0, best, upper)
    err = energy - 2 * s * dot + s * s * sq
    # among (numerically) tied minima take the largest step: on weights already on a grid
    # of levels that is the grid's own step, which keeps the projection idempotent
    ties = torch.nonzero(err <= err.min() + _TIE * energy).flatten()
    return float(s[int(ties[0])])


class _SortedErrors:
    """Squared quantisation error for many steps at once, from sorted magnitudes and
    prefix sums: ``O(L log n)`` per step instead of a pass over the weights."""

    def __init__(self, a: Tensor, top: int) -> None:
        self.a = torch.sort(a).values
        self.prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self.a, 0)])
        self.energy = float((a * a).sum())
        self.half = torch.arange(top, dtype=torch.float64) + 0.5
        self.levels = torch.arange(1, top + 1, dtype=torch.float64)

    def stats(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Error, ``sum |w| q`` and ``sum q^2`` at every step in ``s`` (1-D)."""
        starts = torch.searchsorted(self.a, self.half * s[:, None])  # level q>=1 begins here
        n = torch.full((s.numel(), 1), self.a.numel(), dtype=starts.dtype)
        ends = torch.cat([starts[:, 1:], n], dim=1)
        dot = ((self.prefix[ends] - self.prefix[starts]) * self.levels).sum(dim=1)
        sq = ((ends - starts).double() * self.levels * self.levels).sum(dim=1)
        return self.energy - 2 * s * dot + s * s * sq, dot, sq


def _grid_scale(a: Tensor, top: int, lo: float, hi: float) -> float:
    """Best step on a geometric grid, refined by Lloyd iterations from the best points."""
    errors = _SortedErrors(a, top)
    s0 = float(a.max()) / top
    grid = torch.logspace(
        math.log10(max(lo, 0.02 * s0)), math.log10(min(hi, 2.0 * s0)), _GRID, dtype=torch.float64
    )
    err = errors.stats(grid)[0]
    best_s, best_err = float(grid[int(torch.argmin(err))]), float(err.min())
    for start in grid[torch.argsort(err)[:_REFINE_FROM]]:
        s, e = start.reshape(1), None
        for _ in range(_REFINE_STEPS):
            err_s, dot, sq = errors.stats(s)
            if e is not None and float(err_s) >= e:
                break
            e = float(err_s)
            if e < best_err:
                best_s, best_err = float(s), e
            if float(sq) == 0:
                break
            s = (dot / sq).clamp(lo, hi)
    return best_s


def _error(a: Tensor, s: float, top: int) -> float:
    """Squared error of rounding magnitudes ``a`` to the levels of step ``s``."""
    return float(((a - s * torch.round(a / s).clamp(max=top)) ** 2).sum())


def _representable(s: float, bits: int) -> list[float]:
    """The two steps next to ``s`` with ``25 - bits`` significant bits, so that every
    level ``q s`` (``|q| < 2^(bits-1)``) is exact in float32."""
    mantissa, exponent = math.frexp(s)
    keep = 25 - bits
    x = mantissa * (1 << keep)
    return [math.ldexp(math.floor(x), exponent - keep), math.ldexp(math.ceil(x), exponent - keep)]


def best_scale(w: Tensor, bits: int, *, budget: int = EXACT_BUDGET) -> float:
    """Least-squares step ``s`` for quantising ``w`` to ``bits`` (0.0 for an all-zero ``w``).

    Exact (global over ``s > 0``) when at most ``budget`` level breakpoints need sweeping,
    else grid search plus refinement; see the module docstring. The step is then rounded to
    ``25 - bits`` significant bits (the better neighbour, a relative change below
    ``2^(bits-25)``) so that every level is an exact float32 number: quantised weights are
    exact integer multiples of the step, and projecting them again changes nothing."""
    a = w.detach().reshape(-1).abs().double().cpu()
    a = a[a > 0]
    if a.numel() == 0:
        return 0.0
    top = max_level(bits)
    lo, hi = _search_range(a, top)
    q0 = torch.clamp(torch.floor(a / hi + 0.5), 0, top)
    if float((top - q0).sum()) <= budget:
        s = _exact_scale(a, top, lo, hi)
    else:
        s = _grid_scale(a, top, lo, hi)
    return min(_representable(s, bits), key=lambda c: _error(a, c, top))


def quantize(m: Tensor, s: float, bits: int) -> Tensor:
    """Round ``m`` to the nearest of ``{0, ±s, ..., ±L s}`` (float64 maths, ``m``'s dtype)."""
    if s == 0.0:
        return torch.zeros_like(m)
    top = max_level(bits)
    q = torch.round(m.double() / s).clamp(-top, top)
    return (q * s).to(m.dtype)


class Quant(Scheme):
    """Uniform symmetric quantisation to ``bits`` bits. See the module docstring."""

    name = "quant"
    natural_sparsity = 0.0
    #: quantisation changes values, not the number of zeros it is asked for
    prunes = False

    def __init__(self, *, bits: int = 8, **options) -> None:
        super().__init__(**options)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"quant bits must be an integer from 2 to 8, got {bits!r}")
        self.bits = bits

    # ------------------------------------------------------------------ public
    def scales(self, w: Tensor, *, gates: int = 1) -> list[float]:
        """The chosen step of every gate's GEMM matrix (one for a conv/linear weight)."""
        self.check(w.shape, gates=gates)
        with torch.no_grad():
            return [best_scale(gemm_view(g).float(), self.bits) for g in split_gates(w, gates)]

    def scale(self, w: Tensor) -> float:
        """The chosen step ``s`` for weight ``w``."""
        return self.scales(w)[0]

    def levels(self, w: Tensor) -> Tensor:
        """All ``2L + 1`` levels for weight ``w``, ascending, in ``w``'s dtype; the values
        of ``project(w)`` are drawn from exactly these numbers."""
        top = max_level(self.bits)
        steps = torch.arange(-top, top + 1, dtype=torch.float64)
        return (steps * self.scale(w)).float().to(w.dtype)

    # ------------------------------------------------------------------- hooks
    def _rate(self, sparsity: float | None) -> float:
        if sparsity is not None:
            raise ConfigError(
                f"scheme 'quant' does not prune, so it takes no sparsity (got {sparsity!r}); "
                f"compose it with a pruning scheme, e.g. 'irregular+quant'"
            )
        return 0.0

    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return quantize(m, best_scale(m, self.bits), self.bits)

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return self._project_2d(m, sparsity, shape) != 0

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return m.reshape(-1).abs()

    def _storage_bits_2d(self, m: Tensor, bits: int, shape: torch.Size) -> int:
        """The cheaper of sparse (CSR: ``b`` bits plus a column index per nonzero, a row
        pointer per row) and dense (``b`` bits per weight), plus the 32-bit step. Values
        take this scheme's ``bits``, whatever width the caller asks for."""
        rows, cols = m.shape
        nnz = int((m != 0).sum().item())
        sparse = nnz * (self.bits + index_bits(cols)) + (rows + 1) * 32
        return min(sparse, rows * cols * self.bits) + 32

    def __repr__(self) -> str:
        return f"Quant(bits={self.bits})"
