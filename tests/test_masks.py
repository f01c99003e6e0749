"""Hard pruning, masks as buffers, and the guarantee that pruned weights never regrow."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.errors import ConfigError, DataError, TargetError
from prunekit.io import load_checkpoint, save_checkpoint
from prunekit.masks import (
    MaskEnforcer,
    attach_masks,
    get_masks,
    harden,
    load_masked_state_dict,
    masked_finetune,
    remove_masks,
)
from prunekit.schemes import count_to_prune
from prunekit.targets import resolve


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)     # 8x8 -> 4x4
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)              # 4x4 -> 2x2
        return self.fc(x.flatten(1))


def make_model(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


def blob_data(n: int = 256, seed: int = 0):
    """8x8 images, class = the quadrant holding a bright 3x3 blob, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        dr, dc = torch.randint(0, 2, (2,), generator=g).tolist()
        x[i, 0, 4 * r + dr:4 * r + dr + 3, 4 * c + dc:4 * c + dc + 3] += 1.5
    return x, labels


def batches(x, y, size: int = 32, seed: int = 0):
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(y), size):
        idx = order[i:i + size]
        yield x[idx], y[idx]


RULES = [{"sparsity": 0.7}, {"layers": "fc", "sparsity": 0.5}]


def pruned_entries_nonzero(masks, model) -> int:
    params = dict(model.named_parameters())
    return sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items())


# ---------------------------------------------------------------------- harden
def test_harden_meets_the_rate_exactly_and_returns_bool_masks():
    model = make_model()
    targets = resolve(model, RULES)
    before = {t.name: t.param.detach().clone() for t in targets}
    masks = harden(model, targets)
    assert set(masks) == {"conv1.weight", "conv2.weight", "fc.weight"}
    for t in targets:
        mask = masks[t.name]
        assert mask.dtype == torch.bool and mask.shape == t.param.shape
        zeros = int((t.param == 0).sum())
        assert zeros == count_to_prune(t.numel, t.sparsity)
        assert abs(zeros - t.sparsity * t.numel) <= 1
        assert torch.equal(t.param.detach() != 0, mask)
        assert torch.equal(t.param.detach()[mask], before[t.name][mask])  # kept values intact
    assert model.conv1.bias.ne(0).all() and model.bn.weight.ne(0).all()


def test_pruning_again_never_revives_a_zero():
    model = make_model()
    first = harden(model, resolve(model, [{"sparsity": 0.5}]))
    attach_masks(model, first)
    # something wrote into pruned positions: the attached mask still holds them pruned
    with torch.no_grad():
        model.conv2.weight.masked_fill_(~first["conv2.weight"], 10.0)
    second = harden(model, resolve(model, [{"sparsity": 0.8}]))
    for name, mask in second.items():
        assert not (mask & ~first[name]).any()
        assert int((~mask).sum()) == count_to_prune(mask.numel(), 0.8)
        assert torch.equal(get_masks(model)[name], mask)  # the attached mask follows
    assert pruned_entries_nonzero(second, model) == 0


def test_pruning_again_at_a_lower_rate_keeps_the_earlier_zeros():
    model = make_model()
    first = harden(model, resolve(model, [{"sparsity": 0.6}]))   # exact zeros, no buffers
    second = harden(model, resolve(model, [{"sparsity": 0.2}]))
    for name, mask in second.items():
        assert torch.equal(mask, first[name])
        assert dict(model.named_parameters())[name].eq(0).float().mean() >= 0.59


def test_harden_rejects_targets_of_another_model():
    targets = resolve(make_model(), RULES)
    with pytest.raises(TargetError, match="another model"):
        harden(make_model(), targets)


