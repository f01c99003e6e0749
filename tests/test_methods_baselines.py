"""Magnitude (one-shot, gradual) and group-lasso baselines (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress_helpers import masks_of
from method_state import restore, snapshot
from prunekit import schemes
from prunekit.errors import ConfigError
from prunekit.files import load_checkpoint
from prunekit.methods import (
    GradualMagnitude,
    GroupLasso,
    OneShotMagnitude,
    PostTrainingRounding,
    RandomSupport,
    StraightThrough,
    available,
    cubic_sparsity,
    get,
)
from prunekit.pipeline import run_recipe
from prunekit.recipe import load_recipe
from prunekit.targets import Target, freeze


def make_target(model: nn.Module, name: str, sparsity: float, scheme: str = "irregular") -> Target:
    param = dict(model.named_parameters())[name]
    module_name = name.rpartition(".")[0]
    return Target(name, module_name, param, schemes.get(scheme), sparsity, "Linear")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


def kept(model: nn.Module) -> dict[str, torch.Tensor]:
    return {"0.weight": model[0].weight.detach() != 0, "2.weight": model[2].weight.detach() != 0}


def train_step(model, pruner, opt, x, y) -> None:
    (nn.functional.mse_loss(model(x), y) + pruner.penalty()).backward()
    opt.step()
    opt.zero_grad()
    pruner.after_step()


DATA = (torch.randn(32, 10, generator=torch.Generator().manual_seed(1)),
        torch.randn(32, 5, generator=torch.Generator().manual_seed(2)))


# -------------------------------------------------------------------------- one-shot
def test_one_shot_prunes_at_start_to_the_exact_rate_and_keeps_it():
    model = mlp()
    targets = [make_target(model, "0.weight", 0.73), make_target(model, "2.weight", 0.4)]
    pruner = OneShotMagnitude(model, targets)
    assert not pruner.hardened
    expected = {t.name: t.mask().clone() for t in targets}
    masks = pruner.start()
    for t in targets:
        assert torch.equal(masks[t.name], expected[t.name])
        assert int((t.param != 0).sum()) == t.param.numel() - round(t.sparsity * t.param.numel())
    assert pruner.start() is masks  # once only
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    pruner.bind(opt)
    for _ in range(5):
        assert float(pruner.penalty()) == 0.0
        train_step(model, pruner, opt, *DATA)
    for t in targets:
        assert torch.equal(t.param.detach() != 0, masks[t.name])
    pruner.close()  # hand enforcement over: pruned weights are free to move again
    train_step(model, pruner, opt, *DATA)
    assert (model[0].weight[~masks["0.weight"]] != 0).any()


def test_one_shot_prunes_on_its_first_hook_call_inside_an_existing_mask():
    model = mlp()
    previous = masks_of(freeze(model, [make_target(model, "0.weight", 0.5)]))
    target = make_target(model, "0.weight", 0.8)
    pruner = OneShotMagnitude(model, [target])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, pruner, opt, *DATA)
    assert pruner.hardened
    assert int((model[0].weight != 0).sum()) == 40
    assert not ((model[0].weight != 0) & ~previous["0.weight"]).any()


# --------------------------------------------------------------------------- random
RANDOM_RECIPE = """\
name: random
model: {{name: lenet5}}
data: {{name: synthetic, batch_size: 32, options: {{n: 64, n_test: 32}}}}
train: {{epochs: 1, optimizer: sgd, lr: 0.05}}
prune: {{method: {method}, train: {{epochs: 0}}, targets: [{{layers: fc1, sparsity: 0.8}}]}}
retrain: {{epochs: 1, optimizer: adam, lr: 0.001}}
"""


def wide(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


@pytest.mark.parametrize("scheme", ["irregular", "block", "filter"])
def test_random_support_meets_each_rate_in_the_schemes_groups(scheme):
    model = wide()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = [make_target(model, "0.weight", 0.75, scheme),
               make_target(model, "2.weight", 0.5, scheme)]
    magnitude = {t.name: t.mask().clone() for t in targets}
    before = torch.get_rng_state()
    masks = RandomSupport(model, targets, seed=1).start()
    assert torch.equal(torch.get_rng_state(), before)  # its own generator
    for t in targets:
        w = t.param.detach()
        assert torch.equal(w != 0, masks[t.name])
        assert torch.equal(w[masks[t.name]], dense[t.name][masks[t.name]])  # values untouched
        assert int(masks[t.name].sum()) == int(magnitude[t.name].sum())  # the same rate
        assert torch.equal(t.project(w), w)  # inside the scheme's constraint set
        assert not torch.equal(masks[t.name], magnitude[t.name])


def test_random_support_is_reproducible_per_seed_and_unrelated_to_magnitude():
    def draw(seed):
        model = wide()
        return RandomSupport(model, [make_target(model, "0.weight", 0.5)],
                             seed=seed).start()["0.weight"]
    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    magnitude = make_target(wide(), "0.weight", 0.5).mask()
    # 1,536 of 3,072 kept at random: about half of them are among magnitude's largest half
    # (binomial sd 0.013), where magnitude's own support would share all of them
    shared = float((first & magnitude).sum() / first.sum())
    assert 0.45 < shared < 0.55


def test_random_support_draws_inside_an_existing_mask():
    model = wide()
    previous = masks_of(freeze(model, [make_target(model, "0.weight", 0.5)]))["0.weight"]
    target = make_target(model, "0.weight", 0.9)
    kept = RandomSupport(model, [target], seed=3).start()["0.weight"]
    assert int(kept.sum()) == target.numel - round(0.9 * target.numel)
    assert not (kept & ~previous).any()


def test_a_recipe_draws_the_random_support_its_seed_names(tmp_path):
    """With no pruning epochs the pipeline freezes the method without a training step: the
    support must still be the random one of the recipe's seed, not magnitude's."""
    def pruned_fc1(method, **options):
        recipe = load_recipe(text=RANDOM_RECIPE.format(method=method),
                             overrides=[f"prune.{k}={v}" for k, v in options.items()])
        out = tmp_path / f"{method}{options}"
        run_recipe(recipe, out, progress=False, echo=lambda s: None)
        return load_checkpoint(out / "pruned.pt")["state_dict"]["fc1.weight"] != 0
    magnitude = pruned_fc1("magnitude")
    first, other = pruned_fc1("random", seed=0), pruned_fc1("random", seed=1)
    for kept in (first, other):
        assert int(kept.sum()) == int(magnitude.sum())
        # a fifth of fc1 kept at random: about a fifth of it is in magnitude's support
        assert float((kept & magnitude).sum() / kept.sum()) < 0.3
    assert not torch.equal(first, other)


def test_random_support_refuses_value_setting_schemes_and_coupled_groups():
    model = wide()
    for scheme in ("quant", "irregular+quant", "unify"):
        with pytest.raises(ConfigError, match="random: .*sets values"):
            RandomSupport(model, [make_target(model, "0.weight", 0.5, scheme)])
    with pytest.raises(ConfigError, match="seed"):
        RandomSupport(model, [make_target(model, "0.weight", 0.5)], seed=-1)


# --------------------------------------------------------------------------- gradual
def test_cubic_schedule_values():
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with s_i = 0.1, s_f = 0.9, t0 = 2, n dt = 4
    values = [cubic_sparsity(t, 0.1, 0.9, 2, 6) for t in range(8)]
    assert values == pytest.approx(
        [0.1, 0.1, 0.1, 0.9 - 0.8 * 0.421875, 0.9 - 0.8 * 0.125, 0.9 - 0.8 * 0.015625, 0.9, 0.9]
    )
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_gradual_reaches_the_rate_at_end_epoch_and_never_revives_a_weight():
    model = mlp()
    targets = [make_target(model, "0.weight", 0.9), make_target(model, "2.weight", 0.6, "filter")]
    pruner = GradualMagnitude(model, targets, start_epoch=1, end_epoch=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.bind(opt)
    previous = kept(model)
    fractions = []
    for epoch in range(7):
        for _ in range(3):
            train_step(model, pruner, opt, *DATA)
            now = kept(model)
            for name in now:  # monotone: the kept set only shrinks
                assert not (now[name] & ~previous[name]).any()
            previous = now
        pruner.end_epoch()
        previous = kept(model)
        fractions.append(1 - float(previous["0.weight"].float().mean()))
        if epoch + 1 == 5:
            assert int(previous["0.weight"].sum()) == 20
            assert int((model[2].weight.detach().norm(dim=1) == 0).sum()) == 3
    schedule = [pruner.sparsity_at(e)["0.weight"] for e in range(1, 8)]
    assert fractions == pytest.approx([round(s * 200) / 200 for s in schedule])
    assert [h["time"] for h in pruner.history] == [1, 2, 3, 4, 5]
    masks = masks_of(pruner.freeze())
    assert int(masks["0.weight"].sum()) == 20
    assert torch.equal(masks["0.weight"], previous["0.weight"])


def test_gradual_in_steps_prunes_every_frequency_steps_and_lands_on_end_epoch():
    model = mlp()
    target = make_target(model, "0.weight", 0.8)
    pruner = GradualMagnitude(model, [target], start_epoch=0, end_epoch=2, initial_sparsity=0.2,
                              steps_per_epoch=4, frequency=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    assert int((model[0].weight == 0).sum()) == 0
    for _ in range(10):
        train_step(model, pruner, opt, *DATA)
    times = [h["time"] for h in pruner.history]
    assert times == [0, 0.75, 1.5, 2.0]
    assert pruner.history[0]["rates"]["0.weight"] == pytest.approx(0.2)
    assert int((model[0].weight == 0).sum()) == 160


def test_gradual_resume_is_exact():
    def setup():
        model = mlp()
        pruner = GradualMagnitude(model, [make_target(model, "0.weight", 0.8)], end_epoch=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pruner.bind(opt)
        return model, pruner, opt

    def train(model, pruner, opt, epochs):
        for _ in range(epochs):
            train_step(model, pruner, opt, *DATA)
            train_step(model, pruner, opt, *DATA)
            pruner.end_epoch()

    model, pruner, opt = setup()
    train(model, pruner, opt, 2)
    saved = snapshot(model, opt, pruner)
    train(model, pruner, opt, 3)
    model2, pruner2, opt2 = restore(saved, setup)
    train(model2, pruner2, opt2, 3)
    assert pruner2.history == pruner.history
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gradual_options_are_checked():
    model = mlp()
    targets = [make_target(model, "0.weight", 0.5)]
    with pytest.raises(ConfigError, match="end_epoch"):
        get("gradual", model, targets)
    with pytest.raises(ConfigError, match="initial_sparsity"):
        GradualMagnitude(model, targets, end_epoch=3, initial_sparsity=0.7)
    with pytest.raises(ConfigError, match="end_epoch"):
        GradualMagnitude(model, targets, start_epoch=4, end_epoch=2)
    nm = Target("0.weight", "0", model[0].weight, schemes.get("nm"), None, "Linear")
    with pytest.raises(ConfigError, match="explicit sparsity"):
        GradualMagnitude(model, [nm], end_epoch=3)


# ----------------------------------------------------------------------- group lasso
def test_group_lasso_penalty_is_the_sum_of_unsquared_group_norms():
    model = mlp()
    with torch.no_grad():
        model[2].weight[1] = 0.0  # a zero filter: the gradient there must stay finite
    targets = [make_target(model, "0.weight", 0.5), make_target(model, "2.weight", 0.4, "filter")]
    pruner = GroupLasso(model, targets, lam={"0": 0.01, "2": 0.2})
    value = pruner.penalty()
    w0, w2 = model[0].weight.detach(), model[2].weight.detach()
    expected = 0.01 * float(w0.abs().sum()) + 0.2 * float(w2.norm(dim=1).sum())
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    value.backward()
    grad = model[2].weight.grad
    assert torch.isfinite(grad).all()
    norms = w2.norm(dim=1, keepdim=True)
    torch.testing.assert_close(grad[norms[:, 0] > 0], (0.2 * w2 / norms)[norms[:, 0] > 0])
    torch.testing.assert_close(model[0].weight.grad, 0.01 * w0.sign())
    masks_of(pruner.freeze())
    assert int((model[2].weight.detach().norm(dim=1) == 0).sum()) == 2
    assert int((model[0].weight == 0).sum()) == 100


# ---------------------------------------------------------------------------- get
def test_get_knows_every_method_and_rejects_the_rest():
    assert available() == sorted(
        ["admm", "progressive_admm", "reweighted", "magnitude", "gradual", "group_lasso",
         "ptq", "random", "ste"]
    )
    model = mlp()
    targets = [make_target(model, "0.weight", 0.5)]
    assert isinstance(get("magnitude", model, targets), OneShotMagnitude)
    assert isinstance(get("gradual", model, targets, end_epoch=3), GradualMagnitude)
    assert isinstance(get("group_lasso", model, targets, lam=0.1), GroupLasso)
    assert isinstance(get("ptq", model, targets), PostTrainingRounding)
    assert isinstance(get("ste", model, targets), StraightThrough)
    assert isinstance(get("random", model, targets, seed=2), RandomSupport)
    with pytest.raises(ConfigError, match="'lam'.*'magnitude'.*no options"):
        get("magnitude", model, targets, lam=0.1)
    with pytest.raises(ConfigError, match="unknown pruning method 'gmp'"):
        get("gmp", model, targets)
    with pytest.raises(ConfigError, match="not a parameter"):
        get("magnitude", mlp(1), targets)
