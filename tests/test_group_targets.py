"""Coupled-group filter pruning as a target kind (``scheme: group_filter``).

A group target spans every parameter its channels touch (producers' rows and biases,
BatchNorm scale and shift, readers' columns). Checked here: the projection against brute
force, ADMM / gradual magnitude / reweighted ending at exactly the rate with every removed
slice exactly zero after masked retraining, a recipe run to a model file that loads with
the same outputs and shrinks to a smaller model with equal outputs, and the errors.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import group_models
import prunekit
from group_models import build
from prunekit import artifacts, methods, structure
from prunekit.constraints import MaskEnforcer
from prunekit.errors import PrunekitError, TargetError
from prunekit.methods import ADMM, GradualMagnitude
from prunekit.pipeline import run_recipe
from prunekit.recipe import load_recipe
from prunekit.schemes.base import groups_to_prune
from prunekit.targets import GroupTarget, freeze, resolve

GROUP_RULE = {"layers": "*", "scheme": "group_filter", "sparsity": 0.5}


def data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0
    return x, y


EXAMPLE = torch.zeros(1, 1, 8, 8)


def groups_of(targets) -> list[GroupTarget]:
    found = [t for t in targets if isinstance(t, GroupTarget)]
    assert found
    return found


def removed_units(model: nn.Module, target: GroupTarget) -> set[int]:
    """Units whose every slice is exactly zero, measured on the model's parameters through
    the structure's own slices (not the target's maths)."""
    s = structure.build(model, EXAMPLE)
    group = s.group_of(target.layers[0])
    zero = {u: True for u in group.removable}
    for _, _, p, dim, units in structure.groups.param_slices(s, model):
        alive = p.detach().transpose(0, dim).reshape(p.shape[dim], -1).ne(0).any(1)
        for u, a in zip(units.tolist(), alive.tolist(), strict=True):
            if u in zero and a:
                zero[u] = False
    return {u for u, z in zero.items() if z}


def assert_exact_rate_and_zero_slices(model: nn.Module, targets, constraints) -> None:
    for t in groups_of(targets):
        gone = removed_units(model, t)
        assert len(gone) == groups_to_prune(t.units, 0.5) == t.to_remove, t.name
        # every slice of them is masked in the frozen constraints, biases and BN included
        s = structure.build(model, EXAMPLE)
        want = structure.constraints_for(s, model, gone)
        for name, support in want.items():
            assert name in constraints, name
            assert not bool((constraints[name].mask & ~support.mask).any()), name
    params = dict(model.named_parameters())
    for name, c in constraints.items():
        assert not bool((params[name].detach()[~c.mask] != 0).any()), name
    assert any(n.startswith("bn") for n in constraints)  # BatchNorm entries constrained
    assert "stem.bias" in constraints and "a.bias" in constraints


def train(model, x, y, plugin, epochs: int, lr: float = 0.05, wd: float = 1e-3):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    if hasattr(plugin, "bind"):
        plugin.bind(opt)
    for _ in range(epochs):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            penalty = getattr(plugin, "penalty", None)
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            opt.step()
            plugin.after_step()
        if hasattr(plugin, "end_epoch"):
            plugin.end_epoch()
    return opt


def harden_then_retrain(model, targets, pruner, x, y) -> None:
    """Harden: exactly the rate, every removed slice zero; then retrain inside the
    constraints: still so."""
    constraints = pruner.freeze()
    pruner.close()
    assert_exact_rate_and_zero_slices(model, targets, constraints)
    retrain_inside(model, constraints, x, y)
    assert_exact_rate_and_zero_slices(model, targets, constraints)


def retrain_inside(model, constraints, x, y, steps: int = 6) -> None:
    """Adam with weight decay: its moments would move a pruned entry if anything leaked."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    with MaskEnforcer(model, constraints, opt) as enforcer:
        for i in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x[i * 16:(i + 1) * 16]), y[i * 16:(i + 1) * 16]).backward()
            opt.step()
            enforcer.after_step()
        enforcer.finish()


