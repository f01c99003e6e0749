"""Level sets (uniform, powers of two) and scales (per layer, per channel) against brute
force on tiny tensors; codes round trips; zero is always a level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import schemes
from prunekit.schemes.quant import (
    best_scale,
    fit_scales,
    from_codes,
    magnitudes,
    max_level,
    to_codes,
)

LEVEL_SETS = ("uniform", "pow2")


def tiny(seed: int, shape=(3, 7), zeros: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    return w.masked_fill(torch.rand(*shape, generator=g) < zeros, 0)


def brute_error(x: torch.Tensor, s: float, bits: int, level_set: str) -> float:
    """Squared error of rounding every entry of ``x`` to its nearest level of step ``s``,
    found by trying every level (no codes involved)."""
    mags = magnitudes(bits, level_set)
    levels = torch.cat([-mags.flip(0)[:-1], mags]) * s
    dist = (x.double().reshape(-1, 1) - levels.reshape(1, -1)) ** 2
    return float(dist.min(dim=1).values.sum())


def grid_min(x: torch.Tensor, lo: float, hi: float, bits: int, level_set: str,
             points: int = 4000) -> float:
    return min(brute_error(x, float(s), bits, level_set) for s in np.linspace(lo, hi, points))


def pow2_range(x: torch.Tensor, bits: int) -> tuple[float, float]:
    """The documented range of power-of-two steps: the top level ``2^(L-1) s`` in
    ``[max|w| / 1.5, 4 max|w|]``."""
    top = float(magnitudes(bits, "pow2")[-1])
    amax = float(x.abs().max())
    return amax / (1.5 * top), 4 * amax / top


# ----------------------------------------------------------------- level sets
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_level_magnitudes(bits):
    top = max_level(bits)
    assert magnitudes(bits, "uniform").tolist() == list(range(top + 1))
    assert magnitudes(bits, "pow2").tolist() == [0.0] + [2.0**k for k in range(top)]
    for level_set in LEVEL_SETS:  # 2L + 1 signed levels fit in `bits` bits
        assert 2 * (magnitudes(bits, level_set).numel() - 1) + 1 == 2**bits - 1


@pytest.mark.parametrize("level_set", LEVEL_SETS)
@pytest.mark.parametrize("bits", [3, 4])
def test_codes_are_the_nearest_level(bits, level_set):
    x = tiny(1, (4, 9), zeros=0.0) * 2
    scale = torch.tensor([0.3, 0.5, 0.05, 1.0], dtype=torch.float64)
    codes = to_codes(x, scale, bits, level_set)
    assert codes.abs().max() <= max_level(bits)
    got = from_codes(codes, scale, bits, level_set, torch.float64)
    for r in range(4):
        for v, q in zip(x[r].tolist(), got[r].tolist(), strict=True):
            best = brute_error(torch.tensor([v]), float(scale[r]), bits, level_set)
            assert (v - q) ** 2 == pytest.approx(best, abs=1e-12)


# ------------------------------------------------------------------------ scales
@pytest.mark.parametrize("bits", [3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pow2_step_is_no_worse_than_a_grid_search_over_its_range(seed, bits):
    x = tiny(seed, (2, 6))
    s = float(fit_scales(x, bits, "pow2", "layer")[0])
    lo, hi = pow2_range(x, bits)
    assert lo * (1 - 1e-6) <= s <= hi * (1 + 1e-6)
    chosen = brute_error(x, s, bits, "pow2")
    best = grid_min(x, lo, hi, bits, "pow2")
    assert chosen <= best * (1 + 1e-5) + 1e-12
    # and the codes give exactly the brute-force rounding at that step
    rounded = from_codes(to_codes(x, torch.full((2,), s), bits, "pow2"), torch.full((2,), s),
                         bits, "pow2", torch.float64)
    assert float(((x.double() - rounded) ** 2).sum()) == pytest.approx(chosen, rel=1e-12)


@pytest.mark.parametrize("level_set", LEVEL_SETS)
@pytest.mark.parametrize("bits", [3, 4])
def test_channel_scale_is_each_rows_own_least_squares_step(bits, level_set):
    x = tiny(5, (4, 8))
    x[2] = 0  # an all-zero row gets step 0
    x[3] *= 20  # rows of very different sizes: one shared step would not fit them
    steps = fit_scales(x, bits, level_set, "channel")
    assert steps.shape == (4,) and steps.dtype == torch.float64
    assert steps[2] == 0
    for r in (0, 1, 3):
        own = float(fit_scales(x[r:r + 1], bits, level_set, "layer")[0])
        assert float(steps[r]) == own
        amax = float(x[r].abs().max())
        lo, hi = pow2_range(x[r], bits) if level_set == "pow2" else (amax / 50, 2 * amax)
        best = grid_min(x[r], lo, hi, bits, level_set, points=3000)
        assert brute_error(x[r], own, bits, level_set) <= best * (1 + 1e-5) + 1e-12
    shared = float(fit_scales(x, bits, level_set, "layer")[0])
    per_row = sum(brute_error(x[r], float(steps[r]), bits, level_set) for r in range(4))
    assert per_row < brute_error(x, shared, bits, level_set)
    if level_set == "uniform":
        assert float(steps[0]) == best_scale(x[0], bits)


@pytest.mark.parametrize("levels", LEVEL_SETS)
@pytest.mark.parametrize("scale", ["layer", "channel"])
def test_projection_takes_the_fitted_levels_and_keeps_zeros(scale, levels):
    w = tiny(7, (5, 3, 3, 3), zeros=0.4)
    q = schemes.get("quant", bits=3, scale=scale, levels=levels)
    out = q.project(w)
    steps = q.row_scales(w)
    assert steps.shape == (5,)
    assert (steps[0] == steps).all() if scale == "layer" else len(set(steps.tolist())) > 1
    mags = magnitudes(3, levels)
    for r in range(5):
        row = out[r].reshape(-1).double()
        assert torch.isin(row.abs(), (mags * steps[r]).float().double()).all()
        assert row.abs().unique().numel() <= 2 ** (3 - 1)
    assert not out[w == 0].any()  # zero is a level: pruned weights stay pruned
    assert torch.equal(q.project(out), out)  # on its levels already: projecting is identity


# ------------------------------------------------------------ codes round trip
@settings(max_examples=25, deadline=None)
@given(bits=st.integers(2, 8), level_set=st.sampled_from(LEVEL_SETS),
       rows=st.integers(1, 4), cols=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_codes_round_trip(bits, level_set, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    top = max_level(bits)
    codes = torch.randint(-top, top + 1, (rows, cols), generator=g)
    # steps with few significant bits, as the fitted ones are, so levels are exact floats
    scale = torch.ldexp(torch.randint(1, 64, (rows,), generator=g).double(),
                        torch.randint(-12, 2, (rows,), generator=g))
    values = from_codes(codes, scale, bits, level_set)
    assert values.dtype == torch.float32
    assert torch.equal(to_codes(values, scale, bits, level_set), codes)
    assert torch.equal(values == 0, codes == 0)  # zero is code 0 and nothing else


@pytest.mark.parametrize("level_set", LEVEL_SETS)
def test_zero_is_always_a_level(level_set):
    scale = torch.tensor([0.5, 0.0], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.2, -0.2, 3.0], [1.0, -2.0, 0.0, 5.0]])
    codes = to_codes(x, scale, 4, level_set)
    assert codes[0, 0] == 0 and codes[0, 1] == 0 and codes[0, 2] == 0  # below half a step
    assert not codes[1].any()  # a zero step (all-zero row) maps everything to 0
    assert magnitudes(4, level_set)[0] == 0
    assert not fit_scales(torch.zeros(2, 3), 4, level_set, "layer").any()
