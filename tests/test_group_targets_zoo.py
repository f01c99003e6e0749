"""``group_filter`` targets on the zoo's architectures: one-shot magnitude pruning of whole
coupled channels, then physical removal with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit import methods, models, structure
from prunekit.constraints import MaskEnforcer
from prunekit.errors import TargetError
from prunekit.targets import resolve

CASES = ["resnet20", "resnet56", "mobilenetv2", "vgg16"]


def trained_looking(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine terms away from their defaults, so a removed channel
    whose shift were left behind would change the outputs."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", CASES)
def test_zoo_model_loses_whole_channels_and_shrinks_with_equal_outputs(name):
    torch.manual_seed(0)
    shape = models.default_input_shape(name)
    model = trained_looking(models.get(name))
    example = torch.zeros(1, *shape)
    targets = resolve(model, [{"layers": "*", "scheme": "group_filter", "sparsity": 0.5}],
                      example=example)
    assert targets, name
    constraints = methods.get("magnitude", model, targets).freeze()
    MaskEnforcer(model, constraints).close()  # puts every weight inside its constraint
    for param_name, c in constraints.items():
        assert not bool((dict(model.named_parameters())[param_name][~c.mask] != 0).any())
    s = structure.build(model, example)
    dead = structure.dead_units(s, model)
    assert len(dead) >= sum(t.to_remove for t in targets if hasattr(t, "to_remove")) > 0
    small = prunekit.runtime.shrink(s, dead)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        got = small.eval()(x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel()
                                                            for p in model.parameters())
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gru_classifier_has_no_removable_group_and_says_why():
    """A GRU's hidden units feed back into every gate, and the classifier's outputs are the
    model's: nothing can be removed whole, and the error names both layers and reasons."""
    model = models.get("gru_classifier")
    example = torch.zeros(1, *models.default_input_shape("gru_classifier"))
    with pytest.raises(TargetError, match="finds no removable channel") as info:
        resolve(model, [{"layers": "*", "scheme": "group_filter", "sparsity": 0.5}],
                example=example)
    message = str(info.value)
    assert "reaches the model's output" in message and "feeds back into every gate" in message
