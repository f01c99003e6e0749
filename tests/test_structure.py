"""Coupled channel groups: traced on zoo and user models, pruned whole, shrunk exactly.

The central check everywhere: prune whole groups (zeroing filter rows, biases, BatchNorm
entries and readers' columns), then physically remove them; the smaller model must
compute what the masked model computes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from group_models import group_prune
from prunekit import models, structure
from prunekit.errors import ConfigError
from prunekit.runtime import dead_units, shrink


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics: a dead channel only stays dead when its
    BatchNorm scale and shift are removed with it, which default statistics would hide."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _prune_and_shrink(model: nn.Module, x: torch.Tensor, sparsity: float = 0.5):
    constraints, removed = group_prune(model, x, sparsity)
    s = structure.build(model, x)
    dead = dead_units(s, model)
    small = shrink(s, dead)
    with torch.no_grad():
        want, got = model(x), small(x)
    rel = float((want - got).abs().max() / want.abs().max())
    return (constraints, removed), dead, small, rel


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_resnet_groups_follow_residual_adds_and_shrink_exactly(name):
    model = _randomise_norms(models.get(name))
    x = torch.randn(2, 3, 32, 32)
    s = structure.build(model, x)
    trunk = s.group_of("conv1")
    # the stem and every block's second conv are joined by the residual adds
    assert "layer1.0.conv2" in trunk.layers and "layer3.0.conv2" in trunk.layers
    # option-A shortcuts zero-pad channels: those can never be removed, and the report
    # says which module pads them
    assert len(trunk.removable) == 16
    assert "zero padding added by pad in layer2.0.downsample" in s.report()
    assert s.group_of("layer1.0.conv1").layers == ("layer1.0.conv1",)
    assert "the channel reaches the model's output" in s.report()
    pruned, dead, small, rel = _prune_and_shrink(model, x)
    assert len(dead) == pruned[1]
    assert rel < 1e-5
    assert _params(small) < 0.5 * _params(model)
    # the BatchNorm of a removed channel is removed too, not left emitting its shift
    assert not pruned[0]["layer1.0.bn1.bias"].mask.all()


def test_vgg16_every_conv_is_its_own_group():
    model = _randomise_norms(models.get("vgg16"))
    x = torch.randn(1, 3, 32, 32)
    s = structure.build(model, x)
    assert len(s.groups) == 14  # 13 convs and the classifier
    pruned, dead, small, rel = _prune_and_shrink(model, x)
    assert rel < 1e-5
    assert small.get_submodule("features.0").out_channels == 32
    assert small.classifier.in_features == 256


def test_mobilenetv2_depthwise_channels_go_with_their_expansion():
    model = _randomise_norms(models.get("mobilenetv2"))
    x = torch.randn(1, 3, 32, 32)
    s = structure.build(model, x)
    # expansion 1x1 conv and the depthwise conv after it share channels
    g = s.group_of("features.2.conv.0.0")
    assert g.layers == ("features.2.conv.0.0", "features.2.conv.1.0")
    # blocks joined by residual adds share their projection channels
    assert len(s.group_of("features.4.conv.2").layers) == 3
    pruned, dead, small, rel = _prune_and_shrink(model, x)
    assert rel < 1e-5
    dw = small.get_submodule("features.2.conv.1.0")
    assert dw.groups == dw.in_channels == dw.out_channels == 48


class CatSplit(nn.Module):
    """A user's model: a conv split in two branches (torch.split and .chunk), the
    branches concatenated again, a flatten into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(6, 4, 1)
        self.mix = nn.Conv2d(13, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        left, right = torch.split(x, [4, 8], dim=1)
        top, bottom = self.b(right).chunk(2, dim=1)
        y = torch.cat([self.a(left), top + bottom, self.c(self.a(left))], dim=1)
        y = F.max_pool2d(F.relu(self.mix(y)), 2)
        return self.head(y.flatten(1))


def test_cat_split_chunk_and_flatten_in_a_users_model():
    torch.manual_seed(0)
    model = _randomise_norms(CatSplit())
    x = torch.randn(2, 3, 8, 8)
    s = structure.build(model, x)
    # chunk halves of b are added: b's filter i couples with filter i + 3
    assert s.slots["b"]["out"][0] == s.slots["b"]["out"][3]
    # a is called twice on one input: one set of filters, read by mix and by c
    assert s.group_of("a").layers == ("a",)
    # flatten: each mix channel is 16 head columns
    head_units = s.slots["head"]["in"]
    assert head_units.numel() == 128 and torch.equal(head_units[:16], head_units[:1].expand(16))
    pruned, dead, small, rel = _prune_and_shrink(model, x)
    assert rel < 1e-5
    assert small.stem.out_channels < 12
    assert small.head.in_features == 16 * small.mix.out_channels


def test_removing_any_single_unit_matches_zeroing_it():
    """Brute force on a small model: for every removable unit alone, shrinking equals the
    masked model, so no coupled slice is missing from any group."""
    torch.manual_seed(1)
    model = _randomise_norms(CatSplit())
    x = torch.randn(2, 3, 8, 8)
    s = structure.build(model, x)
    units = [u for g in s.groups for u in g.removable]
    assert len(units) > 20
    for u in units:
        masked = CatSplit()
        masked.load_state_dict(model.state_dict())
        masked.eval()
        params = dict(masked.named_parameters())
        for name, c in structure.constraints_for(s, masked, {u}).items():
            c.apply_(params[name].data)
        small = shrink(structure.build(masked, x), {u})
        with torch.no_grad():
            want, got = masked(x), small(x)
        assert float((want - got).abs().max()) <= 1e-5 * float(want.abs().max()), u


class ChunkGate(nn.Module):
    """A user's gated block: one half of a conv's channels feeds b, the other half gates
    b's output elementwise and is concatenated after it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        p, q = torch.relu(self.a(x)).chunk(2, 1)
        y = torch.cat([self.b(p) * torch.sigmoid(q), q], 1)
        return self.head(y.mean((2, 3)))


def test_a_layer_whose_inputs_are_all_dead_keeps_one_and_compiles_exactly():
    """All of b's inputs dead: torch would turn b into a conv with no outputs (not its
    bias), so one zero input channel stays and the model still computes the same."""
    torch.manual_seed(0)
    model = ChunkGate().eval()
    with torch.no_grad():
        model.a.weight[:8] = 0
        model.a.bias[:8] = 0
    x = torch.randn(2, 3, 8, 8)
    s = structure.build(model, x)
    assert len(dead_units(s, model)) == 8
    small = shrink(s, dead_units(s, model))
    assert small.b.in_channels == 1 and small.b.out_channels == 8
    assert small.a.out_channels == 9
    compiled = prunekit.compile(model, x, engines=())
    with torch.no_grad():
        want, got = model(x), compiled(x)
    assert float((want - got).abs().max()) <= 1e-5 * float(want.abs().max())
    assert compiled.prunekit_plan.removed_channels == 7


def test_compile_keeps_the_unshrunk_model_when_the_smaller_one_fails(monkeypatch):
    """A graph the structure misread must cost speed, never a traceback or a wrong model."""
    import importlib

    compile_module = importlib.import_module("prunekit.runtime.compile")

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("size of tensor a (0) must match size of tensor b (8)")

    monkeypatch.setattr(compile_module, "shrink", lambda structure, removed: Broken())
    model = models.get("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    group_prune(model, x, 0.5)
    compiled = prunekit.compile(model, x, engines=())
    plan = compiled.prunekit_plan
    assert plan.removed_channels == 0
    assert "not shrunk: the smaller model failed its check (RuntimeError" in plan.describe()
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-4, atol=1e-6)


def test_gru_classifier_is_traced_and_its_recurrent_layer_explained():
    model = models.get("gru_classifier").eval()
    s = structure.build(model, torch.randn(2, 20, 16))
    report = s.report()
    assert "rnn: its hidden units are not shrunk" in report
    assert "fc: 10 channels, 0 removable" in report


def test_lenet5_input_check_does_not_stop_tracing():
    model = models.get("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    pruned, dead, small, rel = _prune_and_shrink(model, x, 0.75)
    assert rel < 1e-5
    assert small.conv2.out_channels == 12  # 50 channels, 38 pruned
    assert small.fc1.in_features == 12 * 16


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this faithfully."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > -1e9:
            x = self.conv(x)
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_is_one_clear_error_and_compile_still_works():
    model = Branchy().eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ConfigError, match="branches on its input"):
        structure.build(model, x)
    compiled = prunekit.compile(model, x, engines=())
    assert "not shrunk" in compiled.prunekit_plan.describe()


class ChannelMixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        y = y - y.mean(1, keepdim=True)  # mixes every channel into every other
        return self.out(y)


def test_an_op_that_mixes_channels_pins_them_with_the_reason():
    s = structure.build(ChannelMixer().eval(), torch.randn(1, 3, 4, 4))
    g = s.group_of("conv")
    assert g.removable == []
    assert "a reduction over channels" in s.report()


def test_prune_rejects_bad_selection_and_rate():
    model = models.get("lenet5")
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ConfigError, match="'nothing\\*' matches no layer"):
        group_prune(model, x, 0.5, layers="nothing*")
    with pytest.raises(ConfigError):
        group_prune(model, x, 1.5)


def test_filter_scheme_prunes_the_bias_with_its_filter():
    model = models.get("lenet5")
    targets = prunekit.resolve(model, [{"layers": ["conv1", "fc1"], "scheme": "filter",
                                        "sparsity": 0.5}])
    frozen = prunekit.freeze(model, targets)
    rows = model.conv1.weight.detach().reshape(20, -1).ne(0).any(1)
    assert int((~rows).sum()) == 10
    assert torch.equal(model.conv1.bias.detach().ne(0), rows)
    assert torch.equal(frozen["conv1.bias"].mask, rows)
    assert "fc1.bias" in frozen and "fc2.bias" not in frozen
