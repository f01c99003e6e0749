"""Micro-structured unification: exact block assignment, the projection, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError
from prunekit.schemes import get, measured_sparsity
from prunekit.schemes import unify_assign as unify
from prunekit.schemes.unify import Unify
from prunekit.schemes.unify_assign import KEEP, PRUNE, UNIFY, assign_blocks

FAST = settings(max_examples=50, deadline=None)


def matrix(seed: int, rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def blocks_of(m: torch.Tensor, block: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Block slices, row-major over the block grid (edge blocks are smaller)."""
    r, c = block
    return [
        (slice(i, i + r), slice(j, j + c))
        for i in range(0, m.shape[0], r)
        for j in range(0, m.shape[1], c)
    ]


def nearest_class_counts(classes: list[int], sizes: list[int], rate: float) -> list[int]:
    """Reference: of all per-class counts within one block of ``rate * n`` in every class,
    the one whose weight total is nearest ``rate * numel`` (a tie: the larger total)."""
    target = rate * sum(n * z for n, z in zip(classes, sizes, strict=True))
    options = [
        [a for a in range(n + 1) if abs(a - rate * n) < 1] for n in classes
    ]
    best = None
    for combo in itertools.product(*options):
        total = sum(a * z for a, z in zip(combo, sizes, strict=True))
        key = (round(abs(total - target), 9), -total)
        if best is None or key < best[0]:
            best = (key, list(combo))
    return best[1]


def class_plan(w: torch.Tensor, block: tuple[int, int], sparsity: float, unified: float):
    """``(class of every block, pruned per class, unified per class)``: blocks of one size
    form a class, each class takes the rates on its own (see the module docstring)."""
    sizes = [w[s].numel() for s in blocks_of(w, block)]
    values = sorted(set(sizes), reverse=True)
    classes = [sizes.count(z) for z in values]
    n_prune = nearest_class_counts(classes, values, sparsity)
    if sum(n_prune) == len(sizes):  # a rate below 1 keeps a block of the largest class
        n_prune[classes.index(max(classes))] -= 1
    n_unify = [min(u, n - p) for u, n, p in zip(
        nearest_class_counts(classes, values, unified), classes, n_prune, strict=True)]
    return [values.index(z) for z in sizes], n_prune, n_unify


def per_class(states, owner: list[int], state: int, n_classes: int) -> list[int]:
    out = [0] * n_classes
    for s, k in zip(states, owner, strict=True):
        out[k] += s == state
    return out


def brute_force_assignment(p: list[float], u: list[float], n_prune: int, n_unify: int) -> float:
    best = math.inf
    for states in itertools.product((KEEP, UNIFY, PRUNE), repeat=len(p)):
        if states.count(PRUNE) == n_prune and states.count(UNIFY) == n_unify:
            cost = sum(
                p[i] if s == PRUNE else u[i] if s == UNIFY else 0.0 for i, s in enumerate(states)
            )
            best = min(best, cost)
    return best


# ----------------------------------------------------------- exact assignment
costs = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 4)).map(lambda t: (max(t), min(t))),
    min_size=1,
    max_size=7,
)


@settings(max_examples=150, deadline=None)
@given(costs=costs, data=st.data())
def test_assignment_matches_brute_force_with_ties(costs, data):
    p = torch.tensor([c[0] for c in costs], dtype=torch.float64)
    u = torch.tensor([c[1] for c in costs], dtype=torch.float64)
    n = len(costs)
    n_prune = data.draw(st.integers(0, n))
    n_unify = data.draw(st.integers(0, n - n_prune))
    state = assign_blocks(p, u, n_prune, n_unify)
    assert int((state == PRUNE).sum()) == n_prune and int((state == UNIFY).sum()) == n_unify
    cost = float((p * (state == PRUNE) + u * (state == UNIFY)).sum())
    assert cost == brute_force_assignment(p.tolist(), u.tolist(), n_prune, n_unify)


@FAST
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), data=st.data())
def test_assignment_matches_brute_force_on_random_costs(seed, n, data):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=g, dtype=torch.float64) * 3
    u = p * torch.rand(n, generator=g, dtype=torch.float64)
    n_prune = data.draw(st.integers(0, n))
    n_unify = data.draw(st.integers(0, n - n_prune))
    state = assign_blocks(p, u, n_prune, n_unify)
    cost = float((p * (state == PRUNE) + u * (state == UNIFY)).sum())
    best = brute_force_assignment(p.tolist(), u.tolist(), n_prune, n_unify)
    assert cost == pytest.approx(best, rel=1e-12, abs=1e-12)