# ------------------------------------------------------------------ resolution
def test_rule_makes_one_target_per_coupled_group_and_says_what_stays():
    model = build()
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    by_layers = {t.layers: t for t in groups_of(targets)}
    # the residual add joins stem and b; the depthwise conv passes the same channels on
    trunk = by_layers[("stem", "b", "dw")]
    assert trunk.units == 6 and trunk.to_remove == 3
    assert {"stem.weight", "stem.bias", "bn0.weight", "bn0.bias", "b.weight", "bnb.weight",
            "bnb.bias", "dw.weight", "dw.bias", "bnd.weight", "bnd.bias", "a.weight",
            "side.weight", "fc.weight"} == set(trunk.names)
    assert by_layers[("a",)].names == ["a.weight", "a.bias", "bna.weight", "bna.bias",
                                       "b.weight"]
    assert ("side",) in by_layers
    # the classifier's outputs can never go: said with the layer and the reason
    notes = "\n".join(targets.summary.notes)
    assert "fc: 4 of 4 channels kept: the channel reaches the model's output" in notes
    assert "fc" in targets.summary.describe()


# ------------------------------------------------------------------ projection
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_is_the_nearest_point_of_the_set_by_brute_force(seed):
    model = build()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 + torch.rand(p.shape, generator=g)))
    s = structure.build(model, EXAMPLE)
    params = dict(model.named_parameters())
    for t in groups_of(resolve(model, [GROUP_RULE], example=EXAMPLE)):
        group = s.group_of(t.layers[0])
        values = [p.detach().clone() for _, p in t.members]
        projected = t.project_members()
        error = sum(float((v - q).double().pow(2).sum())
                    for v, q in zip(values, projected, strict=True))
        # every way of removing the same number of units, zeroed by the structure's masks
        errors = []
        for gone in itertools.combinations(group.removable, t.to_remove):
            masks = structure.constraints_for(s, model, set(gone))
            errors.append(sum(float(params[n].detach().double()[~m.mask].pow(2).sum())
                              for n, m in masks.items()))
        assert len(errors) == math.comb(t.units, t.to_remove)
        assert error == pytest.approx(min(errors), rel=1e-9, abs=1e-12)
        assert sorted(errors)[1] > min(errors) or len(errors) == 1
        # the projection is in the set: exactly to_remove units entirely zero, the rest kept
        with torch.no_grad():
            for (_, p), q in zip(t.members, projected, strict=True):
                p.copy_(q)
        assert len(removed_units(model, t)) == t.to_remove
        with torch.no_grad():
            for (_, p), v in zip(t.members, values, strict=True):
                p.copy_(v)


def test_group_norms_have_a_zero_gradient_at_a_removed_unit():
    model = build()
    t = groups_of(resolve(model, [GROUP_RULE], example=EXAMPLE))[0]
    freeze(model, [t])
    norms = t.group_norms()
    assert int((norms == 0).sum()) == t.to_remove
    norms.sum().backward()
    for _, p in t.members:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())


# ------------------------------------------------------------------ methods
def test_admm_drives_whole_units_to_zero_and_hardens_to_the_exact_rate():
    model = build()
    x, y = data()
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    groups = groups_of(targets)

    def removed_share() -> list[float]:
        """Per group: the share of its energy in the units a projection would remove."""
        return [float(t.energy()[t.removed()].sum() / t.energy().sum()) for t in groups]

    before = removed_share()
    pruner = ADMM(model, targets, rho=1.0, rho_schedule="geometric", rho_growth=1.5)
    train(model, x, y, pruner, epochs=4)
    assert len([r for r in pruner.history if r.get("event") == "update"]) == 4
    # ADMM pulled the units it will remove toward zero, in every group, slices together
    for share, was in zip(removed_share(), before, strict=True):
        assert share < 0.7 * was
    state = pruner.state_dict()
    assert any("/" in key for key in state["Z"])  # one Z per member of each group
    harden_then_retrain(model, targets, pruner, x, y)


