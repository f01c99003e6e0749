"""Layer-wise one-shot solvers on small layers: against brute force over supports, against
direct least squares, exact rates, and the frozen-constraint round trip."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import prunekit
import prunekit.oneshot as oneshot
from prunekit.errors import ConfigError, TargetError
from prunekit.oneshot import LayerProblem, compress
from prunekit.oneshot.admm import admm
from prunekit.oneshot.baselines import magnitude, prune_count, wanda
from prunekit.oneshot.constraint import LayerConstraint
from prunekit.oneshot.refit import refit_cg, refit_direct, refit_scale
from prunekit.oneshot.solvers import check_method
from prunekit.oneshot.sparsegpt import sparsegpt


def _problem(rows: int, cols: int, seed: int, tokens: int = 64) -> LayerProblem:
    """Inputs like a transformer's activations: features of very different scales
    (log-normal) with some correlation between them."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g) / cols**0.5
    x = (torch.randn(tokens, cols, generator=g) @ mix) * torch.exp(torch.randn(cols, generator=g))
    return LayerProblem(torch.randn(rows, cols, generator=g), x.T.double() @ x.double())


def _constraint(rows: int, cols: int, rule: dict) -> LayerConstraint:
    layer = nn.Linear(cols, rows, bias=False)
    (target,) = prunekit.resolve(nn.Sequential(layer), [rule])
    return LayerConstraint(target)


def _brute_force(problem: LayerProblem, k_prune: int) -> float:
    """The least error over every support pruning exactly ``k_prune`` entries, each refitted
    exactly: the true optimum of the layer's problem."""
    rows, cols = problem.w0.shape
    h = problem.damped(0.0)
    best = float("inf")
    for pruned in itertools.combinations(range(rows * cols), k_prune):
        mask = torch.ones(rows * cols, dtype=torch.bool)
        mask[list(pruned)] = False
        w = refit_direct(h, problem.w0, mask.reshape(rows, cols))
        best = min(best, problem.relative_error(w))
    return best


def test_admm_reaches_the_brute_force_optimum_on_tiny_layers():
    """The support problem is NP-hard, so ADMM is a heuristic: it finds the optimum over
    every support (each refitted exactly) on most tiny layers, is never below it (the
    error it reports is honest) and does better than SparseGPT and magnitude overall."""
    hits, total = 0, {"admm": 0.0, "sparsegpt": 0.0, "magnitude": 0.0}
    for seed in range(10):
        problem = _problem(2, 5, seed)
        constraint = _constraint(2, 5, {"scheme": "irregular", "sparsity": 0.5})
        optimum = _brute_force(problem, prune_count(10, 0.5))
        for name, solver, options in (("admm", admm, {"damp": 0.0, "refit_iterations": 50}),
                                      ("sparsegpt", sparsegpt, {"damp": 1e-6}),
                                      ("magnitude", magnitude, {})):
            w, _ = solver(problem, constraint, **options)
            err = problem.relative_error(w)
            assert err >= optimum - 1e-6, name
            total[name] += err / optimum
            if name == "admm":
                hits += err <= optimum * 1.001 + 1e-9
    assert hits >= 6
    assert total["admm"] < min(total["sparsegpt"], total["magnitude"])


def test_solvers_rank_as_expected_on_correlated_layers():
    """Mean over layers: admm <= sparsegpt <= wanda-or-magnitude."""
    errs = {name: 0.0 for name in ("magnitude", "wanda", "sparsegpt", "admm")}
    for seed in range(4):
        problem = _problem(16, 32, seed, tokens=256)
        constraint = _constraint(16, 32, {"scheme": "irregular", "sparsity": 0.7})
        for name, solver in (("magnitude", magnitude), ("wanda", wanda),
                             ("sparsegpt", sparsegpt), ("admm", admm)):
            errs[name] += problem.relative_error(solver(problem, constraint)[0])
    assert errs["admm"] < errs["sparsegpt"] < min(errs["wanda"], errs["magnitude"])


def test_cg_refit_matches_the_direct_least_squares_solution():
    problem = _problem(6, 12, 3)
    h = problem.damped(0.01)
    mask = torch.rand(6, 12, generator=torch.Generator().manual_seed(1)) > 0.5
    direct = refit_direct(h, problem.w0, mask)
    cg = refit_cg(h, problem.w0, mask, iterations=200, rtol=1e-12)
    assert torch.allclose(cg, direct, atol=1e-4, rtol=1e-4)
    assert bool((cg[~mask] == 0).all())


def test_scale_refit_is_the_least_squares_multiplier():
    problem = _problem(4, 8, 5)
    z = torch.round(problem.w0 * 2) / 2
    out = refit_scale(problem.h, problem.w0, z, groups=1)
    c = float((out.double() / z.double())[z != 0].mean())
    assert torch.allclose(out.double(), c * z.double(), atol=1e-5)
    # the objective is a parabola in c: moving c either way is worse
    for delta in (-1e-3, 1e-3):
        assert problem.error(out) <= problem.error((c + delta) * z) + 1e-9


