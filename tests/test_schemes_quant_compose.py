"""Quantisation levels and step search; composite schemes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError, PrunekitError, TargetError
from prunekit.schemes import get, measured_sparsity
from prunekit.schemes import quant_scales as quant
from prunekit.schemes.compose import Composite
from prunekit.schemes.quant import Quant, best_scale, quantize

FAST = settings(max_examples=40, deadline=None)


def sample(seed: int, *shape: int, zeros: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * (0.1 + 3 * torch.rand((), generator=g))
    return torch.where(torch.rand(*shape, generator=g) < zeros, 0.0, w)


def quant_error(w: torch.Tensor, s: float, bits: int) -> float:
    """Squared error of rounding ``w`` to ``{0, ±s, ..., ±L s}`` (written out directly)."""
    top = 2 ** (bits - 1) - 1
    v = w.double()
    levels = torch.arange(-top, top + 1, dtype=torch.float64) * s
    nearest = levels[(v.reshape(-1, 1) - levels).abs().argmin(dim=1)]
    return float(((v.reshape(-1) - nearest) ** 2).sum())


# ---------------------------------------------------------------------- quant
@FAST
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 8), zeros=st.floats(0.0, 0.5))
def test_values_lie_on_levels_and_are_the_nearest_level(seed, bits, zeros):
    w = sample(seed, 6, 7, zeros=zeros)
    scheme = get("quant", bits=bits)
    p = scheme.project(w)
    levels = scheme.levels(w)
    assert levels.numel() == 2 ** bits - 1
    assert torch.isin(p, levels).all()
    gap = (w.reshape(-1, 1) - levels).abs().min(dim=1).values
    assert ((w - p).abs().reshape(-1) <= gap + 1e-6).all()
    assert (p[w == 0] == 0).all()  # zero is a level: pruned weights stay pruned
    mask = scheme.mask(w)
    assert torch.equal(mask, p != 0) and not mask[w == 0].any()


@FAST
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 5), n=st.integers(1, 40))
def test_step_is_no_worse_than_a_dense_grid_search(seed, bits, n):
    w = sample(seed, n)
    scheme = Quant(bits=bits)
    s = scheme.scale(w.reshape(1, -1))
    s0 = float(w.abs().max()) / (2 ** (bits - 1) - 1)
    grid = torch.linspace(0.05, 2.0, 1500, dtype=torch.float64) * s0
    best_on_grid = min(quant_error(w, float(g), bits) for g in grid)
    # the step is rounded to 25 - bits significant bits: allow that much (relative) slack
    slack = 2.0 ** (bits - 23) * float((w.double() ** 2).sum())
    assert quant_error(w, s, bits) <= best_on_grid + slack


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 8), n=st.integers(16, 256))
def test_large_layer_search_is_no_worse_than_a_grid_search(seed, bits, n):
    w = sample(seed, n)
    s = best_scale(w, bits, budget=0)  # force the proven-window path
    s0 = float(w.abs().max()) / (2 ** (bits - 1) - 1)
    grid = torch.linspace(0.3, 1.2, 200, dtype=torch.float64) * s0
    best_on_grid = min(quant_error(w, float(g), bits) for g in grid)
    slack = 2.0 ** (bits - 23) * float((w.double() ** 2).sum())
    assert quant_error(w, s, bits) <= best_on_grid + slack


@FAST
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 8), zeros=st.floats(0.0, 0.5))
def test_quantisation_is_idempotent(seed, bits, zeros):
    scheme = Quant(bits=bits)
    p = scheme.project(sample(seed, 5, 9, zeros=zeros))
    assert torch.equal(scheme.project(p), p)


def spread_out(seed: int, n: int, kind: str) -> torch.Tensor:
    """Weights of a few shapes the window's bounds must hold for."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    if kind == "sparse":
        w = torch.where(torch.rand(n, generator=g) < 0.9, 0.0, w)
    elif kind == "heavy":
        w = w**3
    elif kind == "outlier":
        w[0] = 1e3
    elif kind == "two scales":
        w = torch.where(torch.rand(n, generator=g) < 0.5, 0.01 * w, 10 * w)
    return w


# the histogram and breakpoint bins made coarse, so that small inputs take every branch
COARSE = {"_HALF_BINS": 1 << 7, "_REFINE_BINS": 1 << 5}


@pytest.mark.parametrize("constants", [{}, COARSE], ids=["default", "coarse bins"])
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bits=st.integers(2, 8),
    n=st.integers(50, 1500),
    kind=st.sampled_from(["normal", "sparse", "heavy", "outlier", "two scales"]),
)
def test_window_search_finds_the_same_least_error_as_the_full_sweep(
    constants, seed, bits, n, kind
):
    w = spread_out(seed, n, kind)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in constants.items():
            patch.setattr(quant, name, value)
        s_window = best_scale(w, bits, budget=0)
    s_full = best_scale(w, bits, budget=1 << 40)
    energy = float((w.double() ** 2).sum())
    assert quant_error(w, s_window, bits) == pytest.approx(
        quant_error(w, s_full, bits), rel=0, abs=1e-9 * energy
    )