# prices fix blocks even in tiny problems, so that brute force can check the reduction
TINY = {"_BASE": 1, "_SAMPLE": 4, "_COARSE": 2}


def total_cost(p: torch.Tensor, u: torch.Tensor, state: torch.Tensor) -> float:
    return float((p * (state == PRUNE) + u * (state == UNIFY)).sum())


@settings(max_examples=150, deadline=None)
@given(costs=costs, data=st.data())
def test_reduction_by_prices_is_optimal_or_declines_with_ties(costs, data):
    p = torch.tensor([c[0] for c in costs], dtype=torch.float64)
    u = torch.tensor([c[1] for c in costs], dtype=torch.float64)
    n = len(costs)
    n_prune = data.draw(st.integers(1, n))
    n_unify = data.draw(st.integers(0, n - n_prune))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TINY.items():
            patch.setattr(unify, name, value)
        state = unify._reduced_assign(p.numpy(), u.numpy(), n_prune, n_unify, unify._WIDTH)
        full = assign_blocks(p, u, n_prune, n_unify)
    best = brute_force_assignment(p.tolist(), u.tolist(), n_prune, n_unify)
    assert total_cost(p, u, full) == best
    if state is not None:  # it may decline (then the full sweep runs), never be wrong
        state = torch.from_numpy(state)
        assert int((state == PRUNE).sum()) == n_prune
        assert int((state == UNIFY).sum()) == n_unify
        assert total_cost(p, u, state) == best


@settings(max_examples=200, deadline=None)
@given(
    costs=costs,
    box=st.tuples(*[st.floats(-1.0, 6.0)] * 4).map(
        lambda b: (min(b[:2]), max(b[:2]), min(b[2:]), max(b[2:]))
    ),
    data=st.data(),
)
def test_fixing_by_any_box_of_prices_is_optimal_or_declined(costs, box, data):
    """Prices from samples can be wrong; the certificate must catch every wrong box."""
    p = torch.tensor([c[0] for c in costs], dtype=torch.float64)
    u = torch.tensor([c[1] for c in costs], dtype=torch.float64)
    n = len(costs)
    n_prune = data.draw(st.integers(1, n))
    n_unify = data.draw(st.integers(1, n - n_prune)) if n > n_prune else 0
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TINY.items():
            patch.setattr(unify, name, value)
        patch.setattr(unify, "_box", lambda *args: box)
        state = unify._reduced_assign(p.numpy(), u.numpy(), n_prune, n_unify, unify._WIDTH)
    if state is not None:
        state = torch.from_numpy(state)
        assert int((state == PRUNE).sum()) == n_prune
        assert int((state == UNIFY).sum()) == n_unify
        assert total_cost(p, u, state) == brute_force_assignment(
            p.tolist(), u.tolist(), n_prune, n_unify
        )


def optimal_prices(p, u, state) -> tuple[float, float]:
    """Prices under which every block's state is one of its cheapest (LP duality says an
    optimal assignment has them): pruned blocks need ``p <= alpha_P`` and
    ``d <= alpha_P - alpha_U``, unified ones ``u <= alpha_U`` and ``d >= alpha_P - alpha_U``,
    kept ones ``p >= alpha_P`` and ``u >= alpha_U``."""
    d = p - u
    pruned, unified, kept = state == PRUNE, state == UNIFY, state == KEEP
    p_range = (p[pruned].max(), p[kept].min())
    u_range = (u[unified].max(), u[kept].min())
    low = max(d[pruned].max(), p_range[0] - u_range[1])
    high = min(d[unified].min(), p_range[1] - u_range[0])
    assert low <= high
    diff = (low + high) / 2
    alpha_p = (max(p_range[0], u_range[0] + diff) + min(p_range[1], u_range[1] + diff)) / 2
    return float(alpha_p), float(alpha_p - diff)


