"""Pattern (PatDNN) scheme: library choice, exact projection given the library, errors."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError, TargetError
from prunekit.schemes import get, measured_sparsity
from prunekit.schemes.pattern import Pattern

FAST = settings(max_examples=40, deadline=None)


def conv_weight(seed: int, out: int, inp: int) -> torch.Tensor:
    return torch.randn(out, inp, 3, 3, generator=torch.Generator().manual_seed(seed))


def rate_removing(removed: int, kernels: int, entries: int = 4) -> float:
    """The sparsity at which connectivity pruning removes exactly ``removed`` kernels."""
    return 1.0 - (kernels - removed) * entries / (9 * kernels)


def kernel_error(kernel: torch.Tensor, pattern: torch.Tensor | None) -> float:
    k = kernel.double().reshape(9)
    if pattern is None:
        return float((k * k).sum())
    return float((k * k)[~pattern.reshape(9)].sum())


def brute_force_error(w: torch.Tensor, library: torch.Tensor, removed: int) -> float:
    """Least error over every choice of one library pattern or removal per kernel, with
    exactly ``removed`` kernels removed."""
    kernels = w.reshape(-1, 9)
    options = [None, *library]
    best = math.inf
    for choice in itertools.product(range(len(options)), repeat=kernels.shape[0]):
        if choice.count(0) != removed:
            continue
        err = sum(kernel_error(k, options[c]) for k, c in zip(kernels, choice, strict=True))
        best = min(best, err)
    return best


def reference_library(w: torch.Tensor, k: int, entries: int = 4) -> set[int]:
    """Top shapes by plain sorting (earlier position wins ties), K most frequent codes."""
    counts: Counter[int] = Counter()
    for kernel in w.reshape(-1, 9).tolist():
        if not any(kernel):
            continue
        order = sorted(range(9), key=lambda i: (-abs(kernel[i]), i))[:entries]
        counts[sum(1 << i for i in order)] += 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    return set(ranked[:k])


def codes(library: torch.Tensor) -> set[int]:
    return {sum(1 << i for i in range(9) if m[i]) for m in library.reshape(-1, 9).tolist()}


# ----------------------------------------------------------------- constraint
@FAST
@given(
    seed=st.integers(0, 10_000),
    out=st.integers(1, 6),
    inp=st.integers(1, 6),
    k=st.integers(1, 8),
    extra=st.floats(0.0, 0.9),
)
def test_every_kernel_is_a_library_pattern_or_zero(seed, out, inp, k, extra):
    w = conv_weight(seed, out, inp)
    scheme = get("pattern", patterns=k)
    sparsity = scheme.natural_sparsity + extra * (1 - scheme.natural_sparsity)
    p = scheme.project(w, sparsity)
    mask = scheme.mask(w, sparsity)
    library = scheme.library_for(w).reshape(-1, 9)
    assert library.shape[0] <= k
    assert torch.equal(p, torch.where(mask, w, 0.0))  # a restriction of w to the mask
    for kernel_mask in mask.reshape(-1, 9):
        assert not kernel_mask.any() or (library == kernel_mask).all(dim=1).any()
    kernels = w.numel() // 9
    assert abs(measured_sparsity(p) - sparsity) <= 4 / (9 * kernels) + 1e-9


def test_library_is_the_most_frequent_top_shapes_with_ties_by_code():
    g = torch.Generator().manual_seed(3)
    # small integers: many ties in magnitude (earlier position wins) and in frequency
    w = torch.randint(-3, 4, (12, 10, 3, 3), generator=g).float()
    for k in (1, 3, 8):
        assert codes(Pattern(patterns=k).library_for(w)) == reference_library(w, k)


def test_library_holds_only_shapes_that_occur():
    w = torch.zeros(2, 3, 3, 3)
    w[..., 0, :] = 1.0  # every kernel: top shape = positions 0, 1, 2 and then 3 (tie)
    library = Pattern(patterns=8).library_for(w)
    assert codes(library) == {0b1111}


# ---------------------------------------------------------------- exactness
@FAST
@given(seed=st.integers(0, 10_000), removed=st.integers(0, 3), lib_seed=st.integers(0, 1000))
def test_projection_matches_brute_force_with_a_fixed_library(seed, removed, lib_seed):
    w = conv_weight(seed, 2, 2)  # 4 kernels
    g = torch.Generator().manual_seed(lib_seed)
    library = [torch.randperm(9, generator=g)[:4] for _ in range(3)]
    masks = torch.zeros(3, 9)
    for i, positions in enumerate(library):
        masks[i, positions] = 1
    if len(codes(masks.bool())) < 3:  # duplicates are rejected; covered elsewhere
        return
    scheme = Pattern(library=masks.reshape(3, 3, 3).tolist())
    p = scheme.project(w, rate_removing(removed, 4))
    assert int((p.reshape(-1, 9) == 0).all(dim=1).sum()) == removed
    err = float(((w.double() - p.double()) ** 2).sum())
    assert err == pytest.approx(brute_force_error(w, masks.bool(), removed), rel=1e-5, abs=1e-6)


@FAST
@given(seed=st.integers(0, 10_000), removed=st.integers(0, 4), k=st.integers(1, 4))
def test_projection_matches_brute_force_given_the_chosen_library(seed, removed, k):
    w = conv_weight(seed, 1, 5)  # 5 kernels
    scheme = Pattern(patterns=k)
    library = scheme.library_for(w).reshape(-1, 9)
    p = scheme.project(w, rate_removing(removed, 5))
    err = float(((w.double() - p.double()) ** 2).sum())
    assert err == pytest.approx(brute_force_error(w, library, removed), rel=1e-5, abs=1e-6)


@FAST
@given(seed=st.integers(0, 10_000), k=st.integers(1, 8), extra=st.floats(0.0, 0.9))
def test_projection_is_idempotent(seed, k, extra):
    w = conv_weight(seed, 4, 5)
    scheme = Pattern(patterns=k)
    sparsity = scheme.natural_sparsity + extra * (1 - scheme.natural_sparsity)
    p = scheme.project(w, sparsity)
    assert torch.equal(scheme.project(p, sparsity), p)


def test_pattern_only_rate_is_the_natural_sparsity():
    w = conv_weight(0, 8, 8)
    for entries in (2, 4, 6):
        scheme = Pattern(entries=entries)
        p = scheme.project(w)  # sparsity unset: patterns only, no kernel removed
        assert measured_sparsity(p) == pytest.approx(1 - entries / 9)
        assert ((p.reshape(-1, 9) != 0).sum(dim=1) == entries).all()


def test_connectivity_pruning_removes_the_weakest_kernels():
    w = conv_weight(1, 3, 4)
    w[0, 1] *= 0.01
    w[2, 3] *= 0.001
    p = Pattern().project(w, rate_removing(2, 12))
    dead = (p.reshape(3, 4, 9) == 0).all(dim=2)
    assert dead[0, 1] and dead[2, 3] and int(dead.sum()) == 2


# ------------------------------------------------------------- norms, storage
def test_group_norms_are_kernel_norms_and_differentiable_at_zero():
    w = conv_weight(2, 3, 2)
    w[1, 0] = 0.0
    w.requires_grad_(True)
    norms = Pattern().group_norms(w)
    assert norms.shape == (6,)
    assert torch.allclose(norms, w.detach().reshape(6, 9).norm(dim=1))
    norms.sum().backward()
    assert torch.isfinite(w.grad).all()


# -------------------------------------------------------------------- errors
def test_linear_weight_is_a_target_error_naming_the_shape():
    with pytest.raises(TargetError, match=r"\(10, 20\)"):
        get("pattern").project(torch.randn(10, 20), 0.6)
    with pytest.raises(TargetError, match=r"\(4, 4, 5, 5\)"):
        get("pattern").mask(torch.randn(4, 4, 5, 5), 0.6)


def test_sparsity_below_the_pattern_minimum_names_the_minimum():
    with pytest.raises(ConfigError, match=r"at least 0\.5556"):
        get("pattern").project(conv_weight(0, 2, 2), 0.5)
    with pytest.raises(ConfigError, match=r"at least 0\.6667"):
        get("pattern", entries=3).mask(conv_weight(0, 2, 2), 0.6)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"patterns": 0}, "patterns"),
        ({"entries": 10}, "entries"),
        ({"entries": True}, "entries"),
        ({"library": [[[1, 1, 0], [0, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 0, 0], [0, 0, 0]]]},
         "pattern 1 has 4 ones"),
        ({"library": [[[1, 1], [0, 1]]]}, "3x3"),
        ({"library": [[[1, 2, 0], [0, 1, 0], [0, 0, 0]]]}, "0 and 1"),
        ({"library": [[[1, 1, 0], [1, 1, 0], [0, 0, 0]]] * 2}, "twice"),
        ({"library": [[[1, 1, 0], [1, 1, 0], [0, 0, 0]]], "patterns": 4}, "holds 1"),
        ({"shape": 3}, "unknown options"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        get("pattern", **options)