@pytest.mark.parametrize("constants", [{}, COARSE], ids=["default", "coarse bins"])
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bits=st.integers(2, 6),
    kind=st.sampled_from(["normal", "sparse", "heavy", "outlier", "two scales"]),
)
def test_histogram_bounds_hold_for_every_step(constants, seed, bits, kind):
    """The window is only as sound as these bounds: compared with the error written out."""
    w = spread_out(seed, 400, kind)
    top = 2 ** (bits - 1) - 1
    with pytest.MonkeyPatch.context() as patch:
        for name, value in constants.items():
            patch.setattr(quant, name, value)
        x = w.numpy()
        amax = float(w.abs().max())
        histogram = quant._histogram(x, amax, top)[0]
    g = torch.Generator().manual_seed(seed)
    s0 = amax / top
    edges = torch.sort(s0 * 2 ** (4 * torch.rand(12, generator=g) - 3)).values.double()
    s1, s2 = edges[0::2].numpy(), edges[1::2].numpy()
    lower = histogram.lower(s1, s2)
    slack = 1e-9 * float((w.double() ** 2).sum())
    for lo, hi, bound in zip(s1, s2, lower, strict=True):
        inside = torch.linspace(float(lo), float(hi), 200, dtype=torch.float64)
        assert bound <= min(quant_error(w, float(s), bits) for s in inside) + slack
    steps = edges.numpy()
    for s, bound in zip(steps, histogram.upper(steps), strict=True):
        assert bound >= quant_error(w, float(s), bits) - slack
    assert histogram.lower(np.zeros(1), steps[:1])[0] <= quant_error(w, float(steps[0]), bits)