@pytest.mark.parametrize("rule", [
    {"scheme": "irregular", "sparsity": 0.7},
    {"scheme": "nm", "n": 2, "m": 4},
])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "admm"])
def test_rates_are_exact(rule, method):
    solver = {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt, "admm": admm}
    problem = _problem(12, 40, 7, tokens=128)
    constraint = _constraint(12, 40, rule)
    w, _ = solver[method](problem, constraint)
    if rule["scheme"] == "irregular":
        assert int((w == 0).sum()) == prune_count(w.numel(), 0.7)
    else:
        assert bool(((w.reshape(12, 10, 4) != 0).sum(-1) <= 2).all())
        assert int((w == 0).sum()) == w.numel() // 2


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.c = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x))) + self.c(x)


class _Blocks(nn.Module):
    """A stack of residual blocks in an nn.ModuleList, as a transformer has."""

    def __init__(self, dim: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(dim) for _ in range(depth))

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


_SCHEMES = [
    {"scheme": "irregular", "sparsity": 0.6},
    {"scheme": "nm", "n": 2, "m": 4},
    {"scheme": "block", "block": [4, 4], "sparsity": 0.5},
    {"scheme": "column", "sparsity": 0.5},
    {"scheme": "unify", "block": [1, 4], "sparsity": 0.5},
    {"scheme": "quant", "bits": 4},
    {"scheme": "irregular+quant", "bits": 4, "sparsity": 0.5},
    {"scheme": "block+irregular", "block": [4, 4], "rates": [0.25], "sparsity": 0.6},
]


@pytest.mark.parametrize("rule", _SCHEMES, ids=lambda r: r["scheme"])
def test_admm_every_scheme_frozen_round_trip(rule):
    torch.manual_seed(0)
    model = _Blocks()
    batches = [torch.randn(32, 16) for _ in range(3)]
    rules = [{"layers": "layers.*", "types": ["Linear"], **rule}]
    result = compress(model, batches, rules, method="admm", progress=False)
    solved = {n: p.detach().clone() for n, p in model.named_parameters()}
    refrozen = prunekit.freeze(model, prunekit.resolve(model, rules))
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), solved[name]), name  # freeze leaves them unchanged
    assert set(refrozen) == set(result.constraints)
    for record in result.layers:
        assert record.error <= record.magnitude_error + 1e-6, record.name


def test_bad_method_option_or_scheme_refused_before_any_forward():
    model = _Blocks()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    batches = [torch.randn(4, 16)]
    with pytest.raises(ConfigError, match="unknown one-shot method 'obs'"):
        compress(model, batches, {"sparsity": 0.5}, method="obs")
    with pytest.raises(ConfigError, match="unknown option"):
        compress(model, batches, {"sparsity": 0.5}, method="admm", rho=3)
    with pytest.raises(TargetError, match="'wanda' is defined for the schemes"):
        compress(model, batches, {"scheme": "block", "block": [4, 4], "sparsity": 0.5},
                 method="wanda")
    with pytest.raises(ConfigError, match="positive integer"):
        check_method("sparsegpt", {"block": 0})
    assert calls == []


def test_check_refuses_an_uncapturable_layer_without_a_forward_pass():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TargetError, match="grouped convolution"):
        oneshot.check(model, {"sparsity": 0.5}, "admm")
    targets, options = oneshot.check(nn.Sequential(nn.Linear(4, 4)), {"sparsity": 0.5},
                                     "sparsegpt", block=64)
    assert [t.name for t in targets] == ["0.weight"] and options["block"] == 64


def test_admm_toward_a_dense_target_refits_to_its_least_squares():
    """With inputs ``X`` that differ from the dense model's ``X_d``, admm minimises
    ``||X_d W0^T - X W^T||``: on the support it keeps, every row equals that least-squares
    solution (``lstsq`` on the kept columns), and it reaches the dense output more closely
    than the solution aimed at ``X W0^T``."""
    g = torch.Generator().manual_seed(0)
    x_dense = torch.randn(200, 10, generator=g, dtype=torch.float64)
    x = x_dense + 0.3 * torch.randn(200, 10, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, 10, generator=g)
    constraint = _constraint(4, 10, {"scheme": "irregular", "sparsity": 0.5})
    aimed = LayerProblem(w0, x.T @ x, x_dense.T @ x)
    options = {"damp": 0.0, "refit_iterations": 100}
    w, _ = admm(aimed, constraint, **options)
    target = x_dense @ w0.double().T
    for i in range(4):
        keep = torch.nonzero(w[i]).flatten()
        direct = torch.linalg.lstsq(x[:, keep], target[:, i:i + 1]).solution.flatten()
        assert torch.allclose(w[i, keep].double(), direct, atol=1e-4), i
    plain, _ = admm(LayerProblem(w0, x.T @ x), constraint, **options)

    def miss(v):
        return float(((target - x @ v.double().T) ** 2).sum())

    assert miss(w) < miss(plain)
