"""Properties every registered scheme must have, whatever its maths.

Parametrised over ``prunekit.schemes.available()``: a new scheme is tested as soon as it is
registered. ``SETTINGS`` says how to configure each one (options and the sparsity to ask
for); a scheme missing there gets no options and sparsity 0.8. ``SHAPES`` lists the weight
shapes a scheme applies to (default: a 3x3 conv and a linear weight).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import schemes
from prunekit.errors import ConfigError
from prunekit.schemes.base import (
    groups_to_prune,
    keep_largest,
    keep_largest_sized,
    kth_smallest,
    sorted_rows,
)

#: name -> (options, sparsity); ``None`` = the scheme's natural rate
SETTINGS: dict[str, tuple[dict, float | None]] = {
    "irregular": ({}, 0.8),
    "filter": ({}, 0.8),
    "channel": ({}, 0.8),
    "column": ({}, 0.8),
    "block": ({}, 0.8),
    "nm": ({"n": 2, "m": 4}, None),
    "pattern": ({}, 0.8),
    "unify": ({"block": (1, 4), "unified": 0.3}, 0.5),
    "quant": ({"bits": 4}, None),
}
DEFAULT_SETTING: tuple[dict, float | None] = ({}, 0.8)

CONV = (16, 8, 3, 3)
LINEAR = (24, 40)
#: name -> weight shapes it applies to
SHAPES: dict[str, list[tuple[int, ...]]] = {"pattern": [CONV]}
DEFAULT_SHAPES = [CONV, LINEAR]

CASES = [
    pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
    for name in schemes.available()
    for shape in SHAPES.get(name, DEFAULT_SHAPES)
]
NAMES = schemes.available()


def build(name: str) -> tuple[schemes.Scheme, float | None]:
    """The scheme with the options of ``SETTINGS`` (or the default setting)."""
    options, sparsity = SETTINGS.get(name, DEFAULT_SETTING)
    return schemes.get(name, **options), sparsity


def weight(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_registered_name_matches(name):
    scheme, _ = build(name)
    assert scheme.name == name
    assert isinstance(scheme, schemes.Scheme)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_projection_keeps_shape_and_dtype(name, shape):
    scheme, sparsity = build(name)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        w = weight(shape, dtype)
        p = scheme.project(w, sparsity)
        assert p.shape == w.shape and p.dtype == dtype
        m = scheme.mask(w, sparsity)
        assert m.shape == w.shape and m.dtype == torch.bool


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_input_untouched_and_result_owns_its_memory(name, shape):
    scheme, sparsity = build(name)
    w = weight(shape).requires_grad_(True)
    before = w.detach().clone()
    p = scheme.project(w, sparsity)
    scheme.mask(w, sparsity)
    assert torch.equal(w.detach(), before)
    assert not p.requires_grad
    assert p.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    p.zero_()  # writing into the result must not reach the input
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_projection_is_idempotent_and_inside_mask(name, shape):
    scheme, sparsity = build(name)
    w = weight(shape)
    p = scheme.project(w, sparsity)
    torch.testing.assert_close(scheme.project(p, sparsity), p)
    assert not bool(p[~scheme.mask(w, sparsity)].any())  # nothing outside the mask survives


@pytest.mark.parametrize(("name", "shape"), CASES)
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "x", float("nan"), True])
def test_bad_sparsity_is_a_config_error(name, shape, bad):
    scheme, _ = build(name)
    w = weight(shape)
    with pytest.raises(ConfigError, match="sparsity|rate"):
        scheme.project(w, bad)
    with pytest.raises(ConfigError, match="sparsity|rate"):
        scheme.mask(w, bad)


# ------------------------------------------------------------------ shared helpers


def _stable_reference(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores.reshape(-1), stable=True)[:n_prune]] = False
    return keep.reshape(scores.shape)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    st.floats(0.0, 1.0),
)
def test_keep_largest_matches_a_stable_sort(values, fraction):
    scores = torch.tensor(values, dtype=torch.float32)
    n_prune = round(fraction * len(values))
    assert torch.equal(keep_largest(scores, n_prune), _stable_reference(scores, n_prune))


def test_keep_largest_breaks_big_ties_by_position():
    scores = torch.zeros(300_000)
    scores[::3] = 1.0
    keep = keep_largest(scores, 150_000)
    assert torch.equal(keep, _stable_reference(scores, 150_000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int64])
@pytest.mark.parametrize("overwrite", [False, True])
def test_kth_smallest_is_kthvalue_for_every_dtype(dtype, overwrite):
    torch.manual_seed(0)
    values = (torch.randn(1001) * 50).to(dtype)
    values[::7] = values[3]  # ties
    original = values.clone()
    for k in (1, 2, 500, 1000, 1001):
        work = values.clone()
        got = kth_smallest(work, k, overwrite=overwrite)
        assert got.dtype == dtype and got.shape == ()
        assert torch.equal(got, values.kthvalue(k).values)
        if not overwrite:
            assert torch.equal(work, original)


def test_kth_smallest_and_sorted_rows_work_on_tensors_that_need_grad_or_strides():
    leaf = torch.randn(6, 40, requires_grad=True)
    expected = leaf.detach().reshape(-1).kthvalue(17).values
    assert torch.equal(kth_smallest(leaf.reshape(-1), 17), expected)
    strided = torch.randn(40, 6).t()  # not contiguous
    assert torch.equal(sorted_rows(strided), torch.sort(strided, dim=-1).values)
    assert torch.equal(sorted_rows(leaf).detach(), torch.sort(leaf.detach(), dim=-1).values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4)), min_size=1, max_size=12),
    st.floats(0.0, 0.99),
)
def test_keep_largest_sized_prunes_the_nearest_prefix(groups, sparsity):
    scores = torch.tensor([float(s) for s, _ in groups])
    sizes = torch.tensor([n for _, n in groups])
    keep = keep_largest_sized(scores, sizes, sparsity)
    # reference: walk the groups in stable ascending order, take the nearest prefix
    order = sorted(range(len(groups)), key=lambda i: (groups[i][0], i))
    target = sparsity * int(sizes.sum())
    prefix, best = 0, abs(target)
    running = 0
    for count, i in enumerate(order[:-1], 1):  # a rate below 1 leaves one group
        running += groups[i][1]
        if abs(running - target) <= best:
            prefix, best = count, abs(running - target)
    expected = torch.ones(len(groups), dtype=torch.bool)
    expected[order[:prefix]] = False
    assert torch.equal(keep, expected)
    if len(set(sizes.tolist())) == 1:
        assert int((~keep).sum()) == groups_to_prune(len(groups), sparsity)
