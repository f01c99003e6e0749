"""Iterative searches end: every loop in the projections has a bound, so a degenerate input
gives an answer (or an error) instead of a hung process. Each test here has a short
timeout of its own; before the bound, the first one never returned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.schemes import get
from prunekit.schemes.unify_assign import _prices


def unify_costs(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(n) + 1.0
    u = p * rng.random(n) * 0.5
    return p, u, p - u


def preferring_unify(p, u, d, a: int, alpha_u: float) -> int:
    """How many blocks prefer unifying at price ``alpha_u`` (``_prices`` aims at ``b``)."""
    alpha_p = float(np.partition(np.maximum(p, d + alpha_u), a - 1)[a - 1])
    return int(np.count_nonzero(np.maximum(u, alpha_p - d) < alpha_u))


@pytest.mark.timeout(60)
def test_unify_prices_widen_a_zero_width_bracket():
    p, u, d = unify_costs()
    top = float(u.max()) + float(d.max() - d.min())  # the bracket [top, top] holds no crossing
    alpha_p, alpha_u = _prices(p, u, d, 20, 30, around=(top, top))
    assert preferring_unify(p, u, d, 20, alpha_u) == 30
    assert alpha_p == _prices(p, u, d, 20, 30)[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("weights", ["ties", "zeros", "huge"])
def test_unify_and_quant_end_on_degenerate_layers(weights):
    """All-equal, all-zero and float32-max weights of a 256 x 1024 layer (65k blocks: the
    sampled-price path, not the small exact one)."""
    w = {"ties": torch.ones(256, 1024), "zeros": torch.zeros(256, 1024),
         "huge": torch.full((256, 1024), torch.finfo(torch.float32).max / 4)}[weights]
    w[::2] *= -1
    unified = get("unify", block=(1, 4), unified=0.3).project(w, 0.5)
    zeros = 1.0 if weights == "zeros" else 0.5  # a unified block of zeros is zero too
    assert (unified == 0).float().mean().item() == pytest.approx(zeros, abs=1e-3)
    quantized = get("quant", bits=4).project(w)
    assert quantized.shape == w.shape and torch.isfinite(quantized).all()