@pytest.mark.parametrize("constants", [{}, COARSE], ids=["default", "coarse bins"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_window_projection_is_the_rounding_at_its_step_and_idempotent(
    monkeypatch, constants, bits
):
    monkeypatch.setattr(quant, "EXACT_BUDGET", 0)  # every matrix takes the window path
    for name, value in constants.items():
        monkeypatch.setattr(quant, name, value)
    scheme = Quant(bits=bits)
    for seed, kind in enumerate(["normal", "sparse", "heavy", "two scales"]):
        w = spread_out(seed, 6000, kind).reshape(60, 100)
        p = scheme.project(w)
        assert torch.equal(p, quantize(w, scheme.scale(w), bits))
        assert torch.equal(scheme.project(p), p)
        w64 = w.double()
        assert torch.equal(scheme.project(w64), quantize(w64, scheme.scale(w64), bits))


def test_large_matrices_take_the_window_and_match_the_full_sweep():
    w = torch.randn(300, 1000, generator=torch.Generator().manual_seed(3))
    assert w.numel() * 7 > quant.EXACT_BUDGET
    s = Quant(bits=4).scale(w)
    s_full = best_scale(w, 4, budget=1 << 40)
    energy = float((w.double() ** 2).sum())
    assert abs(quant_error(w, s, 4) - quant_error(w, s_full, 4)) <= 1e-9 * energy


@pytest.mark.parametrize("scale", [1e-40, 1e-36, 1e37])
def test_window_handles_weights_near_the_ends_of_float32(monkeypatch, scale):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(40, 50, generator=g, dtype=torch.float64) * scale).float()
    monkeypatch.setattr(quant, "EXACT_BUDGET", 0)
    scheme = Quant(bits=4)
    p = scheme.project(w)
    assert torch.isfinite(p).all()
    assert torch.equal(p, quantize(w, scheme.scale(w), 4))
    energy = float((w.double() ** 2).sum())
    s_full = best_scale(w, 4, budget=1 << 40)
    assert abs(quant_error(w, scheme.scale(w), 4) - quant_error(w, s_full, 4)) <= 1e-9 * energy


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_weights_are_named(bad):
    w = torch.ones(4, 8)
    w[1, 2] = bad
    with pytest.raises(PrunekitError, match="finite"):
        get("quant", bits=4).project(w)


def test_exact_step_recovers_weights_already_on_levels():
    w = torch.tensor([[-3.0, -1.0, 0.0, 2.0, 3.0, 1.0, 1.0, -2.0]]) * 0.37
    scheme = Quant(bits=3)
    assert scheme.scale(w) == pytest.approx(0.37)
    assert torch.allclose(scheme.project(w), w)


def test_each_gate_gets_its_own_step():
    w = torch.cat([sample(1, 4, 6), 100 * sample(2, 4, 6)])
    scheme = Quant(bits=4)
    s_small, s_large = scheme.scales(w, gates=2)
    assert s_large > 10 * s_small
    p = scheme.project(w, gates=2)
    assert torch.isin(p[:4], scheme.levels(w[:4])).all()
    assert torch.isin(p[4:], scheme.levels(w[4:])).all()


def test_quant_takes_no_sparsity():
    scheme = get("quant", bits=4)
    assert scheme.natural_sparsity == 0.0
    for rate in (0.5, 0.0):
        with pytest.raises(ConfigError, match=r"irregular\+quant"):
            scheme.project(sample(0, 4, 4), rate)


@pytest.mark.parametrize("bits", [1, 9, 4.0, True, "4"])
def test_bad_bits_are_config_errors(bits):
    with pytest.raises(ConfigError, match="bits"):
        get("quant", bits=bits)


# ------------------------------------------------------------------ composite
def test_composite_applies_parts_in_order():
    w = sample(3, 8, 12)
    scheme = get("irregular+quant", bits=4)
    assert isinstance(scheme, Composite) and scheme.name == "irregular+quant"
    expected = get("quant", bits=4).project(get("irregular").project(w, 0.8))
    p = scheme.project(w, 0.8)
    assert torch.equal(p, expected)
    assert measured_sparsity(p) >= 0.8


def test_rates_go_to_earlier_pruning_parts_and_the_request_to_the_last():
    w = sample(4, 8, 6)
    scheme = get("filter+irregular", rates=[0.25])
    assert scheme.name == "filter+irregular"
    p = scheme.project(w, 0.75)
    assert torch.equal(p, get("irregular").project(get("filter").project(w, 0.25), 0.75))
    assert int((p == 0).all(dim=1).sum()) >= 2
    assert measured_sparsity(p) == pytest.approx(0.75)
    assert scheme.group_norms(w).shape == (8 + 48,)


def test_nested_irregular_rates_give_the_exact_projection():
    w = sample(5, 10, 10)
    p = get("irregular+irregular", rates=[0.3]).project(w, 0.6)
    assert torch.equal(p, get("irregular").project(w, 0.6))


def test_natural_rate_parts_take_theirs_when_unset():
    w = sample(6, 4, 16)
    scheme = get("nm+quant", n=2, m=4, bits=4)
    assert scheme.natural_sparsity == pytest.approx(0.5)
    p = scheme.project(w)
    assert ((p.reshape(4, 4, 4) != 0).sum(dim=2) <= 2).all()
    assert torch.isin(p, get("quant", bits=4).levels(get("nm").project(w))).all()


def test_mask_is_the_nonzero_support_within_every_part_mask():
    w = torch.tensor([[1.0, -1.1, 0.9, 1.0, 0.1, 0.01], [-1.0, 1.0, 0.95, -0.15, 1.05, -0.01]])
    scheme = get("irregular+quant", bits=2)  # levels {0, ±s}: 0.1 and -0.15 round to zero
    p = scheme.project(w, 1 / 6)
    mask = scheme.mask(w, 1 / 6)
    assert torch.equal(mask, (p != 0) & get("irregular").mask(w, 1 / 6))
    assert torch.equal(mask, w.abs() > 0.5)


def test_options_are_routed_to_the_parts_that_accept_them():
    scheme = get("pattern+quant", patterns=4, entries=3, bits=3)
    pattern, quant = scheme.parts
    assert (pattern.patterns, pattern.entries, quant.bits) == (4, 3, 3)
    both = get("block+unify", block=(2, 2), unified=0.1, rates=[0.5])
    assert both.parts[0].block == (2, 2) and both.parts[1].block == (2, 2)
    assert both.parts[1].unified == pytest.approx(0.1)


def test_pattern_composite_checks_every_part():
    with pytest.raises(TargetError, match=r"\(10, 20\)"):
        get("pattern+quant", bits=4).project(torch.randn(10, 20))
    w = torch.randn(4, 4, 3, 3)
    p = get("pattern+quant", bits=4).project(w)
    assert measured_sparsity(p) >= 1 - 4 / 9


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("irregular+quant", {"bitz": 4}, "bitz"),
        ("irregular+nope", {}, "nope"),
        ("irregular+", {}, "empty part"),
        ("filter+irregular", {"rates": [0.2, 0.3]}, "takes 1 rate"),
        ("filter+irregular", {"rates": [1.5]}, "rate of 'filter'"),
        ("filter+irregular", {}, "needs a rate"),
        ("filter+irregular", {"rates": 0.3}, "list"),
    ],
)
def test_bad_composites_are_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        get(name, **options)


def test_a_composite_that_does_not_prune_takes_no_sparsity():
    scheme = get("quant+quant", bits=4)
    assert scheme.natural_sparsity == 0.0
    with pytest.raises(ConfigError, match="does not prune"):
        scheme.project(sample(0, 4, 4), 0.5)
