"""Least-squares refit of the kept weights on a fixed support.

With the support ``M`` fixed, the layer objective ``tr((W - W0) H (W - W0)^T)`` separates into
one least-squares problem per output row: ``H[S, S] w_S = (W0 H)[S]`` for the row's kept
columns ``S``. :func:`refit_cg` solves all rows at once by conjugate gradients on the masked
operator ``V -> M * (V H)`` (each row its own step sizes), warm-started from the solver's
weights; :func:`refit_direct` solves each row exactly (for tests and small layers).
For quantisation levels the values are fixed to levels, so :func:`refit_scale` refits
only the step: one scalar per row group, in closed form. ``rhs`` replaces ``W0 H`` where
the solver aims at another linear term (:meth:`.problem.LayerProblem.rhs`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def refit_cg(h: Tensor, w0: Tensor, mask: Tensor, w_start: Tensor | None = None, *,
             iterations: int = 20, rtol: float = 1e-6, rhs: Tensor | None = None) -> Tensor:
    """Rows of ``W`` minimising ``tr((W - W0) H (W - W0)^T)`` with ``W = 0`` off ``mask``.

    ``h`` should be damped (positive definite); float64 in, float32 out would lose the
    small residuals, so the maths runs in ``h``'s dtype."""
    dtype = h.dtype
    m = mask.to(dtype)
    target = (w0.to(dtype) @ h if rhs is None else rhs.to(dtype)) * m
    x = (w0.to(dtype) if w_start is None else w_start.to(dtype)) * m
    r = target - (x @ h) * m
    p = r.clone()
    rr = (r * r).sum(1)
    stop = (rtol * rtol) * (target * target).sum(1).clamp_min(1e-300)
    for _ in range(iterations):
        if bool((rr <= stop).all()):
            break
        hp = (p @ h) * m
        denom = (p * hp).sum(1)
        alpha = torch.where(denom > 0, rr / denom.clamp_min(1e-300), torch.zeros_like(rr))
        x += alpha[:, None] * p
        r -= alpha[:, None] * hp
        rr_new = (r * r).sum(1)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-300), torch.zeros_like(rr))
        p = r + beta[:, None] * p
        rr = rr_new
    return (x * m).float()


def refit_direct(h: Tensor, w0: Tensor, mask: Tensor, rhs: Tensor | None = None) -> Tensor:
    """The exact per-row solution of :func:`refit_cg`'s problem (one solve per row)."""
    h64, w64 = h.double(), w0.double()
    b = w64 @ h64 if rhs is None else rhs.double()
    out = torch.zeros_like(w64)
    for i in range(w64.shape[0]):
        keep = torch.nonzero(mask[i]).flatten()
        if keep.numel():
            out[i, keep] = torch.linalg.solve(h64[keep][:, keep], b[i, keep])
    return out.float()


def refit_scale(h: Tensor, w0: Tensor, z: Tensor, groups: int,
                rhs: Tensor | None = None) -> Tensor:
    """``c_g * Z`` with the multiplier ``c_g`` of least error for each of ``groups`` equal
    groups of rows (a layer-wide step: 1 group per gate; per-channel steps: one per row):
    ``c = <W0 H, Z> / <Z H, Z>`` per group, which keeps every weight on its level index."""
    h64, w64, z64 = h.double(), w0.double(), z.double()
    zh = z64 @ h64
    b = w64 @ h64 if rhs is None else rhs.double()
    num = (b * z64).sum(1).reshape(groups, -1).sum(1)
    den = (zh * z64).sum(1).reshape(groups, -1).sum(1)
    c = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))
    rows = z.shape[0] // groups
    return (z64 * c.repeat_interleave(rows)[:, None]).float()
