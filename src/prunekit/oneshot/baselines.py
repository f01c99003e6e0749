"""The calibration-free and one-pass solvers: magnitude and Wanda.

- ``magnitude``: the scheme's own projection of the dense weight; works for every scheme
  and ignores the calibration data (its error is the reference every record reports).
- ``wanda`` (Sun et al. 2023): score ``|W_ij| * ||X_j||`` (``||X_j|| = sqrt(H_jj)``) and keep
  the best within each output row (irregular) or within each N:M run. Defined for those two
  schemes only; the rows share the layer's exact count, the remainder going to the first
  rows, so the rate is what :func:`prunekit.resolve` asked for to the weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .constraint import LayerConstraint
from .problem import LayerProblem


def magnitude(problem: LayerProblem, constraint: LayerConstraint, **_) -> tuple[Tensor, dict]:
    return constraint.project(problem.w0), {}


def prune_count(n: int, sparsity: float) -> int:
    """Entries an irregular projection prunes of ``n`` at ``sparsity``: the nearest whole
    count, never all of them (the rule every prunekit scheme rounds by)."""
    return max(0, min(int(math.floor(sparsity * n + 0.5)), n - 1))


def row_counts(rows: int, cols: int, sparsity: float) -> Tensor:
    """Entries to prune in each row so the layer prunes exactly what ``Irregular`` would."""
    total = prune_count(rows * cols, sparsity)
    base, extra = divmod(total, rows)
    counts = torch.full((rows,), base, dtype=torch.long)
    counts[:extra] += 1
    return counts


def prune_rows(scores: Tensor, counts: Tensor) -> Tensor:
    """Mask (True = kept) pruning the ``counts[i]`` lowest scores of row ``i`` (ties: the
    earlier entry goes first)."""
    order = torch.argsort(scores, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return rank >= counts[:, None]


def wanda(problem: LayerProblem, constraint: LayerConstraint, **_) -> tuple[Tensor, dict]:
    w = problem.w0
    norms = torch.diagonal(problem.h).clamp_min(0).sqrt().float()
    scaled = w * norms
    scheme, rate = constraint.parts[0]
    if constraint.single == "nm":
        keep = constraint.mask(scaled)
        return torch.where(keep, w, 0.0), {}
    keep = prune_rows(scaled.abs(), row_counts(w.shape[0], w.shape[1], rate))
    return torch.where(keep, w, 0.0), {}


def supports(method: str, constraint: LayerConstraint) -> str | None:
    """Why ``method`` cannot solve this constraint, or None if it can."""
    if method in ("magnitude", "admm"):
        return None
    if constraint.single not in ("irregular", "nm"):
        return (f"method {method!r} is defined for the schemes 'irregular' and 'nm' only, "
                f"not {'+'.join(constraint.scheme_names)!r} (use method 'admm')")
    if constraint.gates != 1:
        return f"method {method!r} cannot prune a weight stacked from {constraint.gates} gates"
    return None


__all__ = ["magnitude", "prune_count", "prune_rows", "row_counts", "supports", "wanda"]
