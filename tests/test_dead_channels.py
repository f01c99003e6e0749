"""Dead channels: zeroed exactly (the outputs do not move by one bit), the constraints
tightened to keep them zero, and the model file smaller for it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import artifacts, models
from prunekit.constraints import Levels, Support, Unified
from prunekit.structure import dead_units, drop_dead_channels
from prunekit.structure import groups as structure_groups
from prunekit.targets import freeze, resolve

X = torch.zeros(1, 1, 28, 28)


def _pruned_lenet(scheme: str = "irregular", sparsity: float = 0.9):
    """LeNet-5 irregularly pruned, its biases trained-looking (nonzero), and 100 fc2 columns
    pruned on purpose so that 100 fc1 neurons are read by nothing."""
    torch.manual_seed(0)
    model = models.lenet5().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-0.5, 0.5)
    frozen = freeze(model, resolve(model, [{"layers": ["conv*", "fc*"], "scheme": scheme,
                                            "sparsity": sparsity}]))
    frozen["fc2.weight"].mask[:, :100] = False
    frozen["fc2.weight"].apply_(model.fc2.weight.data)
    return model, frozen


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("scheme", ["irregular", "irregular+quant"])
def test_dead_channels_are_zeroed_exactly_and_the_file_shrinks(scheme):
    model, frozen = _pruned_lenet(scheme)
    x = torch.randn(32, 1, 28, 28)
    before, size_before = _outputs(model, x), len(artifacts.pack(model, frozen))

    dropped = drop_dead_channels(model, frozen, X)

    assert dropped.note is None and dropped.channels["fc1"] >= 100
    assert torch.equal(_outputs(model, x), before)  # not close: equal
    assert not model.fc1.weight[:100].any() and not model.fc1.bias[:100].any()
    assert dropped.zeroed["fc1.bias"] >= 100
    c = frozen["fc1.weight"]
    assert isinstance(c, Levels if scheme.endswith("quant") else Support)
    assert not c.mask[:100].any() and c.contains(model.fc1.weight)
    for name, p in model.named_parameters():
        if name in frozen:
            assert frozen[name].contains(p), name
    data = artifacts.pack(model, frozen)
    assert len(data) < size_before
    fresh = models.lenet5()
    artifacts.load(data, model=fresh)
    assert torch.equal(_outputs(fresh, x), before)
    # nothing is left to drop: a second pass changes nothing
    again = drop_dead_channels(model, frozen, X)
    assert again.zeroed == {}


def test_a_filter_whose_output_is_zero_stops_being_read():
    model, frozen = _pruned_lenet()
    with torch.no_grad():  # conv1 filter 3 produces exactly zero (weights and bias)
        frozen["conv1.weight"].mask[3] = False
        model.conv1.weight[3] = 0
        model.conv1.bias[3] = 0
    x = torch.randn(8, 1, 28, 28)
    before = _outputs(model, x)
    drop_dead_channels(model, frozen, X)
    assert torch.equal(_outputs(model, x), before)
    assert not model.conv2.weight[:, 3].any() and not frozen["conv2.weight"].mask[:, 3].any()


def test_units_under_a_unified_constraint_are_left_alone():
    torch.manual_seed(0)
    model = models.lenet5().eval()
    frozen = freeze(model, resolve(model, [{"layers": "fc1", "scheme": "unify", "sparsity": 0.5},
                                           {"layers": "fc2", "sparsity": 0.5}]))
    frozen["fc2.weight"].mask[:, :100] = False
    frozen["fc2.weight"].apply_(model.fc2.weight.data)
    assert isinstance(frozen["fc1.weight"], Unified)
    fc1 = model.fc1.weight.detach().clone()
    x = torch.randn(8, 1, 28, 28)
    before = _outputs(model, x)
    dropped = drop_dead_channels(model, frozen, X)
    assert torch.equal(model.fc1.weight, fc1) and "fc1.weight" not in dropped.zeroed
    assert frozen["fc1.weight"].contains(model.fc1.weight)
    assert torch.equal(_outputs(model, x), before)


def test_residual_models_keep_their_outputs():
    torch.manual_seed(0)
    model = models.get("resnet20").eval()
    frozen = freeze(model, resolve(model, [{"layers": "*conv*", "sparsity": 0.9}]))
    x = torch.randn(4, 3, 32, 32)
    before = _outputs(model, x)
    structure = structure_groups.build(model, torch.zeros(1, 3, 32, 32))
    dead = dead_units(structure, model)
    dropped = drop_dead_channels(model, frozen, torch.zeros(1, 3, 32, 32))
    assert sum(dropped.channels.values()) == len(dead)
    assert torch.equal(_outputs(model, x), before)


class _Branchy(nn.Module):
    """Control flow on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        if x.sum() > -1e9:
            h = h.relu()
        return self.b(h)


def test_an_untraceable_model_is_left_as_it_is_with_a_note():
    model = _Branchy()
    frozen = freeze(model, resolve(model, [{"layers": "b", "sparsity": 0.5}]))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    dropped = drop_dead_channels(model, frozen, torch.zeros(1, 4))
    assert dropped.note and dropped.note.startswith("not traced")
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n])