def test_admm_state_round_trips_for_group_targets():
    model = build()
    x, y = data(64)
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    pruner = ADMM(model, targets, rho=0.01)
    train(model, x, y, pruner, epochs=1)
    again = ADMM(model, resolve(model, [GROUP_RULE], example=EXAMPLE), rho=0.01)
    again.load_state_dict(pruner.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(pruner.Z + pruner.U, again.Z + again.U,
                                                 strict=True))
    state = pruner.state_dict()
    key = next(k for k in state["Z"] if "/" in k)
    state["Z"][key] = state["Z"][key][:1]
    with pytest.raises(PrunekitError, match="wrong shape"):
        again.load_state_dict(state)


def test_gradual_magnitude_never_revives_a_unit_and_ends_at_the_exact_rate():
    model = build()
    x, y = data()
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    pruner = GradualMagnitude(model, targets, start_epoch=0, end_epoch=3)
    earlier: dict[str, set[int]] = {}
    for _ in range(4):
        train(model, x, y, pruner, epochs=1)
        for t in groups_of(targets):
            now = removed_units(model, t)
            assert earlier.get(t.name, set()) <= now, t.name
            earlier[t.name] = now
    assert pruner.prunings == 4
    harden_then_retrain(model, targets, pruner, x, y)


@pytest.mark.parametrize("name, options", [
    ("reweighted", {"lam": 1e-3}), ("group_lasso", {"lam": 1e-3}), ("magnitude", {}),
    ("progressive_admm", {"rounds": 2, "epochs_per_round": 1, "rho": 0.1}),
])
def test_every_other_method_hardens_group_targets_exactly(name, options):
    model = build()
    x, y = data(64)
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    pruner = methods.get(name, model, targets, **options)
    assert pruner.penalty().requires_grad == (name != "magnitude")
    train(model, x, y, pruner, epochs=2)
    constraints = pruner.constraints if pruner.hardened else pruner.freeze()
    pruner.close()
    assert_exact_rate_and_zero_slices(model, targets, constraints)


# ------------------------------------------------------------------ a recipe run
RECIPE = """\
name: group-filter
seed: 0
model:
  name: {module}:build
  input_shape: [1, 8, 8]
data:
  name: synthetic
  batch_size: 32
  options: {{n: 128, n_test: 64, input_shape: [1, 8, 8], num_classes: 4}}
train: {{epochs: 1, optimizer: sgd, lr: 0.05, momentum: 0.9}}
prune:
  method: {method}
{options}  train: {{epochs: 2, optimizer: adam, lr: 0.003, schedule: constant}}
  targets:
    - layers: ["*"]
      scheme: group_filter
      sparsity: 0.5
retrain: {{epochs: 1, optimizer: adam, lr: 0.001, weight_decay: 0.01}}
"""


def recipe_text(method: str = "admm", options: str = "  rho: 0.01\n") -> str:
    return RECIPE.format(module="group_models", method=method, options=options)


