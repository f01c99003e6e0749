"""Reweighted group regularization on tiny real problems (CPU, seconds)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress_helpers import masks_of
from method_state import restore, snapshot
from prunekit import schemes
from prunekit.errors import ConfigError
from prunekit.methods import Reweighted, get
from prunekit.targets import Target


def make_target(model: nn.Module, name: str, sparsity: float, scheme: str = "irregular") -> Target:
    param = dict(model.named_parameters())[name]
    module_name = name.rpartition(".")[0]
    return Target(name, module_name, param, schemes.get(scheme), sparsity, "Linear")


def two_sized_layer(scheme: str) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A linear weight whose groups (single weights or whole rows) are half small (0.05 per
    entry) and half large (1.0 per entry). Returns the layer, its start, and which entries
    belong to small groups."""
    layer = nn.Linear(4, 6, bias=False)
    small = torch.zeros(6, 4, dtype=torch.bool)
    if scheme == "filter":
        small[:3] = True
    else:
        small[:, :2] = True
    sign = torch.tensor([1.0, -1.0]).repeat(12).reshape(6, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.where(small, 0.05, 1.0) * sign)
    return layer, layer.weight.detach().clone(), small


def shrink_ratios(layer, start, small, pruner, epochs: int = 8, steps: int = 25):
    """Train on ||W - W_start||^2 / 2 + penalty; return the mean |W| / |W_start| over the
    small and over the large groups."""
    opt = torch.optim.SGD(layer.parameters(), lr=0.02)
    for _ in range(epochs):
        for _ in range(steps):
            loss = 0.5 * (layer.weight - start).pow(2).sum() + pruner.penalty()
            loss.backward()
            opt.step()
            opt.zero_grad()
            pruner.after_step()
        pruner.end_epoch()
    ratio = (layer.weight.detach() / start).abs()
    return float(ratio[small].mean()), float(ratio[~small].mean())


class PlainL2:
    """The same loop with an unweighted squared-norm penalty."""

    def __init__(self, param, lam):
        self.param, self.lam = param, lam

    def penalty(self):
        return self.lam * self.param.pow(2).sum()

    def after_step(self):
        pass

    def end_epoch(self):
        pass


@pytest.mark.parametrize("scheme", ["irregular", "filter"])
def test_reweighting_shrinks_small_groups_much_more_than_large_ones(scheme):
    layer, start, small = two_sized_layer(scheme)
    pruner = Reweighted(layer, [make_target(layer, "weight", 0.5, scheme)], lam=0.1, eps=1e-2)
    strength = float(pruner.penalty().detach())  # same initial penalty for plain L2
    rw_small, rw_large = shrink_ratios(layer, start, small, pruner)

    layer2, start2, _ = two_sized_layer(scheme)
    l2 = PlainL2(layer2.weight, strength / float(start2.pow(2).sum()))
    l2_small, l2_large = shrink_ratios(layer2, start2, small, l2)

    assert l2_small == pytest.approx(l2_large, rel=1e-4)  # plain L2 shrinks all alike
    assert rw_small < 0.1 * rw_large  # reweighting nearly removes the small groups only
    assert rw_large > 0.7
    assert rw_small < 0.1 * l2_small
    masks = masks_of(pruner.freeze())
    assert torch.equal(masks["weight"], ~small)


def test_alpha_is_recomputed_every_reweight_every_epochs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    targets = [make_target(model, "0.weight", 0.5), make_target(model, "1.weight", 0.5, "filter")]
    pruner = Reweighted(model, targets, lam=1e-2, eps=0.01, reweight_every=2)

    def expected():
        return [1.0 / (t.group_norms().detach() ** 2 + 0.01) for t in targets]

    for alpha, want in zip(pruner.alphas, expected(), strict=True):
        torch.testing.assert_close(alpha, want)
    assert pruner.alphas[1].shape == (3,)  # one alpha per filter
    before = [a.clone() for a in pruner.alphas]
    with torch.no_grad():
        model[0].weight.mul_(0.5)
        model[1].weight.mul_(2.0)
    pruner.end_epoch()  # epoch 1: not yet
    for alpha, old in zip(pruner.alphas, before, strict=True):
        assert torch.equal(alpha, old)
    pruner.end_epoch()  # epoch 2: recomputed from the current weights
    for alpha, want in zip(pruner.alphas, expected(), strict=True):
        torch.testing.assert_close(alpha, want)
    assert [h["epoch"] for h in pruner.history] == [0, 2]