# ---------------------------------------------------------- masks as buffers
def test_masked_state_dict_round_trip_into_a_fresh_model(tmp_path):
    model = make_model()
    masks = harden(model, resolve(model, RULES))
    attach_masks(model, masks)
    state = model.state_dict()
    assert {"conv1.weight_mask", "conv2.weight_mask", "fc.weight_mask"} <= set(state)
    save_checkpoint(state, tmp_path / "masked.pt")

    fresh = make_model(seed=1)
    with pytest.raises(RuntimeError, match="weight_mask"):
        fresh.load_state_dict(state)  # why load_masked_state_dict exists
    load_masked_state_dict(fresh, load_checkpoint(tmp_path / "masked.pt"))
    loaded = get_masks(fresh)
    assert set(loaded) == set(masks)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_load_masked_state_dict_reports_a_bad_fit():
    model = make_model()
    attach_masks(model, harden(model, resolve(model, RULES)))
    state = model.state_dict()
    state["fc.weight_mask"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(DataError, match="fc.weight_mask"):
        load_masked_state_dict(make_model(), state)


def test_remove_masks_leaves_plain_sparse_tensors_and_no_hooks():
    model = make_model()
    masks = harden(model, resolve(model, RULES))
    attach_masks(model, masks)
    enforcer = MaskEnforcer(model)
    removed = remove_masks(model)
    assert set(removed) == set(masks)
    assert get_masks(model) == {}
    assert not any(k.endswith("_mask") for k in model.state_dict())
    assert pruned_entries_nonzero(masks, model) == 0
    # hooks are gone: a step now moves pruned weights, and the closed enforcer does nothing
    x, y = blob_data(32)
    F.cross_entropy(model(x), y).backward()
    assert model.conv2.weight.grad[~masks["conv2.weight"]].abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    enforcer.after_step()
    assert pruned_entries_nonzero(masks, model) > 0


def test_attach_and_enforcer_errors_name_the_problem():
    model = make_model()
    with pytest.raises(TargetError, match="no parameter 'conv3.weight'.*conv1.weight"):
        attach_masks(model, {"conv3.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TargetError, match=r"mask of 'fc.weight' has shape \(2, 2\)"):
        attach_masks(model, {"fc.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="no masks"):
        MaskEnforcer(model)
    enforcer = MaskEnforcer(model, {"fc.weight": torch.ones_like(model.fc.weight)})
    with pytest.raises(ConfigError, match="Optimizer"):
        enforcer.bind("sgd")


# ------------------------------------------------------------ the guarantee
OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adamw-wd": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=3e-3, amsgrad=True),
}


def train_dense(model, optimizer, x, y, epochs: int = 2) -> None:
    """Populate the optimizer state (momentum, Adam moments) before pruning."""
    for epoch in range(epochs):
        for xb, yb in batches(x, y, seed=100 + epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_after_every_step(kind):
    x, y = blob_data()
    model = make_model()
    optimizer = OPTIMIZERS[kind](model.parameters())
    train_dense(model, optimizer, x, y)
    assert any(v.abs().sum() > 0 for s in optimizer.state.values()
               for v in s.values() if torch.is_tensor(v) and v.dim() > 0)

    masks = harden(model, resolve(model, RULES))
    attach_masks(model, masks)
    params = dict(model.named_parameters())
    epoch_losses = []
    with MaskEnforcer(model, optimizer=optimizer) as enforcer:
        for epoch in range(5):
            losses = []
            for xb, yb in batches(x, y, seed=epoch):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                for name, mask in masks.items():      # (a) the gradient never carries them
                    assert params[name].grad[~mask].eq(0).all()
                optimizer.step()
                # (a) + (b) alone already keep them at zero, before the final re-mask
                assert pruned_entries_nonzero(masks, model) == 0
                enforcer.after_step()
                assert pruned_entries_nonzero(masks, model) == 0
                for name, mask in masks.items():
                    for value in optimizer.state[params[name]].values():
                        if torch.is_tensor(value) and value.shape == mask.shape:
                            assert value[~mask].eq(0).all()
                losses.append(loss.item())
            epoch_losses.append(sum(losses) / len(losses))
    assert epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses


def test_without_the_enforcer_momentum_revives_pruned_weights():
    """The failure the enforcer prevents: stale momentum moves zeroed weights."""
    x, y = blob_data()
    model = make_model()
    optimizer = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    train_dense(model, optimizer, x, y, epochs=1)
    masks = harden(model, resolve(model, RULES))
    xb, yb = next(batches(x, y))
    optimizer.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    optimizer.step()
    assert pruned_entries_nonzero(masks, model) > 0


def test_enforcer_update_and_state_dict():
    model = make_model()
    optimizer = OPTIMIZERS["adamw-wd"](model.parameters())
    train_dense(model, optimizer, *blob_data(64), epochs=1)
    first = harden(model, resolve(model, [{"sparsity": 0.3}]))
    enforcer = MaskEnforcer(model, first, optimizer)
    second = harden(model, resolve(model, [{"sparsity": 0.6}]))
    enforcer.update(second)
    saved = enforcer.state_dict()
    assert all(torch.equal(saved["masks"][n], second[n]) for n in second)
    exp_avg = optimizer.state[model.fc.weight]["exp_avg"]
    assert exp_avg[~second["fc.weight"]].eq(0).all()
    enforcer.close()
    other = MaskEnforcer(make_model(seed=3), {"fc.weight": torch.ones(4, 64, dtype=torch.bool)})
    other.load_state_dict(saved)
    assert other.masks.keys() == second.keys()
    assert pruned_entries_nonzero(second, other.model) == 0
    other.close()


# --------------------------------------------------------- with the trainer
class StepCheck:
    """A plugin placed before the enforcer: checks pruned weights after each optimizer
    step, before the enforcer's final re-mask (so the hooks and state zeroing are tested)."""

    def __init__(self, model, masks) -> None:
        self.model, self.masks, self.steps = model, masks, 0

    def after_step(self) -> None:
        assert pruned_entries_nonzero(self.masks, self.model) == 0
        self.steps += 1


def test_masked_finetune_with_the_trainer():
    x, y = blob_data()
    loader = list(batches(x, y))
    model = make_model()
    optimizer = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    train_dense(model, optimizer, x, y, epochs=1)
    masks = harden(model, resolve(model, RULES))
    check = StepCheck(model, masks)
    history = masked_finetune(
        model, masks, loader, loader[:2],
        config={"epochs": 3, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                "weight_decay": 5e-4, "schedule": "constant", "progress": False},
        optimizer=optimizer, plugins=[check],
    )
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert check.steps == 3 * len(loader)
    assert pruned_entries_nonzero(masks, model) == 0
    assert set(get_masks(model)) == set(masks)  # the model leaves with its masks