@pytest.mark.parametrize("seed", range(5))
def test_certificate_accepts_optimal_prices_and_rejects_everything_else(seed):
    p, u = (c.numpy() for c in block_costs(seed, 60, "normal"))
    d = p - u
    state = unify._cut_assign(p, u, 20, 15)
    alpha_p, alpha_u = optimal_prices(p, u, state)
    around = (alpha_p - 1e-3, alpha_p + 1e-3, alpha_u - 1e-3, alpha_u + 1e-3)
    assert unify._certified(p, u, d, state, 20, 15, around)
    # the same solution, but the box misses its prices: nothing is proven
    shifted = (around[0] + 0.5, around[1] + 0.5, around[2], around[3])
    assert not unify._certified(p, u, d, state, 20, 15, shifted)
    # a worse solution (a kept block pruned instead of a pruned one) has no such prices
    worse = state.copy()
    worse[np.flatnonzero(state == PRUNE)[0]] = KEEP
    worse[np.flatnonzero(state == KEEP)[0]] = PRUNE
    assert not unify._certified(p, u, d, worse, 20, 15, around)
    # a box that meets those prices only on its edge: no margin, so nothing is proven
    edge = float(p[state == PRUNE].max())  # no price of pruning below this works
    touching = (edge - 1.0, edge, alpha_u - 1e-3, alpha_u + 1e-3)
    assert not unify._certified(p, u, d, state, 20, 15, touching)
    assert unify._certified(p, u, d, state, 20, 15, (edge - 1.0, alpha_p + 1e-3, *around[2:]))