def test_alpha_depends_on_magnitude_not_sign():
    """A public implementation computes the irregular factor from w, not |w| (a negative
    weight then gets a negative or wrong factor); ours must treat -w exactly like w."""
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -0.5, 0.01, -0.01],
                                            [2.0, -2.0, 1e-4, -1e-4],
                                            [0.0, -0.0, 3.0, -3.0]]))
    for scheme in ("irregular", "filter"):
        pruner = Reweighted(model, [make_target(model, "0.weight", 0.5, scheme)], eps=1e-3)
        alpha = pruner.alphas[0]
        assert (alpha > 0).all()
        if scheme == "irregular":  # one alpha per weight, flattened row by row
            alpha = alpha.reshape(3, 4)
            assert torch.equal(alpha[:, 0::2], alpha[:, 1::2])
            torch.testing.assert_close(alpha, 1 / (model[0].weight.detach().abs() ** 2 + 1e-3))
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped[0].weight.neg_()
    a = Reweighted(model, [make_target(model, "0.weight", 0.5)]).alphas[0]
    b = Reweighted(flipped, [make_target(flipped, "0.weight", 0.5)]).alphas[0]
    assert torch.equal(a, b)


def test_penalty_value_and_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    targets = [make_target(model, "0.weight", 0.5), make_target(model, "1.weight", 0.5, "filter")]
    pruner = Reweighted(model, targets, lam={"0": 0.1, "1.weight": 0.3}, eps=0.05)
    value = pruner.penalty()
    w0, w1 = model[0].weight.detach(), model[1].weight.detach()
    a0 = 1 / (w0**2 + 0.05)
    a1 = 1 / (w1.pow(2).sum(1) + 0.05)
    expected = 0.1 * float((a0 * w0**2).sum()) + 0.3 * float((a1 * w1.pow(2).sum(1)).sum())
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    value.backward()
    torch.testing.assert_close(model[0].weight.grad, 2 * 0.1 * a0 * w0)
    torch.testing.assert_close(model[1].weight.grad, 2 * 0.3 * a1[:, None] * w1)


def test_harden_meets_the_rate_exactly_and_ends_the_penalty():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 10))
    targets = [make_target(model, "0.weight", 0.83), make_target(model, "1.weight", 0.6, "filter")]
    pruner = Reweighted(model, targets, lam=1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.bind(opt)
    x = torch.randn(16, 10)
    for _ in range(3):
        (model(x).pow(2).mean() + pruner.penalty()).backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
        pruner.end_epoch()
    masks_of(pruner.freeze())
    assert int((model[0].weight != 0).sum()) == 200 - round(0.83 * 200)
    assert int((model[1].weight.detach().norm(dim=1) == 0).sum()) == 6
    assert float(pruner.penalty()) == 0.0
    for _ in range(2):  # the hardened masks stay enforced
        (model(x).pow(2).mean() - model[0].weight.sum()).backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
    assert int((model[0].weight != 0).sum()) == 200 - round(0.83 * 200)


def test_state_dict_resume_is_exact():
    def setup():
        torch.manual_seed(3)
        model = nn.Linear(6, 6)
        pruner = Reweighted(model, [make_target(model, "weight", 0.5)], lam=0.01)
        return model, pruner, torch.optim.Adam(model.parameters(), lr=0.01)

    x = torch.randn(8, 6)

    def train(model, pruner, opt, epochs):
        for _ in range(epochs):
            (model(x).pow(2).mean() + pruner.penalty()).backward()
            opt.step()
            opt.zero_grad()
            pruner.after_step()
            pruner.end_epoch()

    model, pruner, opt = setup()
    train(model, pruner, opt, 2)
    saved = snapshot(model, opt, pruner)
    train(model, pruner, opt, 2)
    model2, pruner2, opt2 = restore(saved, setup)
    train(model2, pruner2, opt2, 2)
    assert torch.equal(pruner2.alphas[0], pruner.alphas[0])
    assert torch.equal(model2.weight, model.weight)
    assert pruner2.history == pruner.history
    assert pruner2.progress() == pruner.progress()


def test_options_are_checked_and_get_builds_it():
    model = nn.Linear(4, 4)
    targets = [make_target(model, "weight", 0.5)]
    assert isinstance(get("reweighted", model, targets, lam=0.1, eps=1e-4), Reweighted)
    with pytest.raises(ConfigError, match="eps"):
        Reweighted(model, targets, eps=0)
    with pytest.raises(ConfigError, match="reweight_every"):
        Reweighted(model, targets, reweight_every=0)
    with pytest.raises(ConfigError, match="'alpha'.*lam"):
        get("reweighted", model, targets, alpha=0.1)
    with pytest.raises(ConfigError, match="conv9"):
        Reweighted(model, targets, lam={"conv9": 0.1})
