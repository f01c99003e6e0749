"""Layer-wise ADMM (the seed papers' ADMM applied to one layer's reconstruction, as in ALPS,
Meng et al. 2024), for every prunekit scheme.

Problem, in the space scaled by ``d = sqrt(diag H_damped)`` per input column (``W~ = W d``,
``H~ = D^-1/2 H D^-1/2`` with a unit diagonal, so one ``rho`` suits every layer)::

    min_W 1/2 tr((W - W0~) H~ (W - W0~)^T)   s.t.  W = Z,  Z in C

- **W-step**: ``W = (W0~ H~ + rho (Z - U)) (H~ + rho I)^-1``. ``H~`` is diagonalised once per
  layer (``H~ = Q diag(l) Q^T``), so a new ``rho`` costs one product for the new inverse
  ``Q diag(1/(l + rho)) Q^T``; every iteration is one product with it.
- **Z-step**: ``Z = P_C(W + U)``, the scheme's own exact projection (in the scaled space for
  support sets, in the original one for level sets: see :mod:`.constraint`).
- **U-step**: ``U += W - Z``.
- **rho**: starts at ``rho0``; every ``update_every`` iterations the change of ``Z``'s
  support (or level pattern) since the last check decides: more than 10% of the kept
  entries moved -> x1.3, more than 0.5% -> x1.2, any -> x1.1; no change (or fewer than
  ``settle`` of the kept entries) after at least ``min_iterations`` -> stop (the support is
  stable; before that rho keeps growing by x1.1, so a small layer is not stopped early).
  If the support never moved before rho grew, rho was too large to explore: it is divided
  by 5 and the iterates restart (ALPS's rule).
- **Target**: with ``problem.cross`` (the driver's ``dense_target``), the linear term aims
  at the dense model's output rather than the compressed inputs' (:mod:`.problem`).
- **Refit**: on the final support, the kept weights are refitted by conjugate gradients
  (:func:`.refit.refit_cg`); for quantisation levels only the step is refitted
  (:func:`.refit.refit_scale`); unified blocks keep the projection.

The dual is kept as ``V = rho U`` (the multiplier itself), so a rho change keeps it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .constraint import LayerConstraint
from .problem import DEFAULT_DAMP, LayerProblem
from .refit import refit_cg, refit_scale

DEFAULTS = {"dense_target": False, "rho0": 0.1, "max_iterations": 300, "update_every": 3,
            "min_iterations": 30, "refit_iterations": 20, "damp": DEFAULT_DAMP,
            "settle": 3e-4, "rho_max": 1e6}


def admm(problem: LayerProblem, constraint: LayerConstraint, *, rho0: float = 0.1,
         max_iterations: int = 300, update_every: int = 3, min_iterations: int = 30,
         refit_iterations: int = 20, damp: float = DEFAULT_DAMP, settle: float = 3e-4,
         rho_max: float = 1e6, **_) -> tuple[Tensor, dict]:
    h = problem.damped(damp)
    d = torch.diagonal(h).sqrt()
    hs = h / d[:, None] / d[None, :]
    evals, evecs = torch.linalg.eigh(hs)
    evecs32 = evecs.float()
    w0s = (problem.w0.double() * d).float()
    g = (problem.rhs(damp) / d).float()  # W0~ H~, or the dense-target term, scaled

    def inverse(rho: float) -> Tensor:
        return (evecs32 * (1.0 / (evals + rho)).float()) @ evecs32.T

    def pattern(zs: Tensor) -> Tensor:
        return constraint.pattern(zs / d.float() if constraint.has_levels else zs)

    d32 = d.float()
    rho = rho0
    z_init = constraint.project_scaled(w0s, d32)
    w, z, v = w0s.clone(), z_init.clone(), torch.zeros_like(w0s)
    inv = inverse(rho)
    last = pattern(z)
    kept = max(1, int((z != 0).sum()))
    grown = False
    iterations = 0
    for it in range(max_iterations):
        iterations = it + 1
        w = (g - v + rho * z) @ inv
        z = constraint.project_scaled(w + v / rho, d32)
        v += rho * (w - z)
        if iterations % update_every:
            continue
        now = pattern(z)
        moved = int((now != last).sum())
        last = now
        if moved > 0.1 * kept:
            rho, grown = rho * 1.3, True
        elif moved > 0.005 * kept:
            rho, grown = rho * 1.2, True
        elif moved > 0:
            if grown:
                rho *= 1.1
            else:  # rho too large to explore: shrink it and start over
                rho /= 5
                w, z, v = w0s.clone(), z_init.clone(), torch.zeros_like(w0s)
        elif not grown:
            rho /= 5
        elif iterations >= min_iterations:
            break  # the support is stable
        else:
            rho *= 1.1
        if grown and iterations >= min_iterations and moved < settle * kept:
            break
        rho = min(rho, rho_max)
        inv = inverse(rho)
    # the final point: W's own projection (feasible), then the refit on its support
    zs = constraint.project_scaled(w, d32)
    if constraint.has_levels:
        out = zs / d32
        groups = constraint.level_groups(out.shape[0])
        if groups is not None:
            out = refit_scale(problem.h, problem.w0, out, groups, rhs=problem.rhs())
        out = constraint.project(out)
    else:
        mask = zs != 0
        refit = refit_cg(hs, w0s, mask, zs, iterations=refit_iterations, rhs=g.to(hs.dtype))
        out = refit / d32
        out = torch.where(mask, out, 0.0)
    return out, {"iterations": iterations, "rho": rho}