def block_costs(seed: int, n: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pruning and unification errors of ``n`` random (1, 4) blocks of a few kinds."""
    w = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if kind == "zeros":
        w[::3] = 0.0
    elif kind == "ties":
        w = torch.round(2 * w) / 2
    elif kind == "uniform":
        w[::2, 1:] = w[::2, :1]  # every other block has one magnitude: u = 0
    elif kind == "wide":
        w = w * torch.exp(3 * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed)))
    p = (w * w).sum(dim=1)
    return p, p - w.abs().sum(dim=1) ** 2 / 4


@pytest.mark.parametrize("kind", ["normal", "zeros", "ties", "uniform", "wide"])
@pytest.mark.parametrize("rates", [(0.5, 0.3), (0.05, 0.9), (0.9, 0.05), (0.5, 0.5)])
def test_large_assignments_match_the_plain_cut_sweep(kind, rates):
    n = 4 * unify._BASE + 123
    p, u = block_costs(7, n, kind)
    n_prune = round(rates[0] * n)
    n_unify = min(round(rates[1] * n), n - n_prune)
    state = assign_blocks(p, u, n_prune, n_unify)
    reference = torch.from_numpy(unify._cut_assign(p.numpy(), u.numpy(), n_prune, n_unify))
    assert int((state == PRUNE).sum()) == n_prune and int((state == UNIFY).sum()) == n_unify
    assert total_cost(p, u, state) == pytest.approx(total_cost(p, u, reference), rel=1e-12)


def test_prices_fix_most_blocks_of_a_large_problem():
    p, u = block_costs(3, 100_000, "normal")
    state = unify._reduced_assign(p.numpy(), u.numpy(), 50_000, 30_000, unify._WIDTH)
    assert state is not None  # certified, so the slow sweep over every block was not needed
    reference = unify._cut_assign(p.numpy(), u.numpy(), 50_000, 30_000)
    assert total_cost(p, u, torch.from_numpy(state)) == pytest.approx(
        total_cost(p, u, torch.from_numpy(reference)), rel=1e-12
    )


# ----------------------------------------------------------------- projection
shapes_and_blocks = st.sampled_from(
    [((2, 8), (1, 4)), ((3, 6), (1, 3)), ((4, 4), (2, 2)), ((5, 7), (2, 3)), ((3, 5), (2, 4)),
     ((2, 9), (1, 4)), ((3, 9), (1, 4))]  # the last two: a depthwise 3x3 GEMM row [.., 9]
)


def block_error(values: torch.Tensor, state: int) -> float:
    v = values.double().reshape(-1)
    if state == KEEP:
        return 0.0
    if state == PRUNE:
        return float((v * v).sum())
    return float(((v.abs() - v.abs().mean()) ** 2).sum())


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape_block=shapes_and_blocks,
    sparsity=st.floats(0.0, 0.7),
    unified=st.floats(0.0, 0.6),
)
def test_projection_error_matches_brute_force(seed, shape_block, sparsity, unified):
    shape, block = shape_block
    unified = min(unified, 1.0 - sparsity)
    w = matrix(seed, *shape)
    p = Unify(block=block, unified=unified).project(w, sparsity)
    slices = blocks_of(w, block)
    owner, n_prune, n_unify = class_plan(w, block, sparsity, unified)
    best = math.inf
    for states in itertools.product((KEEP, UNIFY, PRUNE), repeat=len(slices)):
        if (per_class(states, owner, PRUNE, len(n_prune)) == n_prune
                and per_class(states, owner, UNIFY, len(n_unify)) == n_unify):
            err = sum(block_error(w[s], k) for s, k in zip(slices, states, strict=True))
            best = min(best, err)
    err = float(((w.double() - p.double()) ** 2).sum())
    assert err == pytest.approx(best, rel=1e-5, abs=1e-6)


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape_block=shapes_and_blocks,
    sparsity=st.floats(0.0, 0.9),
    unified=st.floats(0.0, 0.9),
)
def test_every_block_is_kept_pruned_or_unified_with_its_signs(seed, shape_block, sparsity,
                                                             unified):
    shape, block = shape_block
    unified = min(unified, 1.0 - sparsity)
    w = matrix(seed, *shape)
    scheme = Unify(block=block, unified=unified)
    p = scheme.project(w, sparsity)
    slices = blocks_of(w, block)
    _, pruned, unifying = class_plan(w, block, sparsity, unified)
    n_prune, n_unify = sum(pruned), sum(unifying)
    zero = equal_magnitude = changed = 0
    for s in slices:
        original, out = w[s], p[s]
        if (out == 0).all():
            zero += 1
        elif torch.equal(out, original) and not torch.allclose(out.abs(), out.abs().max()):
            continue
        else:  # unified: one shared magnitude, the original signs
            assert torch.allclose(out.abs(), out.abs().max().expand_as(out), rtol=0, atol=0)
            assert torch.allclose(out.abs().max(), original.abs().mean(), rtol=1e-6)
            assert (torch.sign(out) == torch.sign(original)).all()
            equal_magnitude += 1
            changed += not torch.equal(out, original)
    assert zero == n_prune
    assert changed <= n_unify <= equal_magnitude
    assert torch.equal(scheme.mask(w, sparsity), p != 0)


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape_block=shapes_and_blocks,
    sparsity=st.floats(0.0, 0.9),
    unified=st.floats(0.0, 0.9),
)
def test_projection_is_idempotent(seed, shape_block, sparsity, unified):
    shape, block = shape_block
    scheme = Unify(block=block, unified=min(unified, 1.0 - sparsity))
    p = scheme.project(matrix(seed, *shape), sparsity)
    assert torch.equal(scheme.project(p, sparsity), p)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.77, 0.95])
def test_achieved_sparsity_is_within_half_a_block(sparsity):
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(1))  # GEMM [8, 27]
    scheme = get("unify", block=(2, 9), unified=0.04)
    p = scheme.project(w, sparsity)
    assert p.shape == w.shape
    assert abs(measured_sparsity(p) - sparsity) <= 0.5 * 18 / w.numel() + 1e-9


@FAST
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 40),
    cols=st.integers(1, 23),
    block=st.tuples(st.integers(1, 3), st.integers(1, 5)),
    sparsity=st.floats(0.0, 0.95),
    unified=st.floats(0.0, 0.9),
)
def test_rates_are_met_in_weights_on_ragged_layers(seed, rows, cols, block, sparsity, unified):
    unified = min(unified, 1.0 - sparsity)
    w = matrix(seed, rows, cols)
    scheme = Unify(block=block, unified=unified)
    state = scheme.states(w, sparsity)
    sizes = torch.tensor([w[s].numel() for s in blocks_of(w, block)])
    pruned = int(sizes[state == PRUNE].sum())
    full = block[0] * block[1]
    assert int((state != PRUNE).sum()) >= 1  # never the whole layer
    if int((state != PRUNE).sum()) > 1:
        assert abs(pruned - sparsity * w.numel()) <= full / 2 + 1e-9
    unified_weights = int(sizes[state == UNIFY].sum())
    if unified + sparsity < 0.9:  # away from the cap that keeps blocks from being both
        assert abs(unified_weights - unified * w.numel()) <= full / 2 + 1e-9
    assert measured_sparsity(scheme.project(w, sparsity)) * w.numel() >= pruned


def test_depthwise_gemm_meets_the_rate_and_does_not_prune_edge_blocks_first():
    """The issue's case: a depthwise [32, 1, 3, 3] weight is the GEMM [32, 9]; 1x4 blocks
    are 4, 4 and a 1-weight edge block per row. Counting blocks pruned 111 of 288."""
    w = torch.randn(32, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    p = get("unify").project(w, 0.5)
    assert int((p == 0).sum()) == 144
    edge = p.reshape(32, 9)[:, 8]
    assert int((edge == 0).sum()) == 16  # the edge class is pruned at the rate, no more


def test_a_rate_below_one_never_prunes_every_block():
    w = matrix(4, 1, 4)  # one block
    assert torch.equal(get("unify").project(w, 0.9), w)
    w = matrix(4, 2, 5)  # a full block and an edge block per row
    p = get("unify").project(w, 0.95)
    assert bool((p != 0).any())


def test_unified_zero_prunes_the_lowest_energy_blocks():
    w = matrix(5, 4, 8)
    w[1, 4:] *= 1e-3
    w[3, :4] *= 1e-3
    p = get("unify").project(w, 0.25)  # 8 blocks of (1, 4): prune 2
    assert (p[1, 4:] == 0).all() and (p[3, :4] == 0).all()
    assert int((p == 0).sum()) == 8


def test_zero_entries_of_a_unified_block_take_the_shared_magnitude():
    w = torch.tensor([[0.0, -1.0, 2.0, 0.0, 5.0, -9.0, 1.0, 20.0]])
    p = Unify(block=(1, 4), unified=0.5).project(w, 0.0)  # unify 1 of 2: the cheaper
    assert torch.allclose(p[0, :4], torch.tensor([0.75, -0.75, 0.75, 0.75]))
    assert torch.equal(p[0, 4:], w[0, 4:])


def test_signed_zeros_in_unified_blocks_take_plus_and_pruned_blocks_are_plus_zero():
    w = torch.tensor([[-0.0, -1.0, 2.0, 0.0, 5.0, -9.0, 1.0, 20.0, -1e-3, -2e-3, 1e-3, -1e-3]])
    p = Unify(block=(1, 4), unified=1 / 3).project(w, 1 / 3)  # prune 1, unify 1 of 3
    assert torch.equal(p[0, :4], torch.tensor([0.75, -0.75, 0.75, 0.75]))
    assert torch.equal(p[0, 4:8], w[0, 4:8])
    assert (p[0, 8:] == 0).all() and not torch.signbit(p[0, 8:]).any()


def test_states_report_the_assignment_the_projection_uses():
    w = matrix(9, 4, 12)  # twelve (1, 4) blocks, row-major over a 4 x 3 grid
    scheme = Unify(unified=0.25)
    state = scheme.states(w, 0.5)
    assert state.shape == (12,)
    assert int((state == PRUNE).sum()) == 6 and int((state == UNIFY).sum()) == 3
    blocks = scheme.project(w, 0.5).reshape(4, 3, 4)
    assert torch.equal((blocks == 0).all(dim=2).reshape(-1), state == PRUNE)
    same_magnitude = (blocks.abs() == blocks.abs()[..., :1]).all(dim=2).reshape(-1)
    assert torch.equal(same_magnitude & (state != PRUNE), state == UNIFY)


# ------------------------------------------------------------- norms, storage
def test_group_norms_are_block_norms_including_ragged_edges():
    w = matrix(2, 5, 7)
    w.requires_grad_(True)
    norms = Unify(block=(2, 3)).group_norms(w)
    expected = torch.stack([w.detach()[s].norm() for s in blocks_of(w, (2, 3))])
    assert torch.allclose(norms, expected)
    norms.sum().backward()
    assert torch.isfinite(w.grad).all()


# -------------------------------------------------------------------- errors
def test_sparsity_plus_unified_above_one_is_a_config_error():
    with pytest.raises(ConfigError, match="exceeds 1"):
        get("unify", unified=0.6).project(matrix(0, 4, 8), 0.5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"block": (0, 4)}, "block"),
        ({"block": 4}, "block"),
        ({"block": (1, 2, 3)}, "block"),
        ({"unified": 1.0}, "unified"),
        ({"unified": -0.1}, "unified"),
        ({"unified": "half"}, "unified"),
        ({"blocks": (1, 4)}, "unknown options"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        get("unify", **options)
