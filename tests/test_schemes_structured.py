"""Filter, channel, column, block and N:M schemes against an independent reference.

The reference below lists every scheme's groups with plain loops over indices; the tests
check the vectorised schemes against it: the constraint holds exactly, no other choice of
the same number of groups keeps more energy (brute force), projection is idempotent, the
achieved sparsity is within half a group of the request, ``mask`` and ``project`` agree,
``group_norms`` are the groups' norms with a usable gradient, and RNN gates are pruned one
at a time.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prunekit import schemes
from prunekit.errors import ConfigError, TargetError
from prunekit.schemes.base import count_to_prune

FAST = settings(max_examples=40, deadline=None)

# ------------------------------------------------------------------ reference grouping


def reference_groups(name: str, shape: tuple[int, ...], options: dict) -> list[list[int]]:
    """Flat indices (into the weight, row-major) of each group, in ``group_norms`` order."""
    rows, cols = shape[0], math.prod(shape[1:])
    kk = math.prod(shape[2:]) if len(shape) > 2 else 1
    at = lambda r, c: r * cols + c  # noqa: E731
    if name == "filter":
        return [[at(r, c) for c in range(cols)] for r in range(rows)]
    if name == "column":
        return [[at(r, c) for r in range(rows)] for c in range(cols)]
    if name == "channel":
        return [
            [at(r, i * kk + k) for r in range(rows) for k in range(kk)] for i in range(cols // kk)
        ]
    if name == "block":
        default = (8, 4) if len(shape) > 2 else (16, 16)
        br, bc = options.get("block", default)
        bc *= kk
        if options.get("axis", "col") == "col":
            return [
                [at(r, c) for r in range(r0, min(rows, r0 + br))]
                for r0 in range(0, rows, br)
                for c in range(cols)
            ]
        return [
            [at(r, c) for c in range(c0, min(cols, c0 + bc))]
            for r in range(rows)
            for c0 in range(0, cols, bc)
        ]
    if name == "nm":
        m = options.get("m", 4)
        return [
            [at(r, c) for c in range(c0, min(cols, c0 + m))]
            for r in range(rows)
            for c0 in range(0, cols, m)
        ]
    raise AssertionError(name)


def make_weight(shape: tuple[int, ...], seed: int, ties: bool) -> torch.Tensor:
    """Random weights; ``ties`` draws from a few integers so equal norms are common."""
    gen = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(-2, 3, shape, generator=gen).float()
    return torch.randn(shape, generator=gen)


# ----------------------------------------------------------------------- strategies

linear_shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))
conv_shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.integers(1, 3))
any_shape = st.one_of(linear_shapes, conv_shapes)


@st.composite
def cases(draw, names=("filter", "channel", "column", "block", "nm")):
    """(name, options, sparsity, shape, weight) for one structured scheme."""
    name = draw(st.sampled_from(names))
    shape = draw(any_shape)
    options: dict = {}
    sparsity: float | None = draw(st.floats(0.0, 0.95))
    if name == "block":
        options = {
            "block": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
            "axis": draw(st.sampled_from(["col", "row"])),
        }
    elif name == "nm":
        n, m = draw(st.sampled_from([(2, 4), (1, 2), (1, 4), (4, 8), (3, 4)]))
        options, sparsity = {"n": n, "m": m}, None
    w = make_weight(shape, draw(st.integers(0, 2**16)), draw(st.booleans()))
    return name, options, sparsity, shape, w


def energy(w: torch.Tensor, group: list[int]) -> float:
    flat = w.reshape(-1).double()
    return float((flat[group] ** 2).sum())


# ------------------------------------------------------------ (a) constraint holds


@FAST
@given(cases())
def test_constraint_holds_exactly(case):
    name, options, sparsity, shape, w = case
    scheme = schemes.get(name, **options)
    p = scheme.project(w, sparsity).reshape(-1)
    keep = scheme.mask(w, sparsity).reshape(-1)
    flat = w.reshape(-1)
    assert torch.equal(p, torch.where(keep, flat, 0.0))  # kept entries are untouched
    for group in reference_groups(name, shape, options):
        kept = keep[group]
        if name == "nm":
            # each run keeps exactly min(n, len) entries, so at most n nonzeros
            assert int(kept.sum()) == min(options["n"], len(group))
            assert int((p[group] != 0).sum()) <= options["n"]
        else:
            # whole groups: every group is all kept or all pruned
            assert bool(kept.all()) or not bool(kept.any())


# ------------------------------------------------ (b) no better choice of groups


@settings(max_examples=40, deadline=None)
@given(cases(names=("filter", "channel", "column", "block")))
def test_projection_keeps_the_most_energy(case):
    name, options, sparsity, shape, w = case
    groups = reference_groups(name, shape, options)
    assume(len(groups) <= 14)
    keep = schemes.get(name, **options).mask(w, sparsity).reshape(-1)
    pruned = [i for i, g in enumerate(groups) if not bool(keep[g].any())]
    energies = [energy(w, g) for g in groups]
    ours = sum(energies[i] for i in pruned)
    best = min(
        sum(energies[i] for i in combo)
        for combo in itertools.combinations(range(len(groups)), len(pruned))
    )
    assert ours <= best + 1e-9 * (1.0 + sum(energies))


@FAST
@given(cases(names=("nm",)))
def test_nm_keeps_the_largest_entries_of_every_run(case):
    name, options, sparsity, shape, w = case
    keep = schemes.get(name, **options).mask(w).reshape(-1)
    flat = w.reshape(-1).double()
    for run in reference_groups(name, shape, options):
        count = min(options["n"], len(run))
        ours = sum(float(flat[i] ** 2) for i in run if keep[i])
        best = max(
            sum(float(flat[i] ** 2) for i in combo) for combo in itertools.combinations(run, count)
        )
        assert ours >= best - 1e-9 * (1.0 + best)


# ---------------------------------------------- (c) idempotence, (e) mask agreement


@FAST
@given(cases())
def test_projection_is_idempotent_and_matches_mask(case):
    name, options, sparsity, shape, w = case
    scheme = schemes.get(name, **options)
    once = scheme.project(w, sparsity)
    assert torch.equal(scheme.project(once, sparsity), once)
    assert torch.equal(once, torch.where(scheme.mask(w, sparsity), w, 0.0))
    assert scheme.mask(w, sparsity).dtype == torch.bool


# ---------------------------------------------------------- (d) achieved sparsity


@FAST
@given(cases(names=("filter", "channel", "column", "block")))
def test_achieved_sparsity_within_half_a_group(case):
    name, options, sparsity, shape, w = case
    groups = reference_groups(name, shape, options)
    keep = schemes.get(name, **options).mask(w, sparsity).reshape(-1)
    pruned_weights = int((~keep).sum())
    largest = max(len(g) for g in groups)
    kept_groups = sum(bool(keep[g].all()) for g in groups)
    assert kept_groups >= 1  # a rate below 1 never prunes every group
    if kept_groups > 1 or pruned_weights + largest / 2 >= sparsity * w.numel() - 1e-6:
        assert abs(pruned_weights - sparsity * w.numel()) <= largest / 2 + 1e-6
    if len({len(g) for g in groups}) == 1:  # equal groups: the documented whole-group count
        count = min(count_to_prune(len(groups), sparsity), len(groups) - 1)
        assert pruned_weights == count * largest


def test_ragged_block_rounds_by_weight_count():
    # axis=col, block (2, 1) on 3 rows: segments of 2 rows (block-row 0), 1 row (block-row 1)
    scheme = schemes.get("block", block=(2, 1))
    w = torch.tensor([[1.0, 9.0], [1.0, 9.0], [2.0, 5.0]])
    # segments by energy: [1, 1] (size 2), [2] (1), [5] (1), [9, 9] (2); pruned weight
    # counts of the prefixes: 0, 2, 3, 4, 6
    row2_kept = torch.tensor([[0.0, 9.0], [0.0, 9.0], [2.0, 5.0]])
    row2_pruned_col0 = torch.tensor([[0.0, 9.0], [0.0, 9.0], [0.0, 5.0]])
    assert torch.equal(scheme.project(w, 0.5), row2_pruned_col0)  # target 3: exact
    assert torch.equal(scheme.project(w, 0.4), row2_kept)  # target 2.4: 2 is nearest
    assert torch.equal(scheme.project(w, 0.45), row2_pruned_col0)  # target 2.7: 3 is nearest
    # a tie between two prefixes prunes the larger one
    w = torch.tensor([[1.0, 9.0], [1.0, 9.0], [0.5, 0.6]])
    # prefixes: 0, 1 ([0.5]), 2 ([0.6]), 4, 6; target 0.25 * 6 = 1.5 is as far from 1 as 2
    assert torch.equal(scheme.project(w, 0.25), torch.tensor([[1.0, 9.0], [1.0, 9.0], [0, 0]]))
    assert torch.equal(  # target 0.75: 1 is nearest
        scheme.project(w, 0.125), torch.tensor([[1.0, 9.0], [1.0, 9.0], [0.0, 0.6]])
    )


# ------------------------------------------------------------------ (f) group norms


@FAST
@given(cases())
def test_group_norms_are_differentiable_group_norms(case):
    name, options, sparsity, shape, w = case
    groups = reference_groups(name, shape, options)
    w = w.clone().requires_grad_(True)
    norms = schemes.get(name, **options).group_norms(w)
    flat = w.detach().reshape(-1)
    if name == "nm":  # element-level: one |w| per entry
        assert torch.equal(norms.detach(), flat.abs())
        return
    assert norms.shape == (len(groups),)
    expected = torch.stack([flat[g].norm() for g in groups])
    torch.testing.assert_close(norms.detach(), expected)
    norms.sum().backward()
    grad = w.grad.reshape(-1)
    assert torch.isfinite(grad).all()  # pruned (zero) groups must not give NaN
    for g, n in zip(groups, expected, strict=True):
        want = flat[g] / n if n > 0 else torch.zeros(len(g))
        torch.testing.assert_close(grad[g], want)


# ----------------------------------------------------------------------- (g) gates


@FAST
@given(
    cases(),
    st.integers(1, 3),
    st.integers(1, 6),
)
def test_each_gate_gets_the_rate(case, hidden, inputs):
    name, options, sparsity, _, _ = case
    w = make_weight((4 * hidden, inputs), hidden * 31 + inputs, ties=False)
    scheme = schemes.get(name, **options)
    whole = scheme.mask(w, sparsity, gates=4)
    for gate, part in zip(w.chunk(4), whole.chunk(4), strict=True):
        assert torch.equal(part, scheme.mask(gate, sparsity))
    p = scheme.project(w, sparsity, gates=4)
    assert torch.equal(p, torch.where(whole, w, 0.0))
    norms = scheme.group_norms(w, gates=4)
    assert norms.numel() == 4 * scheme.group_norms(w[:hidden]).numel()


def test_lstm_gates_are_pruned_separately():
    # one gate is 100x larger: pruned together it would keep only that gate's rows
    w = torch.randn(4 * 8, 5, generator=torch.Generator().manual_seed(1))
    w[:8] *= 100
    scheme = schemes.get("filter")
    for part in scheme.project(w, 0.5, gates=4).chunk(4):
        assert int((part.abs().sum(dim=1) == 0).sum()) == 4


# ----------------------------------------------------------------- specific schemes


def test_filter_prunes_smallest_rows():
    w = torch.tensor([[3.0, 0.0], [0.1, 0.1], [1.0, 1.0], [0.0, -2.0]])
    p = schemes.get("filter").project(w, 0.5)
    assert torch.equal(p, torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, -2.0]]))


def test_channel_prunes_all_kernel_positions_of_a_conv_input_channel():
    w = torch.ones(2, 3, 2, 2)
    w[:, 1] *= 0.1
    p = schemes.get("channel").project(w, 1 / 3)
    assert torch.equal(p[:, 1], torch.zeros(2, 2, 2))
    assert torch.equal(p[:, [0, 2]], w[:, [0, 2]])


def test_column_prunes_single_gemm_columns_of_a_conv():
    w = torch.ones(2, 1, 2, 2)
    w[:, 0, 1, 0] = 0.5  # GEMM column 2
    p = schemes.get("column").project(w, 0.25)
    assert int((p == 0).sum()) == 2 and torch.equal(p[:, 0, 1, 0], torch.zeros(2))


def test_block_segments_differ_between_blocks():
    # block (2, 2) axis col on a 4x2 linear weight: each block-row prunes its own column
    w = torch.tensor([[1.0, 5.0], [1.0, 5.0], [5.0, 1.0], [5.0, 1.0]])
    p = schemes.get("block", block=(2, 2)).project(w, 0.5)
    assert torch.equal(p, torch.tensor([[0.0, 5.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]]))
    # axis row: segments are pieces of rows, one per block-column
    p = schemes.get("block", block=(2, 1), axis="row").project(w.t(), 0.5)
    assert torch.equal(p, torch.tensor([[0.0, 0.0, 5.0, 5.0], [5.0, 5.0, 0.0, 0.0]]))


def test_block_conv_cols_count_input_channels():
    scheme = schemes.get("block", block=(8, 4))
    assert scheme.block_shape((64, 3, 7, 7)) == (8, 4 * 49)
    assert scheme.block_shape((1000, 2048)) == (8, 4)
    default = schemes.get("block")
    assert default.block_shape((256, 64, 3, 3)) == (8, 4 * 9)
    assert default.block_shape((1000, 2048)) == (16, 16)
    # axis row on a conv: a segment is one filter's weights over `cols` input channels
    w = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    norms = schemes.get("block", block=(1, 2), axis="row").group_norms(w)
    torch.testing.assert_close(norms, w.reshape(2, 2, 18).norm(dim=2).reshape(-1))


def test_nm_rate_is_fixed():
    w = torch.randn(4, 8)
    scheme = schemes.get("nm", n=2, m=4)
    assert scheme.natural_sparsity == 0.5
    p = scheme.project(w)
    assert torch.equal(p, scheme.project(w, 0.5))
    assert torch.equal(p, scheme.project(w, 0.5 + 1e-12))
    with pytest.raises(ConfigError, match="fixed rate 0.5"):
        scheme.project(w, 0.8)
    with pytest.raises(ConfigError, match="fixed rate 0.5"):
        scheme.mask(w, 0.25)
    assert schemes.get("nm", n=4, m=8).natural_sparsity == 0.5
    assert schemes.get("nm", n=1, m=4).natural_sparsity == 0.75


def test_nm_trailing_run_keeps_min_n_len():
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0, 7.0, 8.0, 9.0]])  # runs of 4 and 3
    assert torch.equal(
        schemes.get("nm", n=2, m=4).project(w),
        torch.tensor([[4.0, 3.0, 0.0, 0.0, 0.0, 8.0, 9.0]]),
    )
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])  # trailing run of 1 < n keeps it
    assert torch.equal(
        schemes.get("nm", n=2, m=4).project(w), torch.tensor([[0.0, 0.0, 3.0, 4.0, 5.0]])
    )


def test_nm_ties_keep_the_earlier_entry():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    assert torch.equal(schemes.get("nm").project(w), torch.tensor([[1.0, -1.0, 0.0, 0.0]]))


# ------------------------------------------------------------ dtypes and odd shapes

ALL = [
    ("filter", {}, 0.5),
    ("channel", {}, 0.5),
    ("column", {}, 0.5),
    ("block", {}, 0.5),
    ("block", {"axis": "row"}, 0.5),
    ("nm", {}, None),
]


@pytest.mark.parametrize(("name", "options", "sparsity"), ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_kept_weights_come_back_exactly_in_any_float_dtype(name, options, sparsity, dtype):
    w = (torch.randn(16, 4, 3, 3, generator=torch.Generator().manual_seed(3)) * 1e-3).to(dtype)
    w[0, 0, 0, 0] = 1 / 3  # not representable in float32 when float64
    scheme = schemes.get(name, **options)
    p = scheme.project(w, sparsity)
    assert p.dtype == dtype
    assert torch.equal(p, torch.where(scheme.mask(w, sparsity), w, 0.0))


@pytest.mark.parametrize(("name", "options", "sparsity"), ALL)
@pytest.mark.parametrize(
    "w",
    [
        torch.zeros(0, 5),
        torch.zeros(4, 0),
        torch.zeros(0, 3, 3, 3),
        torch.zeros(6, 8),  # all ties
        torch.arange(60.0).reshape(6, 10).t(),  # not contiguous
        torch.arange(96.0).reshape(4, 8, 3)[:, ::2],  # strided conv1d-like weight
    ],
    ids=["no-rows", "no-cols", "empty-conv", "zeros", "transposed", "strided"],
)
def test_degenerate_and_strided_weights(name, options, sparsity, w):
    scheme = schemes.get(name, **options)
    p = scheme.project(w, sparsity)
    assert p.shape == w.shape
    assert torch.equal(p, torch.where(scheme.mask(w, sparsity), w, 0.0))
    assert torch.equal(scheme.project(p, sparsity), p)
    assert scheme.group_norms(w).dim() == 1


# ------------------------------------------------------------------ bad options


@pytest.mark.parametrize(
    ("name", "options", "word"),
    [
        ("block", {"block": (0, 4)}, "block"),
        ("block", {"block": (8, -1)}, "block"),
        ("block", {"block": (8,)}, "block"),
        ("block", {"block": "8x4"}, "block"),
        ("block", {"block": (8, 2.5)}, "block"),
        ("block", {"axis": "diagonal"}, "axis"),
        ("nm", {"n": 5, "m": 4}, "n must not exceed m"),
        ("nm", {"n": 0}, "n must be"),
        ("nm", {"m": "4"}, "m must be"),
        ("nm", {"n": True}, "n must be"),
        ("filter", {"dim": 1}, "unknown options"),
        ("block", {"rows": 8}, "unknown options"),
    ],
)
def test_bad_options_name_the_option(name, options, word):
    with pytest.raises(ConfigError, match=word):
        schemes.get(name, **options)


@pytest.mark.parametrize("name", ["filter", "channel", "column", "block", "nm"])
def test_one_dimensional_weights_are_rejected(name):
    with pytest.raises(TargetError, match=name):
        schemes.get(name).project(torch.randn(8), None if name == "nm" else 0.5)


def test_block_accepts_lists_from_yaml():
    assert schemes.get("block", block=[8, 4]).block == (8, 4)