@pytest.mark.parametrize("method, options, more", [
    ("admm", "  rho: 0.01\n", ""),
    ("gradual", "  end_epoch: 1\n", ""),
    ("admm", "  rho: 0.01\n", "quantize: {method: ptq, bits: 6}\n"),  # quantized inside
])
def test_recipe_runs_to_a_model_file_that_loads_and_shrinks_with_equal_outputs(
        tmp_path, method, options, more):
    lines: list[str] = []
    recipe = load_recipe(text=recipe_text(method, options) + more)
    report = run_recipe(recipe, tmp_path / "run", progress=False, echo=lines.append)
    assert any("fc: 4 of 4 channels kept: the channel reaches the model's output" in line
               for line in lines)
    assert report["extra"]["prune_notes"]
    assert "## Channels kept" in (tmp_path / "run" / "report.md").read_text()
    loaded = artifacts.load(tmp_path / "run" / "model.pkz", model=build())
    stage = build()
    last, path = ("quantize", "quantized.pt") if more else ("retrain", "retrained.pt")
    artifacts.load_stage(tmp_path / "run" / path, last, stage)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    model = loaded.model.eval()
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, stage.eval()(x), atol=1e-6, rtol=0)
    # the file's constraints hold every removed slice at zero, biases and BatchNorm too
    params = dict(model.named_parameters())
    for name, c in loaded.constraints.items():
        assert not bool((params[name].detach()[~c.mask] != 0).any()), name
    assert {"bn0.bias", "stem.bias", "bna.weight"} <= set(loaded.constraints)
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    assert_exact_rate_and_zero_slices(model, targets, loaded.constraints)

    s = structure.build(model, EXAMPLE)
    dead = structure.dead_units(s, model)
    assert len(dead) >= sum(t.to_remove for t in groups_of(targets))
    small = prunekit.runtime.shrink(s, dead)
    compiled = prunekit.compile(model, x, engines=(), freeze=False)
    with torch.no_grad():
        for fast in (small, compiled):
            assert sum(p.numel() for p in fast.parameters()) < sum(
                p.numel() for p in model.parameters())
            assert torch.allclose(fast(x), out, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ errors
class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > -1e9:
            x = self.conv(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("rule, match", [
    ({"sparsity": 1.0}, r"sparsity .*must be a number in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity .*must be a number in \[0, 1\)"),
    ({"sparsity": {"stem": 0.5}}, "needs one 'sparsity'"),
    ({"sparsity": None}, "needs one 'sparsity'"),
    ({"block": [2, 2]}, "takes no options"),
    ({"allocation": "global"}, "allocation: uniform"),
    ({"layers": "fc"}, "finds no removable channel .*reaches the model's output"),
])
def test_bad_rules_are_one_target_error(rule, match):
    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(TargetError, match=match):
        resolve(model, [{**GROUP_RULE, **rule}], example=EXAMPLE)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_overlapping_rules_and_missing_example_and_untraceable_model_are_errors():
    model = build()
    with pytest.raises(TargetError, match=r"rule 1 .*rule 0 .*overlap on layer 'fc'.*input "
                                          r"channels"):
        resolve(model, [GROUP_RULE, {"layers": "fc", "sparsity": 0.5}], example=EXAMPLE)
    with pytest.raises(TargetError, match=r"rule 0 .*rule 1 .*overlap on layer 'a'.*filters"):
        resolve(model, [{"layers": "a", "scheme": "filter", "sparsity": 0.5}, GROUP_RULE],
                example=EXAMPLE)
    # leaving the classifier out of the plain rule is fine
    resolve(model, [GROUP_RULE, {"layers": "fc", "exclude": True}], example=EXAMPLE)
    with pytest.raises(TargetError, match="needs an example input"):
        resolve(model, [GROUP_RULE])
    with pytest.raises(TargetError, match="torch.fx can trace.*branches on its input"):
        resolve(Branchy(), [GROUP_RULE], example=EXAMPLE)


def test_recipe_errors_come_before_any_training(tmp_path, monkeypatch):
    with pytest.raises(TargetError, match=r"prune\.targets\.0\.sparsity"):
        load_recipe(text=recipe_text().replace("sparsity: 0.5", "sparsity: 1.5"))
    monkeypatch.setattr(group_models, "build", lambda: Branchy(), raising=True)
    recipe = load_recipe(text=recipe_text())
    with pytest.raises(TargetError, match="torch.fx can trace"):
        run_recipe(recipe, tmp_path / "run", progress=False, echo=lambda s: None)
    assert not (tmp_path / "run" / "dense.pt").exists()
    assert not (tmp_path / "run" / "ckpt").exists()


def test_random_support_refuses_coupled_groups_before_touching_a_weight():
    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = resolve(model, [GROUP_RULE], example=EXAMPLE)
    with pytest.raises(PrunekitError, match="random: .*coupled channel group"):
        methods.get("random", model, targets)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
